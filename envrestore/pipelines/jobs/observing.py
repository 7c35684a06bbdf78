"""The runner's metrics hooks: what ended, how, how long, how many bytes.

Called from the few places of the step protocol where an attempt or a job
ends (runner.py), so steps never record metrics themselves. A metrics hook
never fails the step: a ledger read for a job's duration that fails is
logged and skipped.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import structlog

from envrestore.observability import metrics
from envrestore.pipelines.jobs.context import StepContext
from envrestore.pipelines.ledger.queries import sql

log = structlog.get_logger(__name__)


def attempt_ended(
    ctx: StepContext, outcome: str, seconds: float, exc: BaseException | None = None
) -> None:
    """One attempt of `ctx.step` ended with `outcome`; `exc` is what it raised, if anything."""
    kind = ctx.job.kind
    metrics.step_finished(kind, ctx.step, outcome, seconds, ctx.progress.done)
    if exc is not None:
        metrics.step_failed(kind, ctx.step, type(exc).__name__)


def outputs_recorded(ctx: StepContext, outputs: dict[str, Any]) -> None:
    """A step's outputs: a switch reports its window (restore/switching.py)."""
    window = outputs.get("window_seconds")
    if isinstance(window, int | float) and not isinstance(window, bool):
        metrics.switch_window(ctx.job.kind, float(window))


def worker_died(kind: str, step: str) -> None:
    """A step given up because its worker died on every attempt."""
    metrics.step_failed(kind, step, metrics.WORKER_DIED)


def lease_deferred(kind: str, step: str, seconds: float) -> None:
    """A step put off (for `seconds` at most: woken when the lease is let go) while
    another job holds its environment's lease."""
    metrics.lease_waited(kind, step, seconds)


async def job_ended(pool: asyncpg.Pool, job_id: uuid.UUID) -> None:
    """The job just ended here: its duration from submission, read from the ledger's clock."""
    try:
        row = await pool.fetchrow(sql("metrics_job_end"), job_id)
    except Exception as exc:  # noqa: BLE001 - a metric must not fail the step
        log.warning("metrics.job_end_not_read", error=str(exc))
        return
    if row is not None:
        metrics.job_finished(row["kind"], row["status"], float(row["seconds"]))
