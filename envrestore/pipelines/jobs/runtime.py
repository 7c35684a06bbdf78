"""What a process needs to run steps: settings, the ledger pool, the object store.

One runtime per worker process, opened on its event loop and kept for its
life; tests open one per test.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import asyncpg

from envrestore.config.settings import Settings
from envrestore.pipelines.jobs.kinds import JobKind
from envrestore.pipelines.ledger.connection import create_pool
from envrestore.pipelines.objectstore import ObjectStore, open_object_store


class RunningSteps:
    """The step attempts this process is running, so a worker that shuts down can
    hand them back at once instead of leaving them to go stale."""

    def __init__(self) -> None:
        self.stopping = False
        self._stops: dict[asyncio.Task[object], Callable[[], None]] = {}

    def add(self, task: asyncio.Task[object], stop: Callable[[], None]) -> None:
        """Track `task` (the attempt); `stop()` makes it stop and hand itself back."""
        self._stops[task] = stop
        if self.stopping:
            stop()

    def discard(self, task: asyncio.Task[object]) -> None:
        self._stops.pop(task, None)

    async def hand_back(self, timeout: float) -> int:
        """Stop every running attempt and wait (at most `timeout`) until each has handed
        itself back; from now on attempts stop as soon as they start. Returns how many ran."""
        self.stopping = True
        tasks = list(self._stops.items())
        for _task, stop in tasks:
            stop()
        if tasks:
            await asyncio.wait([task for task, _ in tasks], timeout=timeout)
        return len(tasks)


@dataclass(frozen=True)
class Runtime:
    """Shared resources of the steps a process runs."""

    settings: Settings
    pool: asyncpg.Pool
    store: ObjectStore
    kinds: Mapping[str, JobKind]
    worker_id: str
    running: RunningSteps = field(default_factory=RunningSteps, compare=False, repr=False)

    def kind(self, name: str) -> JobKind:
        try:
            return self.kinds[name]
        except KeyError:
            raise KeyError(f"no job kind {name!r} in this worker; is it up to date?") from None


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@asynccontextmanager
async def open_runtime(
    settings: Settings,
    *,
    kinds: Mapping[str, JobKind],
    store: ObjectStore | None = None,
    pool: asyncpg.Pool | None = None,
    worker_id: str | None = None,
) -> AsyncIterator[Runtime]:
    """Open the pool and the object store for the length of a block.

    `kinds` are the job kinds this process runs (`pipelines.catalog.job_kinds()`):
    the engine is given them and never imports them, so no kind depends on it
    importing back.
    """
    async with AsyncExitStack() as stack:
        if pool is None:
            pool = await create_pool(settings.database_url)
            stack.push_async_callback(pool.close)
        if store is None:
            store = await stack.enter_async_context(open_object_store(settings))
        yield Runtime(
            settings=settings,
            pool=pool,
            store=store,
            kinds=kinds,
            worker_id=worker_id or default_worker_id(),
        )
