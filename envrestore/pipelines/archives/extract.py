"""Safe, streaming extraction of an untrusted tar into an empty directory.

One pass: each member is checked by `tarpolicy.TarGuard` before anything is
written for it, then written below `dest` with the top folder stripped. Nothing
is written outside `dest`: paths have no `..` and are never absolute, no member
is written through a symlink (the guard refuses it, and the final component is
opened with O_NOFOLLOW|O_EXCL), hardlinks only join regular files we wrote.
Modes follow `TarLimits.mode_policy` (0644/0755 by default; never setuid,
setgid or sticky; see `tarpolicy.restored_mode`), owners are never taken from
the archive (the worker creates every file, so its user owns it); mtimes are
kept; directories get their mode and mtime last, deepest first, as `tar -x` does.
With `ArchiveRules.unwrap` (imports) nothing is stripped while writing; the
folder the guard names at the end is unwrapped by three renames (`TreeWriter.unwrap`).
"""

# ruff: noqa: PTH101, PTH102, PTH103, PTH108, PTH114, PTH118, PTH120, PTH211
# The per-member path is the hot loop (20,000 small files): plain os calls on str
# paths, no Path object per member.

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import shutil
import stat
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path

import structlog

from envrestore.pipelines.archives.naming import unsafe
from envrestore.pipelines.archives.tarpolicy import (
    ArchiveRules,
    Member,
    MemberKind,
    TarGuard,
    TarLimits,
    TarReport,
)
from envrestore.pipelines.archives.tarstream import TarParser, run_parser
from envrestore.pipelines.errors import BadInput

log = structlog.get_logger(__name__)

_OPEN_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: The extracted root's mode when the archive has no entry for its top folder.
_ROOT_MODE = 0o755


