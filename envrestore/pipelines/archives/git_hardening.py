"""Disarming a restored repository, so nothing in it runs on a developer's later git command.

The code part is an untrusted archive of a whole repository. Git runs the
repository's own hooks and many of its config values as commands (core.fsmonitor
on `git status`, filter drivers on checkout, diff.external and textconv on
`git diff`, credential helpers and transports on `git fetch`, …). Envrestore's
own git calls pass `HARDENED`, but the developer's do not, so before the
repository goes live:

- every hook is moved into `hooks-disabled-by-envrestore/` beside `hooks/`,
  renamed `<name>.disabled` and made non-executable (git only runs hooks/<name>);
- `config` is rewritten keeping only an allowlist of keys (repository format,
  remotes, branches, user identity, submodule URLs); every include, command,
  driver, helper and path key is dropped;
- files git reads as more config or as drivers are removed: `config.worktree`,
  `worktrees/`, `info/attributes`, legacy `remotes/` and `branches/`, and the
  state of an interrupted rebase or cherry-pick (its todo list can `exec`);
- a submodule URL with a `<transport>::` prefix (ext::, fd::, file::…) is
  refused: ext:: runs any command given in the URL.

Every git directory in the tree gets the same treatment: `.git`, the submodule
git directories under `.git/modules/` (their `core.worktree` is dropped too; a
submodule found through its `.git` file works without it), and nested `.git`
directories in the working tree (vendored checkouts). A `.git` file must point
at one of those; a symlink inside `.git/modules` or a symlinked nested `.git` is
refused.

Filter and diff drivers named by `.gitattributes` in the working tree are inert
once no `filter.*`/`diff.*` config exists: git only runs a driver its config defines.

Reports name keys and files, never config values (they may hold secrets or garbage).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

from envrestore.pipelines.archives.git import git
from envrestore.pipelines.errors import EnvrestoreError, UnsafeInput

#: Command-line config outranks the repository's own `.git/config`, and is
#: inherited by the git processes a command starts (GIT_CONFIG_PARAMETERS).
HARDENED = (
    "-c", "core.hooksPath=/dev/null",
    "-c", "core.fsmonitor=false",
    "-c", "protocol.allow=never",
    "-c", "protocol.file.allow=always",
    "-c", "submodule.recurse=false",
    "-c", "gc.auto=0",
    "-c", "maintenance.auto=false",
    "-c", "credential.helper=",
)  # fmt: skip

#: Where hooks go, beside `hooks/`; git never runs anything from here.
DISABLED_HOOKS = "hooks-disabled-by-envrestore"

#: Files and folders git would read as more config, drivers or commands to run.
_REMOVED = (
    "config.worktree",
    "worktrees",
    "info/attributes",
    "remotes",
    "branches",
    "rebase-merge",
    "rebase-apply",
    "sequencer",
)

#: A config file bigger than this is not a repository's config (and git's
#: output of it would not fit the bounded stdout we keep).
MAX_CONFIG_BYTES = 256 * 1024
#: Reported names: at most this many per list, each at most this long.
MAX_REPORTED = 200
MAX_NAME = 200
#: Nesting of `.git/modules/…` and nested repositories we follow.
MAX_DEPTH = 16

_TRANSPORT = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)::")
_BOOL = frozenset({"true", "false", "yes", "no", "on", "off", "1", "0"})
_CORE: dict[str, frozenset[str]] = {
    "repositoryformatversion": frozenset({"0", "1"}),
    "filemode": _BOOL,
    "bare": frozenset({"false", "no", "off", "0"}),
    "logallrefupdates": _BOOL | {"always"},
    "ignorecase": _BOOL,
    "precomposeunicode": _BOOL,
    "symlinks": _BOOL,
}
#: Format extensions only: dropping refstorage would hide every ref. Others
#: (worktreeconfig, partialclone — a lazy fetch on checkout —, …) are dropped.
_EXTENSIONS: dict[str, frozenset[str]] = {
    "objectformat": frozenset({"sha1", "sha256"}),
    "refstorage": frozenset({"files", "reftable"}),
}


@dataclass
class _Report:
    dropped_config: list[str] = field(default_factory=list)
    hooks_disabled: list[str] = field(default_factory=list)
    removed_files: list[str] = field(default_factory=list)
    hooks_moved: int = 0

    def outputs(self) -> dict[str, object]:
        return {
            "git_dropped_config": _capped(self.dropped_config),
            "git_hooks_disabled": _capped(self.hooks_disabled),
            "git_hooks_moved_to": f".git/{DISABLED_HOOKS}/ (renamed *.disabled, not executable)",
            "git_removed_files": _capped(self.removed_files),
        }


def printable(text: str, limit: int = MAX_NAME) -> str:
    """`text` with control and other unprintable characters escaped, cut at `limit`."""
    out = "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text
    )
    return out if len(out) <= limit else out[: limit - 1] + "…"


def _capped(names: list[str]) -> list[str]:
    unique = list(dict.fromkeys(names))
    if len(unique) <= MAX_REPORTED:
        return unique
    return [*unique[:MAX_REPORTED], f"… and {len(unique) - MAX_REPORTED} more"]


def scrub(text: object, top: Path) -> str:
    """A git message with the worker's paths of the repository taken out."""
    out = str(text)
    for path in sorted({str(top), os.path.realpath(top)}, key=len, reverse=True):
        out = out.replace(path, "<repository>")
    return out


