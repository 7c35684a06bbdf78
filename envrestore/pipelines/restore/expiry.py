"""Rollback points past their time become expiry jobs, asked for by the system."""

from __future__ import annotations

from envrestore.pipelines.ledger.queries import sql
from envrestore.pipelines.producer import Producer
from envrestore.pipelines.requests import ExpireRollbackRequest


async def schedule_expiries(producer: Producer, *, limit: int = 50) -> int:
    """Queue one expiry job per rollback point past its time (idempotent per point)."""
    queued = 0
    for row in await producer.pool.fetch(sql("due_rollback_points"), limit):
        submitted = await producer.submit(
            ExpireRollbackRequest(str(row["job_id"])),
            idempotency_key=f"expire-rollback:{row['job_id']}",
        )
        queued += int(submitted.created)
    return queued
