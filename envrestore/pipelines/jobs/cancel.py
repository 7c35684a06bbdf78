"""Cancelling a job, and the point after which a job can no longer be cancelled.

Both sides lock the job row first, so a cancel and the start of the
irreversible step (a restore's `switch`) are ordered: either the cancel wins
and the step stops before touching anything, or the step has begun and the
cancel is refused with a pointer to rollback.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

import asyncpg

from envrestore.pipelines.errors import Cancelled, Conflict, NotFound, Refused
from envrestore.pipelines.jobs.advance import stop_job
from envrestore.pipelines.jobs.context import StepContext
from envrestore.pipelines.jobs.kinds import JobKind
from envrestore.pipelines.jobs.model import JobStatus
from envrestore.pipelines.ledger.queries import sql


async def cancel_job(pool: asyncpg.Pool, job_id: uuid.UUID, kinds: Mapping[str, JobKind]) -> None:
    """Cancel an active job; its cleanup steps then run, running steps stop within a heartbeat."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(sql("get_job_for_update"), job_id)
        if row is None:
            raise NotFound(f"job {job_id} does not exist", job_id=str(job_id))
        status = JobStatus(row["status"])
        if not status.active:
            raise Conflict(f"job {job_id} is already {status.value}; nothing to cancel")
        kind = kinds.get(row["kind"])
        gate = kind.irreversible_from if kind else None
        if gate is not None:
            step = await conn.fetchrow(sql("get_step"), job_id, gate)
            if step is not None and (step["attempts"] > 0 or step["status"] != "pending"):
                raise Refused(
                    f"job {job_id} has started '{gate}': the environment is being changed and "
                    f"can no longer be cancelled; undo it with: envrestore rollback run {job_id}",
                    job_id=str(job_id),
                )
        await stop_job(
            conn, job_id, status=JobStatus.CANCELLED, error="cancelled by the user", step=None
        )


async def enter_irreversible(ctx: StepContext) -> None:
    """Called first by an irreversible step: refuses if the job was cancelled meanwhile."""
    async with ctx.runtime.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(sql("get_job_for_update"), ctx.job.id)
        if row is None or row["status"] != JobStatus.RUNNING.value:
            raise Cancelled(f"job {ctx.job.id} was cancelled before '{ctx.step}' began")
        await conn.execute(
            sql("insert_event"), ctx.job.id, ctx.step, "job.irreversible", {"attempt": ctx.attempt}
        )
