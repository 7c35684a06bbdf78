"""Which directories an environment may name as its files and code.

A restore swaps an environment's directories whole (`pipelines.trees`) and a
rollback point keeps the old tree beside them, so a registered path is one
that envrestore will replace and delete. A slip of the keyboard (`--files /`,
`--code /etc`, the files dir of another site) must be refused before it is
recorded. Paths are judged after resolving symbolic links, and as written,
so `/lib -> /usr/lib` and a link into `/etc` are both caught.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from envrestore.pipelines.errors import BadInput, Conflict

#: The filesystem's own directories: neither they nor anything inside them.
SYSTEM_TREES = (
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/proc",
    "/run",
    "/sbin",
    "/sys",
    "/usr",
    "/var/lib",
    "/var/log",
    "/var/cache",
    "/var/spool",
    "/var/run",
    "/var/lock",
    "/var/mail",
    "/snap",
)
#: Directories that hold others' data: they themselves are refused, what is inside may be used.
BROAD_DIRS = (
    "/home",
    "/root",
    "/var",
    "/var/www",
    "/srv",
    "/opt",
    "/tmp",  # noqa: S108 - refused as a directory, never written
    "/var/tmp",  # noqa: S108 - refused as a directory, never written
    "/mnt",
    "/media",
    "/data",
)
#: Inside the state directory, the one subtree environments may use: `make demo` builds
#: its site there. Everything else in it is envrestore's own (the embedded stack's data).
STATE_DIR_SITES = "demo"


@dataclass(frozen=True)
class UsedPaths:
    """Directories another environment already uses (for the overlap rule)."""

    target: str
    files: Path
    code: Path


def _forms(path: Path) -> list[Path]:
    """The path as written (normalised, absolute) and with its symbolic links resolved."""
    written = Path(os.path.normpath(path.expanduser().absolute()))
    resolved = written.resolve()
    return [written] if written == resolved else [written, resolved]


def _inside(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def _home_dirs() -> set[Path]:
    homes: set[Path] = set()
    try:
        entries = pwd.getpwall()
    except OSError:  # no passwd database (a minimal container)
        entries = []
    for entry in entries:
        if entry.pw_dir and entry.pw_dir != "/":
            homes.add(Path(os.path.normpath(entry.pw_dir)))
    return homes


def _overlap(a: Path, b: Path) -> str | None:
    """How `a` relates to `b`: 'is', 'is inside', 'contains', or None."""
    if a == b:
        return "is"
    if b in a.parents:
        return "is inside"
    if a in b.parents:
        return "contains"
    return None


def check_dangerous(path: Path, *, role: str) -> None:
    """Refuse `/`, system trees, broad shared directories and home directories themselves."""
    homes = _home_dirs()
    for form in _forms(path):
        shown = f"{role} directory {path}" + ("" if form == path else f" (= {form})")
        if form == Path("/"):
            raise BadInput(f"{shown} is the root directory; name the site's own directory")
        for tree in SYSTEM_TREES:
            if _inside(form, Path(tree)):
                raise BadInput(
                    f"{shown} is a system directory or inside one ({tree}); envrestore "
                    "replaces and deletes an environment's directories",
                    path=str(path),
                )
        if str(form) in BROAD_DIRS or form.parent == Path("/") or form in homes:
            raise BadInput(
                f"{shown} is too broad (a top-level, shared or home directory); name the "
                "site's own directory inside it",
                path=str(path),
            )
        if form.parent == Path("/home"):
            raise BadInput(
                f"{shown} is a home directory; name the site's own directory inside it",
                path=str(path),
            )


def check_state_dir(path: Path, *, role: str, state_dir: Path) -> None:
    """Refuse the state directory, what contains it, and what is inside it (but `demo/`)."""
    for p in _forms(path):
        for s in _forms(state_dir):
            how = _overlap(p, s)
            if how is None or (how == "is inside" and _inside(p, s / STATE_DIR_SITES)):
                continue
            raise BadInput(
                f"{role} directory {path} {how} envrestore's state directory {s} "
                "(ENVRESTORE_STATE_DIR: the embedded stack's data)",
                path=str(path),
            )


def check_alone(path: Path, *, role: str, state_dir: Path | None = None) -> None:
    """The rules one directory breaks by itself (before it is even looked at on disk)."""
    check_dangerous(path, role=role)
    if state_dir is not None:
        check_state_dir(path, role=role, state_dir=state_dir)


def check_environment_paths(
    target: str,
    files: Path,
    code: Path,
    *,
    others: Iterable[UsedPaths] = (),
    state_dir: Path | None = None,
) -> None:
    """Every rule for one environment's directories; raises the first broken, in one line.

    BadInput (exit 2) for a path that is never acceptable; Conflict (exit 4)
    for one another environment already uses.
    """
    check_dangerous(files, role="files")
    check_dangerous(code, role="code")
    for f in _forms(files):
        for c in _forms(code):
            how = _overlap(f, c)
            if how is not None:
                raise BadInput(
                    f"files directory {files} {how} the code directory {code}; they must "
                    "be separate trees (each is swapped whole)",
                    target=target,
                )
    if state_dir is not None:
        check_state_dir(files, role="files", state_dir=state_dir)
        check_state_dir(code, role="code", state_dir=state_dir)
    for other in others:
        if other.target == target:
            continue
        for role, path in (("files", files), ("code", code)):
            for their_role, theirs in (("files", other.files), ("code", other.code)):
                for p in _forms(path):
                    for t in _forms(theirs):
                        how = _overlap(p, t)
                        if how is not None:
                            raise Conflict(
                                f"{role} directory {path} {how} the {their_role} directory "
                                f"of {other.target} ({theirs}); environments must not share "
                                "directories",
                                target=target,
                                other=other.target,
                            )
