"""What a process needs to run steps: settings, the ledger pool, the object store.

One runtime per worker process, opened on its event loop and kept for its
life; tests open one per test.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import asyncpg

from config.settings import Settings
from pipelines.jobs.kinds import JobKind
from pipelines.ledger.connection import create_pool
from pipelines.objectstore import ObjectStore, open_object_store


@dataclass(frozen=True)
class Runtime:
    """Shared resources of the steps a process runs."""

    settings: Settings
    pool: asyncpg.Pool
    store: ObjectStore
    kinds: Mapping[str, JobKind]
    worker_id: str

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
