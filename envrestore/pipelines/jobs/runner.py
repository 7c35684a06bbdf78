"""The step protocol: the same for every step of every job (DESIGN.md, Running a step).

1. Load the job; stop if it is over (cleanup steps excepted).
2. A step already settled is a duplicate delivery: acknowledge and stop.
3. Claim the attempt in one UPDATE, counting attempts in the ledger.
4. Hold the environment's lease (fencing token) before touching it.
5. Work, heartbeating; permanent errors fail the job, others are retried.
6. Mark done and queue the next steps in one transaction (the outbox).

Every ledger call of the protocol rides out a ledger outage (`ledger_retry`):
a message taken while the ledger is away waits for it instead of being
dropped, and a step whose work ended meanwhile records it when the ledger
returns instead of being run again.

Recording a failure never fails because of its text: errors, events and
outputs are cleaned (`pipelines.text`) before they are written, and a write
the ledger still refuses is made again with a short ASCII form of the real
reason, so a job ends failed with why, never as "its worker died".
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import structlog

from envrestore.pipelines.errors import EnvrestoreError, PermanentError
from envrestore.pipelines.jobs import observing
from envrestore.pipelines.jobs.advance import advance_job, stop_job
from envrestore.pipelines.jobs.context import StepContext
from envrestore.pipelines.jobs.ledger_retry import is_connection_error, retry_ledger
from envrestore.pipelines.jobs.model import JobStatus, StepStatus, ready_steps
from envrestore.pipelines.jobs.records import JobRecord, StepRecord
from envrestore.pipelines.jobs.runtime import Runtime
from envrestore.pipelines.ledger.queries import sql
from envrestore.pipelines.text import ERROR_LIMIT, OUTPUT_LIMIT, ascii_text, clean_data, clean_text

T = TypeVar("T")

log = structlog.get_logger(__name__)

#: How long a step that waits for its environment's lease is put off. The job that
#: lets the lease go wakes it at once (advance.wake_lease_waiters); this is the
#: safety net, so a waiting step is not sent again every second.
LEASE_WAIT_SECONDS = 30.0
MAX_BACKOFF_SECONDS = 60.0


class _Interrupt(enum.Enum):
    """Why the heartbeat stopped the work."""

    CLAIM_LOST = "claim_lost"  # another attempt took the step over
    JOB_STOPPED = "job_stopped"  # the job failed or was cancelled meanwhile
    SHUTDOWN = "shutdown"  # this worker is stopping: hand the attempt back


#: The step-duration outcome of an attempt the heartbeat stopped.
_INTERRUPT_OUTCOME = {
    _Interrupt.CLAIM_LOST: "superseded",
    _Interrupt.JOB_STOPPED: "skipped",
    _Interrupt.SHUTDOWN: "released",
}


async def run_step(runtime: Runtime, job_id: uuid.UUID | str, step: str) -> None:
    """Run one delivery of `(job_id, step)`; safe to call any number of times."""
    job_id = uuid.UUID(str(job_id))
    with structlog.contextvars.bound_contextvars(job_id=str(job_id), step=step):
        await _run_step(runtime, job_id, step)


async def _retrying(runtime: Runtime, what: str, call: Callable[[], Awaitable[T]]) -> T:
    """`call()`, retried through a ledger outage (given up when this worker stops)."""
    return await retry_ledger(
        call,
        what=what,
        give_up_after=runtime.settings.ledger_retry_seconds,
        max_delay=runtime.settings.reconnect_max_delay_seconds,
        stop=lambda: runtime.running.stopping,
    )


async def _run_step(runtime: Runtime, job_id: uuid.UUID, step: str) -> None:
    # Everything up to the claim is safe to repeat; a claim whose reply was lost is
    # not claimed twice (the retry finds it running) and goes stale like a dead one.
    claimed = await _retrying(runtime, "claim", lambda: _claim(runtime, job_id, step))
    if claimed is None:
        return
    job, record, claim = claimed
    attempt: int = claim["attempts"]
    structlog.contextvars.bind_contextvars(attempt=attempt)
    if attempt > claim["max_attempts"]:
        observing.worker_died(job.kind, step)
        await _fail(
            runtime,
            job,
            step,
            attempt,
            f"step {step} was started {attempt - 1} times without finishing "
            "(its worker died each time); giving up",
        )
        return
    if not record.on_failure:
        await _retrying(
            runtime, "set_job_running", lambda: runtime.pool.execute(sql("set_job_running"), job_id)
        )

    ctx = StepContext(
        job=job,
        step=step,
        attempt=attempt,
        max_attempts=claim["max_attempts"],
        runtime=runtime,
        log=log.bind(),
    )
    await _execute(runtime, ctx)


async def _claim(
    runtime: Runtime, job_id: uuid.UUID, step: str
) -> tuple[JobRecord, StepRecord, asyncpg.Record] | None:
    """Steps 1-4 of the protocol: the job, the step, the lease, the claim (None: not ours)."""
    pool = runtime.pool
    job_row = await pool.fetchrow(sql("get_job"), job_id)
    step_row = await pool.fetchrow(sql("get_step"), job_id, step)
    if job_row is None or step_row is None:
        log.warning("step.unknown", reason="no such job or step in the ledger")
        return None
    job = JobRecord.from_row(job_row)
    record = StepRecord.from_row(step_row)
    structlog.contextvars.bind_contextvars(site=job.site, env=job.env)
    if record.status.settled:
        log.info("step.duplicate_delivery", status=record.status.value)
        return None
    if not _runs_in(job.status, record):
        log.info("step.not_for_this_job_status", job_status=job.status.value)
        return None
    if record.status == StepStatus.PENDING and not await _is_ready(runtime, job, record):
        await _unsent(runtime, job_id, step)
        log.info("step.not_ready")
        return None

    if not record.on_failure and job.environment_id is not None:
        # The lease first: a step that must wait is not claimed, so its
        # attempts and start time stay untouched while it waits its turn.
        token = await _hold_lease(runtime, job)
        if token is None:
            token = await _wait_for_lease(runtime, job, step)
        if token is None:
            observing.lease_deferred(job.kind, step, LEASE_WAIT_SECONDS)
            log.info("step.waiting_for_lease", target=job.target)
            return None
        job = dataclasses.replace(job, lease_token=token)

    if runtime.running.stopping:
        # This worker is stopping: leave the step unclaimed and send it again now.
        await _send_again(pool, job_id, step)
        log.info("step.not_claimed", reason="worker shutting down")
        return None
    claim = await pool.fetchrow(
        sql("claim_step"), job_id, step, runtime.worker_id, runtime.settings.stale_after_seconds
    )
    if claim is None:
        log.info("step.not_claimed", reason="running elsewhere or not due yet")
        return None
    return job, record, claim


def _runs_in(job_status: JobStatus, record: StepRecord) -> bool:
    """Regular steps run while the job is active; cleanup steps only after it failed."""
    if record.on_failure:
        return job_status in (JobStatus.FAILED, JobStatus.CANCELLED)
    return job_status.active


async def _unsent(runtime: Runtime, job_id: uuid.UUID, step: str) -> None:
    """A message that came too early (a cleanup step sent while a regular step still
    ran): mark the step never sent, so whatever makes it ready sends it at once —
    not the reconciler, a minute later. Advancing under the job lock closes the gap
    where it became ready between the check and now."""
    async with runtime.pool.acquire() as conn, conn.transaction():
        await conn.execute(sql("lock_job"), job_id)
        await conn.execute(sql("mark_unsent"), job_id, step)
        await advance_job(conn, job_id)


async def _send_again(pool: asyncpg.Pool, job_id: uuid.UUID, step: str) -> None:
    """Queue the step's message at once (the relay of a live worker wakes on NOTIFY)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(sql("insert_outbox"), job_id, step, 0.0)
        await conn.execute(sql("notify_outbox"), "handed-back")


