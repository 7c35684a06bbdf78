"""Directory trees beside a live directory: staging, atomic swap, rollback points, deletion.

A restore extracts into `.<name>.envrestore-staging-<tag>` next to the live
directory (same filesystem, so a rename is O(1)), then `swap_in` exchanges the
two in one `renameat2(RENAME_EXCHANGE)`: the live path shows the complete old
tree, then the complete new one, never a mix. The old tree stays at
`.<name>.envrestore-rollback-<tag>` until `delete_tree_later` removes it at low
priority (PERFORMANCE.md: never `rm -rf` a big tree before extracting a new one).

Every swap may run twice (a worker dies during the switch step): each function
looks at what exists and finishes what is left. An exchange leaves the same set
of names as before it, so `swap_in` notes the staging tree's inode in a small
marker file first; a second run compares it with the live tree's inode.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import os
import platform
import re
import shutil
import stat
import time
from pathlib import Path
from typing import Any

import structlog

from envrestore.pipelines.errors import Conflict, NotFound, PermanentError, Refused

log = structlog.get_logger(__name__)

_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_ROLES = ("staging", "rollback", "aside", "snapshot")
#: The only names `delete_tree_later` and `discard` will touch.
_DISPOSABLE_RE = re.compile(
    r"^\..+\.envrestore-(?:staging|rollback|aside|snapshot)-[A-Za-z0-9][A-Za-z0-9_-]*$"
)
_MARKER_SUFFIX = ".switching"

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
#: SYS_renameat2 per machine, for a libc without the wrapper (glibc < 2.28, some musl).
_SYS_RENAMEAT2 = {
    "x86_64": 316,
    "aarch64": 276,
    "riscv64": 276,
    "i386": 353,
    "i686": 353,
    "armv7l": 382,
    "ppc64le": 357,
    "s390x": 347,
}


# ---------------------------------------------------------------- naming


def _beside(live: Path, role: str, tag: str) -> Path:
    if not _TAG_RE.match(tag):
        raise PermanentError(f"job tag {tag!r} must be 1-64 letters, digits, '-' or '_'", tag=tag)
    assert role in _ROLES
    return live.parent / f".{live.name}.envrestore-{role}-{tag}"


def staging_path(live: Path, tag: str, *, check: bool = True) -> Path:
    """Where a restore builds the new tree for `live`; checked to be swappable unless told not."""
    if check:
        check_beside(live)
    return _beside(live, "staging", tag)


def rollback_path(live: Path, tag: str) -> Path:
    """Where `swap_in` keeps the old tree of `live` (the rollback point)."""
    return _beside(live, "rollback", tag)


def aside_path(live: Path, tag: str) -> Path:
    """Where `swap_back` moves the restored tree when a restore is rolled back."""
    return _beside(live, "aside", tag)


def snapshot_path(live: Path, tag: str) -> Path:
    """Where a clone keeps a hard-linked snapshot of `live` while it archives it."""
    return _beside(live, "snapshot", tag)


async def hardlink_snapshot(live: Path, dest: Path) -> None:
    """A point-in-time copy of `live` made of hard links (`cp -al`): fast, no data copied.

    Files that are replaced by a new file (uploads are written once, or by
    rename) keep their old content in the snapshot; only a file rewritten in
    place would change under it. Archiving the snapshot instead of the live
    tree means tar never sees the tree change while it reads.
    """
    if os.path.lexists(dest):  # noqa: ASYNC240 - one stat; a killed attempt's leftover
        discard(dest)
    proc = await asyncio.create_subprocess_exec(
        "cp",
        "-a",
        "--link",
        "--no-target-directory",
        "--",
        str(live),
        str(dest),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _out, err = await proc.communicate()
    except BaseException:
        # Cancelled (a sibling part failed): cp must not go on filling `dest`.
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        discard(dest)
        raise
    if proc.returncode != 0:
        discard(dest)
        raise PermanentError(
            f"could not snapshot {live} with hard links: "
            f"{err.decode('utf-8', 'replace').strip()[-300:]}",
            path=str(live),
        )


def check_beside(live: Path) -> None:
    """Refuse a live directory whose siblings cannot be renamed over it atomically."""
    parent = live.parent
    try:
        parent_st = parent.stat()
    except FileNotFoundError:
        raise NotFound(
            f"the parent directory {parent} of {live} does not exist; create it first",
            path=str(parent),
        ) from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermanentError(
            f"{parent} is not writable by this worker (uid {os.getuid()}); the staging "
            f"directory for {live.name} must be created beside it: fix the permissions",
            path=str(parent),
        )
    try:
        live_st = live.lstat()
    except FileNotFoundError:
        return  # a first restore: nothing to be on another filesystem
    if stat.S_ISLNK(live_st.st_mode):
        raise PermanentError(
            f"{live} is a symlink; point the environment at the real directory",
            path=str(live),
        )
    if live_st.st_dev != parent_st.st_dev:
        raise PermanentError(
            f"{live} is a mount point (another filesystem than {parent}): a staging "
            "directory beside it could not be swapped in by a rename; mount its parent "
            "instead, or restore in place",
            path=str(live),
        )


# ---------------------------------------------------------------- exchange


def _renameat2() -> Any:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    func = getattr(libc, "renameat2", None)
    if func is not None:
        func.argtypes = [
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_uint,
        ]
        func.restype = ctypes.c_int
        return func
    number = _SYS_RENAMEAT2.get(platform.machine())
    if number is None:
        return None
    syscall = libc.syscall
    syscall.restype = ctypes.c_long

    def via_syscall(olddirfd: int, old: bytes, newdirfd: int, new: bytes, flags: int) -> int:
        return int(
            syscall(
                ctypes.c_long(number),
                ctypes.c_int(olddirfd),
                ctypes.c_char_p(old),
                ctypes.c_int(newdirfd),
                ctypes.c_char_p(new),
                ctypes.c_uint(flags),
            )
        )

    return via_syscall


_RENAMEAT2: Any = _renameat2()


def _exchange_atomic(a: Path, b: Path) -> bool:
    """RENAME_EXCHANGE a and b; False if the kernel or filesystem cannot do it."""
    if _RENAMEAT2 is None:
        return False
    result = _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    if err == errno.EXDEV:
        raise PermanentError(
            f"{a} and {b} are on different filesystems; they cannot be swapped by a rename",
            a=str(a),
            b=str(b),
        )
    if err == errno.ENOENT:
        raise NotFound(f"cannot exchange {a} and {b}: one of them does not exist")
    raise OSError(err, f"renameat2 exchange failed: {os.strerror(err)}", str(a), str(b))


def exchange(a: Path, b: Path) -> None:
    """Atomically swap two directories (renameat2 RENAME_EXCHANGE), or by three renames."""
    if _exchange_atomic(a, b):
        return
    temp = a.parent / f".{a.name}.envrestore-exchange"
    log.warning(
        "trees.exchange_fallback",
        a=str(a),
        b=str(b),
        reason="renameat2 RENAME_EXCHANGE unsupported here; using three renames",
    )
    a.rename(temp)
    b.rename(a)
    temp.rename(b)


# ---------------------------------------------------------------- swaps


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


def _marker(staging: Path) -> Path:
    return staging.parent / f"{staging.name}{_MARKER_SUFFIX}"


def _read_marker(marker: Path) -> tuple[int, int] | None:
    try:
        dev, ino = marker.read_text(encoding="ascii").split(":")
        return (int(dev), int(ino))
    except (FileNotFoundError, ValueError):
        return None


def _write_marker(marker: Path, inode: tuple[int, int]) -> None:
    temp = marker.parent / f"{marker.name}.tmp"
    with open(temp, "w", encoding="ascii") as fh:
        fh.write(f"{inode[0]}:{inode[1]}")
        fh.flush()
        os.fsync(fh.fileno())
    temp.replace(marker)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def swap_in(live: Path, staging: Path, rollback: Path) -> float:
    """Make `staging` live, keeping the old tree at `rollback`; return the window in seconds.

    The window is how long `live` showed neither the complete old nor the
    complete new tree: ~0 with RENAME_EXCHANGE, two renames' time otherwise,
    0.0 when there was nothing to do (already swapped). A missing live
    directory (a first restore) leaves an empty directory as the rollback point.
    """
    marker = _marker(staging)
    has_live, has_staging, has_rollback = live.exists(), staging.exists(), rollback.exists()
    if not has_staging:
        if has_rollback and has_live:
            marker.unlink(missing_ok=True)
            return 0.0  # done by an earlier run
        if has_rollback:
            raise Conflict(
                f"{live} is missing while its rollback point {rollback} exists; roll back "
                "(swap_back) or investigate before swapping again",
                live=str(live),
            )
        raise NotFound(
            f"staging directory {staging} does not exist: the import did not run or was "
            "discarded; run the restore again",
            path=str(staging),
        )
    if has_rollback:
        if has_live:
            raise Conflict(
                f"{staging}, {rollback} and {live} all exist; a swap was interrupted in an "
                "unknown way: investigate before swapping",
                live=str(live),
            )
        # An interrupted two-rename swap (or a first restore): finish it.
        start = time.monotonic()
        staging.rename(live)
        _fsync_dir(live.parent)
        return time.monotonic() - start
    if not has_live:
        # First restore of this environment: the rollback point is "nothing there".
        rollback.mkdir(mode=0o755)
        staging.rename(live)
        _fsync_dir(live.parent)
        log.info("trees.swapped_in", live=str(live), first=True, window=0.0)
        return 0.0
    staged = _read_marker(marker)
    if staged is None or staged == _inode(staging):
        staged = _inode(staging)
        assert staged is not None
        _write_marker(marker, staged)
        start = time.monotonic()
        exchanged = _exchange_atomic(staging, live)
        window = time.monotonic() - start
        if not exchanged:
            log.warning(
                "trees.swap_fallback",
                live=str(live),
                reason="renameat2 RENAME_EXCHANGE unsupported here; using two renames",
            )
            start = time.monotonic()
            live.rename(rollback)
            staging.rename(live)
            window = time.monotonic() - start
            _fsync_dir(live.parent)
            marker.unlink(missing_ok=True)
            log.info("trees.swapped_in", live=str(live), window=window)
            return window
    elif staged == _inode(live):
        window = 0.0  # exchanged by an earlier run that died before the rename below
    else:
        raise Conflict(
            f"the swap marker {marker} names neither {staging} nor {live}; investigate "
            "before swapping",
            marker=str(marker),
        )
    staging.rename(rollback)  # staging now holds the old tree
    _fsync_dir(live.parent)
    marker.unlink(missing_ok=True)
    log.info("trees.swapped_in", live=str(live), window=window)
    return window


def swap_back(live: Path, rollback: Path, aside: Path) -> float:
    """Roll back: the rollback tree becomes live again, the restored tree goes to `aside`.

    The same swap as `swap_in` in the other direction, so idempotent likewise.
    """
    return swap_in(live, rollback, aside)


# ---------------------------------------------------------------- deletion


def _check_disposable(path: Path) -> bool:
    """Refuse any path but ours; True if there is something to delete."""
    if not _DISPOSABLE_RE.match(path.name) or path.parent == path:
        raise Refused(
            f"refusing to delete {path}: only envrestore staging, rollback and aside "
            "directories (.<name>.envrestore-<role>-<tag>) are deleted by envrestore",
            path=str(path),
        )
    if os.path.ismount(path):
        raise Refused(f"refusing to delete {path}: it is a mount point", path=str(path))
    return os.path.lexists(path)


def _rmtree(path: Path) -> None:
    """shutil.rmtree that also gets through directories an archive made read-only."""

    def retry(func: Any, failed: str, exc_info: Any) -> None:
        where = Path(failed)
        if isinstance(exc_info[1], PermissionError):
            where.parent.chmod(0o700)
            if where.is_dir() and not where.is_symlink():
                where.chmod(0o700)
                shutil.rmtree(where, onerror=retry)
            else:
                func(failed)
            return
        if isinstance(exc_info[1], FileNotFoundError):
            return
        raise exc_info[1]

    if path.is_symlink():
        path.unlink()
        return
    shutil.rmtree(path, onerror=retry)


def discard(path: Path) -> None:
    """Remove a failed staging (or aside) directory now; a no-op if it is gone."""
    if not _check_disposable(path):
        return
    _rmtree(path)
    log.info("trees.discarded", path=str(path))


async def delete_tree_later(path: Path) -> None:
    """Delete a disposable tree at idle I/O and lowest CPU priority, never following symlinks.

    `rm -rf --one-file-system` (which does not follow symlinks) under `ionice
    -c3 nice -n19`; shutil.rmtree in a thread where those are missing or fail.
    """
    if not _check_disposable(path):
        return
    start = time.monotonic()
    argv = ["rm", "-rf", "--one-file-system", "--", str(path)]
    if shutil.which("nice"):
        argv = ["nice", "-n19", *argv]
    if shutil.which("ionice"):
        argv = ["ionice", "-c3", *argv]
    done = False
    if shutil.which("rm"):
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        try:
            _, stderr = await proc.communicate()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        done = proc.returncode == 0 and not _check_disposable(path)
        if not done:
            log.info(
                "trees.delete_retry",
                path=str(path),
                returncode=proc.returncode,
                stderr=stderr.decode("utf-8", "replace")[-300:],
            )
    if not done:
        await asyncio.to_thread(_rmtree, path)
    log.info("trees.deleted", path=str(path), seconds=round(time.monotonic() - start, 3))