def _rel(top: Path, path: Path) -> str:
    return printable(path.relative_to(top).as_posix())


def _refuse(message: str, problem: str, **data: object) -> UnsafeInput:
    return UnsafeInput(
        f"the code part's repository {message}; refusing the code archive", problem=problem, **data
    )


# --- hooks and files -------------------------------------------------------


def _free_name(folder: Path, name: str) -> Path:
    candidate = folder / name
    index = 2
    while candidate.exists() or candidate.is_symlink():
        candidate = folder / f"{name}.{index}"
        index += 1
    return candidate


def _disarm_file(path: Path) -> None:
    """Make a regular file non-executable without touching other hardlinks to it."""
    info = path.lstat()
    if not stat.S_ISREG(info.st_mode):
        return
    if info.st_nlink > 1:
        data = path.read_bytes()
        path.unlink()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
    else:
        path.chmod(stat.S_IMODE(info.st_mode) & ~0o111)


def _disable_hooks(top: Path, git_dir: Path, report: _Report) -> None:
    """Move everything in hooks/ aside, renamed and non-executable; leave hooks/ empty."""
    hooks = git_dir / "hooks"
    if not hooks.exists() and not hooks.is_symlink():
        return
    aside = git_dir / DISABLED_HOOKS
    if aside.is_symlink() or (aside.exists() and not aside.is_dir()):
        aside.unlink()
    aside.mkdir(exist_ok=True)
    # A symlinked (or non-directory) hooks/ is moved as it is, not walked.
    entries = [hooks] if hooks.is_symlink() or not hooks.is_dir() else sorted(hooks.iterdir())
    for entry in entries:
        target = _free_name(aside, entry.name + ".disabled")
        entry.rename(target)
        report.hooks_moved += 1
        if not entry.name.endswith(".sample"):  # samples never ran: not worth a line
            report.hooks_disabled.append(_rel(top, entry))
        if target.is_symlink():
            continue
        if target.is_dir():
            for root, _dirs, files in os.walk(target):  # does not follow symlinks
                for name in files:
                    _disarm_file(Path(root) / name)
        else:
            _disarm_file(target)
    if not hooks.is_dir():
        hooks.mkdir()


def _remove_files(top: Path, git_dir: Path, report: _Report) -> None:
    info = git_dir / "info"
    if info.is_symlink():  # git would read info/attributes through it: drop the link
        info.unlink()
        report.removed_files.append(_rel(top, info))
    for name in _REMOVED:
        path = git_dir / name
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            if not any(path.iterdir()):
                path.rmdir()  # an empty branches/ from `git init`: nothing to report
                continue
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()  # a fifo or such
        else:
            continue
        report.removed_files.append(_rel(top, path))


# --- config ----------------------------------------------------------------


def _split_key(key: str) -> tuple[str, str | None, str]:
    section, _, rest = key.partition(".")
    if "." not in rest:
        return section, None, rest
    subsection, _, name = rest.rpartition(".")
    return section, subsection, name


def _clean(text: str) -> bool:
    return not any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text)


def _submodule_url_check(name: str, url: str, where: str) -> None:
    match = _TRANSPORT.match(url)
    if match:
        transport = match.group(1)
        raise _refuse(
            f"declares submodule {printable(name)!r} with the URL transport "
            f"{printable(transport, 40)!r}:: (in {where}), which can run commands or read "
            "local files when the submodule is fetched",
            "submodule_transport",
            submodule=printable(name),
            transport=printable(transport, 40),
        )