async def _is_ready(runtime: Runtime, job: JobRecord, record: StepRecord) -> bool:
    rows = await runtime.pool.fetch(sql("get_steps"), job.id)
    states = [StepRecord.from_row(r).state() for r in rows]
    return record.name in ready_steps(job.status, states)


async def _hold_lease(runtime: Runtime, job: JobRecord) -> int | None:
    """This job's fencing token, acquiring the lease if it does not hold it yet.

    None when another job holds it (or an older job waits for it).
    """
    pool = runtime.pool
    for _ in range(2):
        lease = await pool.fetchrow(sql("get_lease"), job.environment_id)
        if lease is not None and lease["job_id"] == job.id:
            token: int = lease["fencing_token"]
            if job.lease_token not in (None, token):
                return None
            await pool.execute(sql("set_job_lease_token"), job.id, token)
            return token
        if job.lease_token is not None:
            return None  # held once, lost since: a newer job owns the environment now
        if lease is None:
            await pool.execute(sql("ensure_lease_row"), job.environment_id)
        acquired = await pool.fetchrow(sql("acquire_lease"), job.environment_id, job.id)
        if acquired is not None:
            await pool.execute(sql("set_job_lease_token"), job.id, acquired["fencing_token"])
            log.info("lease.acquired", token=acquired["fencing_token"])
            return int(acquired["fencing_token"])
    return None


