"""The files part of a backup: an uncompressed tar stream of the uploads directory.

GNU tar does the walking (fast, and it knows every file type); every member is
renamed under one top folder (`files_<env>/`, Pantheon's layout), owners are
numeric, paths relative, symlinks stored as symlinks. The caller gzips it.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

from envrestore.pipelines.errors import BadInput
from envrestore.pipelines.streams import run_producer

_TOP_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def tar_argv(directory: Path, top: str, *, snapshot: bool = False) -> list[str]:
    """`tar` writing `directory`'s whole tree to stdout, each member under `top/`.

    `snapshot`: the directory is a hard-linked snapshot, whose inodes the live
    tree shares; a file replaced there by rename changes the old inode's ctime
    (one link fewer), which tar reports as "file changed as we read it" (exit
    1) although its content did not change. That warning is silenced then.
    """
    if not _TOP_RE.match(top):
        raise BadInput(f"archive top folder {top!r} must be a plain name (letters, digits, ._-)")
    return [
        "tar",
        "--create",
        "--file=-",
        "--format=posix",
        # atime/ctime change on every read: leave them out of the archive.
        "--pax-option=delete=atime,delete=ctime",
        "--numeric-owner",
        *(["--warning=no-file-changed"] if snapshot else []),
        "--sort=name",
        f"--directory={directory}",
        # "./x" → "top/x"; symlink targets (flag S) are left as they are.
        f"--transform=s,^\\.,{top},rSh",
        "--",
        ".",
    ]


def files_archive(files_dir: Path, top: str, *, snapshot: bool = False) -> AsyncIterator[bytes]:
    """Stream `files_dir` as a tar whose members all sit under `top/` (e.g. `files_dev/`).

    A `snapshot` (see `tar_argv`) accepts tar's exit code 1, "some files differ"."""
    if not files_dir.exists():
        raise BadInput(
            f"files directory {files_dir} does not exist; check the environment's files path",
            path=str(files_dir),
        )
    if not files_dir.is_dir():
        raise BadInput(f"files path {files_dir} is not a directory", path=str(files_dir))
    return run_producer(
        tar_argv(files_dir, top, snapshot=snapshot), ok_returncodes=(0, 1) if snapshot else (0,)
    )