def _kept_value(section: str, subsection: str | None, name: str, value: str | None) -> str | None:
    """The value to keep for one config entry, or None to drop it."""
    if value is not None and not _clean(value):
        return None
    if subsection is not None and not _clean(subsection):
        return None
    lowered = (value if value is not None else "true").lower()
    if subsection is None:
        if section == "core" and name in _CORE:
            return lowered if lowered in _CORE[name] else None
        if section == "extensions" and name in _EXTENSIONS:
            return lowered if lowered in _EXTENSIONS[name] else None
        if section == "user" and value is not None:
            return value
        return None
    if value is None:
        return None
    if section == "remote":
        if name in ("url", "pushurl"):
            # A helper transport (ext::, fd::, …) or an option-like URL runs something on fetch.
            return None if _TRANSPORT.match(value) or value.startswith("-") else value
        return value if name in ("fetch", "push") else None
    if section == "branch":
        if name in ("remote", "merge"):
            return value
        return lowered if name == "rebase" and lowered in ("true", "false") else None
    if section == "submodule":
        if name == "url":
            return None if value.startswith("-") else value  # transports refused earlier
        return lowered if name == "active" and lowered in _BOOL else None
    return None


def _parse_list(out: str) -> list[tuple[str, str | None]]:
    entries: list[tuple[str, str | None]] = []
    for entry in out.split("\0"):
        if not entry:
            continue
        key, newline, value = entry.partition("\n")
        entries.append((key, value if newline else None))
    return entries


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _render(kept: list[tuple[str, str]]) -> str:
    groups: dict[tuple[str, str | None], list[tuple[str, str]]] = {}
    for key, value in kept:
        section, subsection, name = _split_key(key)
        groups.setdefault((section, subsection), []).append((name, value))
    lines = ["# Rewritten by envrestore: only an allowlist of keys was kept."]
    for (section, subsection), entries in groups.items():
        lines.append(f"[{section}]" if subsection is None else f"[{section} {_quote(subsection)}]")
        lines.extend(f"\t{name} = {_quote(value)}" for name, value in entries)
    return "\n".join(lines) + "\n"


async def _read_config(top: Path, args: tuple[str, ...], what: str) -> list[tuple[str, str | None]]:
    # With --file, git is pointed away from the repository so it does not parse the
    # repository's own (not yet rewritten) config and includes at startup.
    away = ("--git-dir=/dev/null",) if args[0] == "--file" else ()
    try:
        out = await git(top, *away, *HARDENED, "config", *args, "--no-includes", "--list", "--null")
    except EnvrestoreError as exc:
        raise _refuse(
            f"has {what}, which git cannot read ({scrub(exc.data.get('stderr', exc), top)})",
            "bad_config",
        ) from exc
    return _parse_list(out)


async def _rewrite_config(top: Path, git_dir: Path, report: _Report) -> None:
    config = git_dir / "config"
    where = _rel(top, config)
    if not config.exists() and not config.is_symlink():
        return
    info = config.lstat()
    if not stat.S_ISREG(info.st_mode):
        raise _refuse(f"has {where} that is not a regular file", "config_not_file")
    if info.st_size > MAX_CONFIG_BYTES:
        raise _refuse(
            f"has a {where} of {info.st_size} bytes (at most {MAX_CONFIG_BYTES})", "config_too_big"
        )
    entries = await _read_config(top, ("--file", str(config)), where)
    prefix = "" if git_dir == top / ".git" else _rel(top, git_dir) + ":"
    kept: list[tuple[str, str]] = []
    for key, value in entries:
        section, subsection, name = _split_key(key)
        if section == "submodule" and name == "url" and subsection is not None and value:
            _submodule_url_check(subsection, value, where)
        keep = _kept_value(section, subsection, name, value)
        if keep is None:
            report.dropped_config.append(prefix + printable(key))
        else:
            kept.append((key, keep))
    fresh = git_dir / "config.envrestore-new"
    if fresh.exists() or fresh.is_symlink():
        fresh.unlink()
    fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(_render(kept))
    # Read it back the way git will: what we meant to keep is exactly what git sees.
    again = await _read_config(top, ("--file", str(fresh)), "a rewritten config")
    if again != kept:
        fresh.unlink()
        raise _refuse(f"has a {where} that could not be rewritten faithfully", "config_rewrite")
    fresh.replace(config)


# --- finding every git directory --------------------------------------------


def _check_git_dir(top: Path, git_dir: Path) -> None:
    for inner in ("objects/info/alternates", "commondir"):
        if (git_dir / inner).exists() or (git_dir / inner).is_symlink():
            raise _refuse(
                f"has {_rel(top, git_dir / inner)}, which makes git read objects from another "
                "place on this machine",
                inner.rsplit("/", 1)[-1],
            )