async def _wait_for_lease(runtime: Runtime, job: JobRecord, step: str) -> int | None:
    """Put the step off until the lease comes free; its token if it came free just now.

    Under the lease row's lock, the lease is tried once more, then the step's message
    is put off: a job that releases the lease meanwhile (`release_lease` waits for this
    lock) commits either before the try, which then succeeds, or after the message is
    recorded, which its `wake_lease_waiters` then makes due. No wake-up is lost.
    Locks are taken as `advance_job` takes them, the job first, then the lease.
    """
    async with runtime.pool.acquire() as conn, conn.transaction():
        await conn.execute(sql("lock_job"), job.id)
        await conn.execute(sql("ensure_lease_row"), job.environment_id)
        await conn.fetchrow(sql("lock_lease"), job.environment_id)
        if job.lease_token is None:  # held once and lost since: never again
            acquired = await conn.fetchrow(sql("acquire_lease"), job.environment_id, job.id)
            if acquired is not None:
                token = int(acquired["fencing_token"])
                await conn.execute(sql("set_job_lease_token"), job.id, token)
                log.info("lease.acquired", token=token)
                return token
        await conn.execute(sql("insert_outbox"), job.id, step, LEASE_WAIT_SECONDS)
    return None


async def _execute(runtime: Runtime, ctx: StepContext) -> None:
    kind = runtime.kind(ctx.job.kind)
    function = kind.steps[ctx.step]
    started = time.monotonic()
    await _retrying(runtime, "step.started", lambda: ctx.event("step.started", attempt=ctx.attempt))
    work = asyncio.create_task(function(ctx))
    interrupt: list[_Interrupt] = []
    beat = asyncio.create_task(_heartbeat(runtime, ctx, work, interrupt))
    # The irreversible step (a switch, a swap back) is short and swaps in threads a
    # cancel cannot stop: it is left to finish within the shutdown grace rather than
    # handed back while its thread may still be renaming.
    attempt_task = asyncio.current_task() if ctx.step != kind.irreversible_from else None

    def stop_for_shutdown() -> None:
        if not work.done():
            interrupt.append(_Interrupt.SHUTDOWN)
            work.cancel()

    if attempt_task is not None:
        runtime.running.add(attempt_task, stop_for_shutdown)
    try:
        outputs = await work
    except asyncio.CancelledError:
        if not interrupt:
            raise  # cancelled from outside: the reconciler resumes the step once it is stale
        observing.attempt_ended(ctx, _INTERRUPT_OUTCOME[interrupt[0]], time.monotonic() - started)
        await _interrupted(runtime, ctx, interrupt[0])
        return
    except PermanentError as exc:
        observing.attempt_ended(ctx, "failed", time.monotonic() - started, exc)
        await _fail(runtime, ctx.job, ctx.step, ctx.attempt, exc.message, exc)
        return
    except Exception as exc:  # noqa: BLE001 - anything else is transient by definition
        last = ctx.attempt >= ctx.max_attempts
        observing.attempt_ended(
            ctx, "failed" if last else "retrying", time.monotonic() - started, exc
        )
        await _retry_or_fail(runtime, ctx, exc)
        return
    finally:
        if attempt_task is not None:
            runtime.running.discard(attempt_task)
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat
    await _done(runtime, ctx, clean_data(outputs or {}, OUTPUT_LIMIT), time.monotonic() - started)


