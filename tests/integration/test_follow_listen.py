"""`--wait` hears the ledger: a job's change wakes its follower (LISTEN, migration 011),
and a change that notifies nobody is still seen by the slow safety poll."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from envrestore.cli.follow import CHANNEL, follow_job
from envrestore.pipelines.jobs.kinds import JobKind
from envrestore.pipelines.jobs.model import Plan, StepSpec
from envrestore.pipelines.jobs.submit import submit_job
from envrestore.pipelines.ledger.connection import create_pool
from envrestore.pipelines.ledger.queries import sql

#: Longer than any test may wait: only a notification can end these follows in time.
NEVER = 3600.0


async def _nothing(_ctx: Any) -> dict[str, Any]:
    return {}


NOOP = JobKind("noop", Plan((StepSpec("only"),)), {"only": _nothing})


@pytest.fixture
async def pool(ledger_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(ledger_url, max_size=3)
    yield pool
    await pool.close()


async def new_job(pool: asyncpg.Pool) -> uuid.UUID:
    return (await submit_job(pool, NOOP, {}, environment=None, max_attempts=1)).job_id


async def finish(pool: asyncpg.Pool, job_id: uuid.UUID, *, quietly: bool = False) -> None:
    """What a worker's last transaction does: the step done, the job succeeded.
    `quietly`: with triggers off, as if the notification were lost."""
    async with pool.acquire() as conn, conn.transaction():
        if quietly:
            await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute(
            "UPDATE job_steps SET status = 'done', finished_at = now() WHERE job_id = $1", job_id
        )
        await conn.execute(
            "UPDATE jobs SET status = 'succeeded', finished_at = now() WHERE id = $1", job_id
        )


async def test_a_finished_job_wakes_its_follower(pool: asyncpg.Pool) -> None:
    job_id = await new_job(pool)
    following = asyncio.create_task(follow_job(pool, job_id, quiet=True, interval=NEVER))
    await asyncio.sleep(0.3)  # it has read the job queued and waits
    assert not following.done()
    await finish(pool, job_id)
    view = await asyncio.wait_for(following, 10)
    assert view["status"] == "succeeded"
    assert [s["status"] for s in view["steps"]] == ["done"]


async def test_a_step_change_is_notified_with_its_job_id(pool: asyncpg.Pool) -> None:
    job_id = await new_job(pool)
    heard: asyncio.Queue[object] = asyncio.Queue()

    def hear(*args: object) -> None:
        heard.put_nowait(args[3])

    async with pool.acquire() as conn:
        await conn.add_listener(CHANNEL, hear)
        await pool.execute("UPDATE job_steps SET bytes_done = 10 WHERE job_id = $1", job_id)
        assert await asyncio.wait_for(heard.get(), 10) == str(job_id)
        await conn.remove_listener(CHANNEL, hear)


async def test_a_lost_notification_is_caught_by_the_safety_poll(pool: asyncpg.Pool) -> None:
    job_id = await new_job(pool)
    following = asyncio.create_task(follow_job(pool, job_id, quiet=True, interval=0.5))
    await asyncio.sleep(0.3)
    await finish(pool, job_id, quietly=True)
    view = await asyncio.wait_for(following, 10)
    assert view["status"] == "succeeded"


async def test_heartbeats_and_bookkeeping_that_show_nothing_notify_nobody(
    pool: asyncpg.Pool,
) -> None:
    """Every NOTIFY serialises commits cluster-wide: a heartbeat that moved no bytes, the
    relay's `enqueued_at` and a lease token change nothing a follower draws. They send
    nothing; the marker sent after them is the first thing heard."""
    quiet, marker = await new_job(pool), await new_job(pool)
    heard: asyncio.Queue[object] = asyncio.Queue()

    def hear(*args: object) -> None:
        heard.put_nowait(args[3])

    async with pool.acquire() as conn:
        await conn.add_listener(CHANNEL, hear)
        await pool.execute(
            "UPDATE job_steps SET status = 'running', attempts = 1 WHERE job_id = $1", quiet
        )
        assert await asyncio.wait_for(heard.get(), 10) == str(quiet)  # a change is heard
        await pool.execute(sql("heartbeat_step"), quiet, "only", 1, 0, None)
        await pool.execute(sql("mark_enqueued"), quiet, "only")
        await pool.execute("UPDATE jobs SET lease_token = 7 WHERE id = $1", quiet)
        await pool.execute("UPDATE job_steps SET bytes_done = 1 WHERE job_id = $1", marker)
        assert await asyncio.wait_for(heard.get(), 10) == str(marker)
        await pool.execute(sql("heartbeat_step"), quiet, "only", 1, 5, 10)  # progress: heard
        assert await asyncio.wait_for(heard.get(), 10) == str(quiet)
        await conn.remove_listener(CHANNEL, hear)


class _CannotListen:
    """A pool whose connections refuse LISTEN (as behind a transaction-pooling proxy)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Any]:
        async with self._pool.acquire() as conn:
            yield _Refusing(conn)


class _Refusing:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    async def add_listener(self, *_args: object) -> None:
        raise asyncpg.InterfaceError("LISTEN is not supported here")


async def test_a_follower_that_cannot_listen_polls(pool: asyncpg.Pool) -> None:
    job_id = await new_job(pool)
    refusing: Any = _CannotListen(pool)
    following = asyncio.create_task(follow_job(refusing, job_id, quiet=True, interval=0.3))
    await asyncio.sleep(0.3)
    assert not following.done()
    await finish(pool, job_id)
    view = await asyncio.wait_for(following, 10)
    assert view["status"] == "succeeded"
