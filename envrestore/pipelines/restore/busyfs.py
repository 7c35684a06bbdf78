"""Extractions and big deletes kept apart on one filesystem, through host-local lock files.

On journal-less ext4, creating files within minutes after deleting many is 3x
slower (PERFORMANCE.md). So a rollback point's trees are never deleted while
a part is being extracted on the same filesystem: every extraction holds a
shared `flock` on `<state_dir>/locks/extract-<device>.lock` (one per
filesystem, by `st_dev`), and a delete waits until it can take that lock
exclusively, then holds it while it deletes. An extraction never waits: it
takes its shared lock without blocking, and starts even if a delete already
holds the lock (it cannot be made faster by waiting; the delete was first).
Locks held by a process end with it, so a crashed worker leaves none behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import structlog

from envrestore.pipelines.errors import TransientError

log = structlog.get_logger(__name__)

#: How often a waiting delete looks again, and how long it waits at most.
POLL_SECONDS = 2.0
MAX_WAIT_SECONDS = 3600.0


def lock_path(state_dir: Path, tree: Path) -> Path:
    """The lock file of the filesystem `tree` is on (its nearest existing ancestor's)."""
    probe = tree
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return state_dir / "locks" / f"extract-{probe.stat().st_dev}.lock"


def _open_lock(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


@contextlib.contextmanager
def extracting(state_dir: Path, dest: Path) -> Iterator[None]:
    """Mark an extraction into `dest` as running, for as long as the block runs."""
    fd = _open_lock(lock_path(state_dir, dest))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("extract.beside_delete", dest=str(dest))  # a delete came first
        yield
    finally:
        os.close(fd)  # releases the lock


def extraction_running(state_dir: Path, tree: Path) -> bool:
    """Is an extraction running on `tree`'s filesystem now (or a delete in progress)?"""
    fd = _open_lock(lock_path(state_dir, tree))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@contextlib.asynccontextmanager
async def no_extraction(
    state_dir: Path,
    tree: Path,
    *,
    poll: float | None = None,
    max_wait: float | None = None,
) -> AsyncIterator[None]:
    """Wait until no extraction runs on `tree`'s filesystem, then keep new ones off it
    (they still start, see the module docstring) while the block deletes.

    Raises TransientError (the job is retried later) after `max_wait` seconds.
    """
    poll = POLL_SECONDS if poll is None else poll
    max_wait = MAX_WAIT_SECONDS if max_wait is None else max_wait
    fd = _open_lock(lock_path(state_dir, tree))
    try:
        deadline = time.monotonic() + max_wait
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TransientError(
                        f"an extraction has been running on the filesystem of {tree} for "
                        f"{max_wait:.0f} s; its delete is deferred to a later attempt",
                        path=str(tree),
                    ) from None
                if not waited:
                    log.info("trees.delete_deferred", path=str(tree), reason="extraction running")
                    waited = True
                await asyncio.sleep(poll)
        yield
    finally:
        os.close(fd)