async def _heartbeat(
    runtime: Runtime, ctx: StepContext, work: asyncio.Task[Any], interrupt: list[_Interrupt]
) -> None:
    """Prove the attempt alive and flush progress; stop the work if it must stop."""
    interval = min(runtime.settings.heartbeat_seconds, 1.0)
    while not work.done():
        await asyncio.sleep(interval)
        try:
            job_status = await runtime.pool.fetchval(
                sql("heartbeat_step"),
                ctx.job.id,
                ctx.step,
                ctx.attempt,
                ctx.progress.done,
                ctx.progress.total,
            )
            if job_status not in (None, JobStatus.QUEUED.value, JobStatus.RUNNING.value):
                step_row = await runtime.pool.fetchrow(sql("get_step"), ctx.job.id, ctx.step)
                if step_row is not None and step_row["on_failure"]:
                    continue
        except Exception as exc:  # noqa: BLE001 - a ledger hiccup must not kill the work
            log.warning("step.heartbeat_failed", error=str(exc))
            continue
        if job_status is None:
            interrupt.append(_Interrupt.CLAIM_LOST)
        elif job_status not in (JobStatus.QUEUED.value, JobStatus.RUNNING.value):
            interrupt.append(_Interrupt.JOB_STOPPED)
        else:
            continue
        log.warning("step.interrupted", reason=interrupt[0].value)
        work.cancel()
        return


async def _interrupted(runtime: Runtime, ctx: StepContext, why: _Interrupt) -> None:
    if why == _Interrupt.CLAIM_LOST:
        return  # the other attempt owns the step now
    if why == _Interrupt.SHUTDOWN:
        await _release(runtime, ctx)
        return

    async def skip() -> None:
        async with runtime.pool.acquire() as conn, conn.transaction():
            await conn.execute(sql("lock_job"), ctx.job.id)
            await conn.execute(sql("skip_step"), ctx.job.id, ctx.step)
            await advance_job(conn, ctx.job.id)

    await _retrying(runtime, "step.skip", skip)


async def _release(runtime: Runtime, ctx: StepContext) -> None:
    """Hand a stopped attempt back: the step is pending and its message queued in one
    transaction, so another worker resumes it now, not after its heartbeat goes stale.
    Only this attempt is released (`attempts = $3`); its work has already stopped."""
    async with runtime.pool.acquire() as conn, conn.transaction():
        await conn.execute(sql("lock_job"), ctx.job.id)
        released = await conn.fetchrow(sql("release_step"), ctx.job.id, ctx.step, ctx.attempt)
        if released is None:
            return  # settled or taken over meanwhile
        await conn.execute(sql("insert_outbox"), ctx.job.id, ctx.step, 0.0)
        await conn.execute(
            sql("insert_event"), ctx.job.id, ctx.step, "step.released", {"attempt": ctx.attempt}
        )
        await conn.execute(sql("notify_outbox"), "released")
    log.info("step.released", reason="worker shutting down")


async def _done(
    runtime: Runtime, ctx: StepContext, outputs: dict[str, Any], seconds: float
) -> None:
    ended: list[bool] = []

    async def record() -> bool:
        ended.clear()
        async with runtime.pool.acquire() as conn, conn.transaction():
            await conn.execute(sql("lock_job"), ctx.job.id)
            marked = await conn.fetchrow(
                sql("finish_step_done"),
                ctx.job.id,
                ctx.step,
                ctx.attempt,
                outputs,
                ctx.progress.done,
                ctx.progress.total,
            )
            if marked is None:
                return False
            await conn.execute(
                sql("insert_event"),
                ctx.job.id,
                ctx.step,
                "step.finished",
                {"attempt": ctx.attempt, "seconds": round(seconds, 3)},
            )
            status = await advance_job(conn, ctx.job.id)
            # A regular step of an active job that made it succeed ended the job.
            ended.append(ctx.job.status.active and status == JobStatus.SUCCEEDED)
        return True

    # Fenced by the attempt: a retry after a lost reply finds the step done already.
    if not await _retrying(runtime, "step.finished", record):
        log.warning("step.finished_but_superseded")
        return
    log.info("step.finished", seconds=round(seconds, 3))
    observing.attempt_ended(ctx, "succeeded", seconds)
    observing.outputs_recorded(ctx, outputs)
    if any(ended):
        await observing.job_ended(runtime.pool, ctx.job.id)