class TreeWriter:
    """A sink that writes admitted members below `root`."""

    def __init__(self, root: Path) -> None:
        self._root = str(root)
        self._fd = -1
        self._member: Member | None = None
        self._dirs: list[tuple[str, int, int]] = []
        self._root_seen = False
        self._top_dirs: set[str] = set()  # folders the archive lists at the root itself
        self._umask = _current_umask()

    def _path(self, parts: tuple[str, ...]) -> str:
        return os.path.join(self._root, *parts) if parts else self._root

    def open_member(self, member: Member) -> bool:
        path = self._path(member.path)
        if member.kind is MemberKind.DIR:
            self._make_dir(member, path)
            return False
        if member.kind is MemberKind.FILE:
            # Created with its final mode when the umask leaves it intact: one syscall less.
            self._fd = self._create(member, path, lambda: os.open(path, _OPEN_NEW, member.mode))
            self._member = member
            return True
        if member.kind is MemberKind.SYMLINK:
            self._create(member, path, lambda: os.symlink(member.link, path))
            os.utime(path, ns=(member.mtime_ns, member.mtime_ns), follow_symlinks=False)
            return False
        source = self._path(member.link_path)
        try:
            st = os.lstat(source)
        except FileNotFoundError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            raise unsafe(
                member.name,
                "hardlink_target",
                f"is a hardlink to {member.link!r}, which is not a regular file extracted "
                "earlier from this archive",
            )
        self._create(member, path, lambda: os.link(source, path, follow_symlinks=False))
        return False

    def write(self, data: memoryview) -> None:
        while data:
            written = os.write(self._fd, data)
            data = data[written:]

    def close_member(self) -> None:
        if self._fd < 0 or self._member is None:
            return
        fd, member = self._fd, self._member
        self._fd, self._member = -1, None
        try:
            if member.mode & self._umask:
                os.fchmod(fd, member.mode)
            os.utime(fd, ns=(member.mtime_ns, member.mtime_ns))
        finally:
            os.close(fd)

    def finish(self) -> None:
        if not self._root_seen:
            os.chmod(self._root, _ROOT_MODE)  # made 0700 by prepare_dest
        # Deepest first, so a read-only parent does not stop its children being set.
        self._dirs.sort(key=lambda item: item[0].count(os.sep), reverse=True)
        for path, mode, mtime_ns in self._dirs:
            try:
                fd = os.open(path, _OPEN_DIR)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                    continue  # replaced later in the archive by a non-directory
                raise
            try:
                os.fchmod(fd, mode)
                os.utime(fd, ns=(mtime_ns, mtime_ns))
            finally:
                os.close(fd)
        self._dirs.clear()

    def abort(self, symlinks: Iterable[tuple[str, ...]]) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._member = None
        # A refused archive's links must not point anywhere, even in a tree
        # that is about to be discarded.
        for parts in symlinks:
            path = self._path(parts)
            if os.path.islink(path):
                os.unlink(path)

    def unwrap(self, top: str) -> None:
        """Make the folder `top`, the tree's only entry, the tree itself: three renames.

        It goes aside beside the root (inside, a child of the same name would be in
        the way), the empty root is removed, and it takes the root's place with its
        own mode and mtime; a folder the archive never listed gets the root's default.
        """
        root = Path(self._root)
        inner = root / top
        tag = hashlib.sha256(root.name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
        aside = root.parent / f".envrestore-unwrap-{tag}"
        st = inner.lstat()
        if not stat.S_ISDIR(st.st_mode):  # the guard said folder; never move anything else
            raise unsafe(top, "unwrap", "is not a folder and cannot be unwrapped")
        if aside.is_symlink() or aside.is_file():
            aside.unlink()
        elif aside.exists():  # left by an attempt that died between the renames
            shutil.rmtree(aside)
        inner.rename(aside)
        root.rmdir()
        aside.rename(root)
        if top not in self._top_dirs:
            root.chmod(_ROOT_MODE)
        os.utime(root, ns=(st.st_atime_ns, st.st_mtime_ns))

    def _make_dir(self, member: Member, path: str) -> None:
        if len(member.path) == 1:
            self._top_dirs.add(member.path[0])
        if member.path:
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                if not stat.S_ISDIR(os.lstat(path).st_mode):
                    os.unlink(path)  # a file or symlink of the same name, earlier in the archive
                    os.mkdir(path, 0o700)
            except FileNotFoundError:
                os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
                os.mkdir(path, 0o700)
        else:
            self._root_seen = True
        # Owner keeps rwx until the end so the directory's members can be written.
        self._dirs.append((path, member.mode, member.mtime_ns))

    def _create(self, member: Member, path: str, make: Callable[[], int | None]) -> int:
        """Run `make` (which creates `path` exclusively), replacing an earlier non-directory."""
        for _ in range(3):
            try:
                return make() or 0
            except FileNotFoundError:
                os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
            except FileExistsError:
                if stat.S_ISDIR(os.lstat(path).st_mode):
                    raise unsafe(
                        member.name,
                        "replaces_directory",
                        "would replace a directory extracted earlier from this archive",
                    ) from None
                os.unlink(path)  # tar semantics: a later member replaces an earlier one
            except NotADirectoryError:
                raise unsafe(
                    member.name,
                    "through_file",
                    "has a path whose parent is a file extracted earlier from this archive",
                ) from None
        raise unsafe(member.name, "replaces_directory", "could not be created")


def _current_umask() -> int:
    """The umask, read without setting it (os.umask would race with other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o777  # unknown: always fchmod


def prepare_dest(dest: Path) -> None:
    """Create `dest` (0700 until the end), or accept it empty; refuse anything else."""
    try:
        dest.mkdir(mode=0o700)
    except FileExistsError:
        if dest.is_symlink() or not dest.is_dir():
            raise BadInput(
                "the extraction target exists and is not a directory; remove it",
                path=str(dest),
            ) from None
        if any(os.scandir(dest)):
            raise BadInput(
                "the extraction target is not empty; discard it before extracting again",
                path=str(dest),
            ) from None


async def extract_tar(
    chunks: AsyncIterator[bytes],
    dest: Path,
    *,
    limits: TarLimits,
    rules: ArchiveRules | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> TarReport:
    """Extract a (decompressed) tar stream into `dest`, its single top folder stripped.

    `dest` must be missing or empty; it is created. `rules` name the archive in
    errors and may require a top folder (`rules.top`), or allow any layout and
    unwrap a matching sole folder (`rules.unwrap`; `report.top` names it, "" when
    none); an archive with nothing in it is refused. Modes follow
    `limits.mode_policy`. On any error `dest` holds a partial tree: the caller
    discards it. `on_progress` receives the tar bytes consumed so far.
    """
    prepare_dest(dest)
    rules = rules or ArchiveRules()
    writer = TreeWriter(dest)
    report = await run_parser(chunks, TarParser(TarGuard(limits, rules), writer), on_progress)
    if rules.unwrap is not None and report.top:
        await asyncio.to_thread(writer.unwrap, report.top)
    log.info(
        "archive.extracted",
        dest=str(dest),
        top=report.top,
        members=report.members,
        files=report.files,
        bytes=report.bytes,
    )
    return report