def _module_dirs(top: Path, folder: Path, depth: int, found: list[Path]) -> None:
    """Git directories under a `modules/` folder (names may hold slashes: a/b)."""
    if depth > MAX_DEPTH:
        raise _refuse(f"nests submodules deeper than {MAX_DEPTH} levels", "too_deep")
    for entry in sorted(folder.iterdir()):
        if entry.is_symlink():
            raise _refuse(
                f"has the symlink {_rel(top, entry)} among its submodule repositories",
                "module_symlink",
            )
        if not entry.is_dir():
            continue
        if (entry / "HEAD").is_file():
            found.append(entry)
            if (entry / "modules").is_dir() and not (entry / "modules").is_symlink():
                _module_dirs(top, entry / "modules", depth + 1, found)
        else:
            _module_dirs(top, entry, depth + 1, found)


def _gitfile_target(top: Path, path: Path) -> str:
    with open(path, "rb") as handle:
        head = handle.read(4096).decode("utf-8", "replace")
    first = head.splitlines()[0] if head else ""
    if not first.startswith("gitdir:"):
        raise _refuse(f"has {_rel(top, path)}, a .git file that names no gitdir", "gitfile")
    return os.path.realpath(path.parent / first[len("gitdir:") :].strip())


def _git_dirs(top: Path) -> list[Path]:
    """`.git`, the submodule repositories under it and nested `.git` folders; checks .git files."""
    found = [top / ".git"]
    gitfiles: list[Path] = []
    for root, dirs, files in os.walk(top):  # does not follow symlinks
        here = Path(root)
        if ".git" not in dirs and ".git" not in files:
            continue
        path = here / ".git"
        if ".git" in dirs:
            dirs.remove(".git")  # os.walk lists a symlink to a folder among dirs
        if path.is_symlink():
            raise _refuse(f"has {_rel(top, path)}, a symlinked .git", "gitdir_symlink")
        if path == top / ".git":
            continue
        if path.is_dir():
            found.append(path)
        else:
            gitfiles.append(path)
    for git_dir in list(found):
        modules = git_dir / "modules"
        if modules.is_dir() and not modules.is_symlink():
            _module_dirs(top, modules, 1, found)
    known = {os.path.realpath(p) for p in found}
    for path in gitfiles:
        if _gitfile_target(top, path) not in known:
            raise _refuse(
                f"has {_rel(top, path)}, a .git file pointing outside the repository's own "
                "submodule directories",
                "gitdir_elsewhere",
            )
    return found


async def _check_gitmodules(top: Path) -> None:
    """Refuse submodule URLs with a transport prefix (HEAD's and the working tree's .gitmodules)."""
    try:
        await git(top, *HARDENED, "cat-file", "-e", "HEAD:.gitmodules")
    except EnvrestoreError:
        pass  # no .gitmodules in HEAD (or no HEAD: prepare_code reports that)
    else:
        entries = await _read_config(top, ("--blob", "HEAD:.gitmodules"), "a .gitmodules in HEAD")
        for key, value in entries:
            _section, subsection, name = _split_key(key)
            if name == "url" and subsection is not None and value:
                _submodule_url_check(subsection, value, ".gitmodules of HEAD")
    worktree = top / ".gitmodules"
    if worktree.is_file() and not worktree.is_symlink():
        if worktree.stat().st_size > MAX_CONFIG_BYTES:
            raise _refuse("has a .gitmodules that is too big", "config_too_big")
        entries = await _read_config(top, ("--file", str(worktree)), "a .gitmodules")
        for key, value in entries:
            _section, subsection, name = _split_key(key)
            if name == "url" and subsection is not None and value:
                _submodule_url_check(subsection, value, ".gitmodules")


async def harden_repository(top: Path) -> dict[str, object]:
    """Disarm every git directory in the restored tree at `top`; returns what was dropped.

    Safe to run twice: a second run finds nothing more to drop.
    """
    git_dirs = _git_dirs(top)
    for git_dir in git_dirs:
        _check_git_dir(top, git_dir)
    report = _Report()
    for git_dir in git_dirs:
        _disable_hooks(top, git_dir, report)
        _remove_files(top, git_dir, report)
        await _rewrite_config(top, git_dir, report)
    await _check_gitmodules(top)  # reads HEAD, so only once the config is disarmed
    return report.outputs()