async def _write_with_fallback(
    write: Callable[[str], Awaitable[T]], message: str, *, what: str
) -> tuple[T, str]:
    """`write(message)`; if the ledger refuses the text, `write` its short ASCII form once.

    Returns what `write` returned and the message actually written.
    Connection errors are raised as they are (transient).
    """
    try:
        return await write(message), message
    except Exception as exc:  # any refusal of the text; connection errors re-raised
        if is_connection_error(exc):
            raise
        fallback = ascii_text(message)
        log.error(
            f"{what}.not_recorded",
            reason="the ledger refused the text; recording a short ASCII form",
            write_error=ascii_text(f"{type(exc).__name__}: {exc}"),
            error=fallback,
        )
        return await write(fallback), fallback


async def _fail(
    runtime: Runtime,
    job: JobRecord,
    step: str,
    attempt: int,
    message: str,
    exc: BaseException | None = None,
) -> None:
    async def record(text: str) -> bool:
        async with runtime.pool.acquire() as conn, conn.transaction():
            await conn.execute(sql("lock_job"), job.id)
            await conn.execute(sql("finish_step_failed"), job.id, step, attempt, text)
            return await stop_job(conn, job.id, status=JobStatus.FAILED, error=text, step=step)

    text = clean_text(message, ERROR_LIMIT)
    stopped, message = await _retrying(
        runtime,
        "step.failure",
        lambda: _write_with_fallback(record, text, what="step.failure"),
    )
    if stopped:
        await observing.job_ended(runtime.pool, job.id)
    data = exc.data if isinstance(exc, EnvrestoreError) else {}
    log.error("step.failed", error=message, **{k: str(v) for k, v in data.items()})


def _reason(exc: BaseException) -> str:
    """What went wrong, as recorded: the error's own message, or its type and text."""
    if isinstance(exc, EnvrestoreError):
        return clean_text(exc.message, ERROR_LIMIT)
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not hide the failure
        text = repr(type(exc))
    return clean_text(f"{type(exc).__name__}: {text}", ERROR_LIMIT)


async def _retry_or_fail(runtime: Runtime, ctx: StepContext, exc: Exception) -> None:
    message = _reason(exc)
    if ctx.attempt >= ctx.max_attempts:
        await _fail(
            runtime,
            ctx.job,
            ctx.step,
            ctx.attempt,
            f"gave up after {ctx.attempt} attempts: {message}",
            exc,
        )
        return
    delay = min(
        runtime.settings.retry_backoff_seconds * 2 ** (ctx.attempt - 1), MAX_BACKOFF_SECONDS
    )

    async def record(text: str) -> bool:
        async with runtime.pool.acquire() as conn, conn.transaction():
            await conn.execute(sql("lock_job"), ctx.job.id)
            marked = await conn.fetchrow(
                sql("retry_step_later"), ctx.job.id, ctx.step, ctx.attempt, text, delay
            )
            if marked is None:
                return False
            await conn.execute(sql("insert_outbox"), ctx.job.id, ctx.step, delay)
            await conn.execute(
                sql("insert_event"),
                ctx.job.id,
                ctx.step,
                "step.retrying",
                {"attempt": ctx.attempt, "error": text, "delay": delay},
            )
            return True

    text = message
    marked, message = await _retrying(
        runtime, "step.retry", lambda: _write_with_fallback(record, text, what="step.retry")
    )
    if marked:
        log.warning("step.retrying", error=message, delay=delay, exc_info=exc)
