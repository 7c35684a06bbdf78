"""The outbox relay: messages the ledger says are due, handed to a sender.

The sender (Dramatiq in workers/, a list in tests) is called before the
deletion of the rows is committed: a crash in between sends a message twice,
which the step protocol absorbs; it never loses one. The sender runs in a
thread: a broker that hangs or retries must never stall the event loop, where
every running step's heartbeat lives.

A broker that restarts loses the messages it held; `forget_sends_before`
makes their steps count as never sent, so the reconciler sends them again at
once instead of after its long resend timer.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import asyncpg
import structlog

from envrestore.pipelines.ledger.queries import sql

log = structlog.get_logger(__name__)

Sender = Callable[[uuid.UUID, str], None]


async def relay_once(pool: asyncpg.Pool, send: Sender, *, batch: int = 100) -> int:
    """Send up to `batch` due messages; returns how many were sent."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(sql("take_outbox"), batch)
        for row in rows:
            await asyncio.to_thread(send, row["job_id"], row["step"])
            await conn.execute(sql("mark_enqueued"), row["job_id"], row["step"])
    if rows:
        log.debug("outbox.relayed", count=len(rows))
    return len(rows)


async def forget_sends_before(pool: asyncpg.Pool, seconds_ago: float) -> int:
    """Pending steps sent more than `seconds_ago` seconds ago count as never sent
    (the broker restarted that long ago); returns how many."""
    rows = await pool.fetch(sql("forget_sends_before"), seconds_ago)
    if rows:
        log.warning(
            "outbox.lost_in_broker_restart",
            steps=[f"{row['job_id']}:{row['name']}" for row in rows[:20]],
            count=len(rows),
        )
    return len(rows)
