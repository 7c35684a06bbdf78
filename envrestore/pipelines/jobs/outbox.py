"""The outbox relay: messages the ledger says are due, handed to a sender.

The sender (Dramatiq in workers/, a list in tests) is called before the
deletion of the rows is committed: a crash in between sends a message twice,
which the step protocol absorbs; it never loses one.
"""

from __future__ import annotations

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
            send(row["job_id"], row["step"])
            await conn.execute(sql("mark_enqueued"), row["job_id"], row["step"])
    if rows:
        log.debug("outbox.relayed", count=len(rows))
    return len(rows)
