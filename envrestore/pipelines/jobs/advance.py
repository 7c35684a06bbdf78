"""Moving a job forward after any step changes: the outbox and the job's status.

Called inside the transaction that changed a step, so "step done" and "next
steps due" are one atomic fact; the reconciler calls it too, so a job never
stalls because a message was lost.
"""

from __future__ import annotations

import uuid

import structlog

from envrestore.pipelines.jobs.model import JobStatus, StepStatus, ready_steps
from envrestore.pipelines.jobs.records import JobRecord, StepRecord
from envrestore.pipelines.ledger.queries import sql
from envrestore.pipelines.ledger.types import Conn

log = structlog.get_logger(__name__)


async def advance_job(conn: Conn, job_id: uuid.UUID, *, stopped: bool = False) -> JobStatus | None:
    """Settle the job's status, skip what can no longer run, and queue what is ready.

    Must run inside a transaction; locks the job row so that two steps
    finishing at once advance the job one after the other. `stopped`: the job
    was just failed or cancelled (`stop_job`).
    """
    row = await conn.fetchrow(sql("get_job_for_update"), job_id)
    if row is None:
        return None
    job = JobRecord.from_row(row)
    steps = [StepRecord.from_row(r) for r in await conn.fetch(sql("get_steps"), job_id)]
    status = job.status
    regular = [s for s in steps if not s.on_failure]

    if status.active and regular and all(s.status == StepStatus.DONE for s in regular):
        await conn.execute(sql("finish_job"), job_id, JobStatus.SUCCEEDED.value, None, None)
        await conn.execute(sql("insert_event"), job_id, None, "job.succeeded", {})
        log.info("job.succeeded", job_id=str(job_id), kind=job.kind)
        status = JobStatus.SUCCEEDED

    to_skip: list[str] = []
    if status == JobStatus.SUCCEEDED:
        to_skip = [s.name for s in steps if s.on_failure and s.status == StepStatus.PENDING]
    elif not status.active:
        to_skip = [s.name for s in regular if s.status == StepStatus.PENDING]
    for name in to_skip:
        await conn.execute(sql("skip_step"), job_id, name)
    if to_skip:
        steps = [StepRecord.from_row(r) for r in await conn.fetch(sql("get_steps"), job_id)]

    # Only steps never sent: a step sent before (retry, lease wait, expired
    # heartbeat) is re-sent by whoever put it back, or by the reconciler.
    never_sent = {s.name for s in steps if s.enqueued_at is None}
    due = [n for n in ready_steps(status, [s.state() for s in steps]) if n in never_sent]
    for name in due:
        await conn.execute(sql("insert_outbox"), job_id, name, 0.0)
    if due:
        await conn.execute(sql("notify_outbox"), str(job_id))

    live = any(s.status in (StepStatus.PENDING, StepStatus.RUNNING) for s in steps)
    if not status.active and job.environment_id is not None:
        if not live:
            await conn.execute(sql("release_lease"), job.environment_id, job_id)
        # A job just stopped no longer keeps newer ones waiting behind it (first come,
        # first served) unless it holds the lease: then it wakes them once it lets go.
        if not live or stopped:
            await wake_lease_waiters(conn, job.environment_id, job_id)
    return status


async def wake_lease_waiters(conn: Conn, environment_id: int, ended: uuid.UUID) -> int:
    """Make the steps that wait for the environment's lease due now (job `ended` let it go).

    A waiting step is put off for a long while (runner.LEASE_WAIT_SECONDS, a safety
    net) instead of asking again every second; this wakes it as soon as the job
    ahead of it ends, or ends without ever holding the lease (an older job that was
    waiting too). Every waiter is woken: the oldest takes the lease, the others wait
    again. Also called for a job that never held the lease: nothing to release then.
    """
    woken = await conn.fetch(sql("wake_lease_waiters"), environment_id, ended)
    if woken:
        await conn.execute(sql("notify_outbox"), "lease-released")
        log.info(
            "lease.waiters_woken",
            environment_id=environment_id,
            steps=[f"{row['job_id']}:{row['step']}" for row in woken],
        )
    return len(woken)


async def stop_job(
    conn: Conn,
    job_id: uuid.UUID,
    *,
    status: JobStatus,
    error: str | None,
    step: str | None,
) -> bool:
    """Mark an active job failed or cancelled, then advance it (cleanup steps become due)."""
    stopped = await conn.fetchrow(sql("finish_job"), job_id, status.value, error, step)
    if stopped is not None:
        await conn.execute(
            sql("insert_event"), job_id, step, f"job.{status.value}", {"error": error}
        )
        log.warning(f"job.{status.value}", job_id=str(job_id), step=step, error=error)
    await advance_job(conn, job_id, stopped=stopped is not None)
    return stopped is not None
