"""Jobs as users see them (`job show --json`): status, error, steps with progress.

Errors and event data are cleaned again on the way out (`pipelines.text`):
rows written by older versions may still hold raw control characters.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from envrestore.pipelines.errors import BadInput, NotFound
from envrestore.pipelines.jobs.records import JobRecord, StepRecord
from envrestore.pipelines.ledger.queries import sql
from envrestore.pipelines.text import ERROR_LIMIT, clean_data, clean_text


def parse_job_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise BadInput(
            f"{text!r} is not a job id (a UUID, as printed when the job was queued)"
        ) from None


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _error(text: str | None) -> str | None:
    return clean_text(text, ERROR_LIMIT) if text is not None else None


def step_view(step: StepRecord) -> dict[str, Any]:
    return {
        "name": step.name,
        "status": step.status.value,
        "attempts": step.attempts,
        "max_attempts": step.max_attempts,
        "depends_on": list(step.depends_on),
        "on_failure": step.on_failure,
        "bytes_done": step.bytes_done,
        "bytes_total": step.bytes_total,
        "started_at": _iso(step.started_at),
        "finished_at": _iso(step.finished_at),
        "heartbeat_at": _iso(step.heartbeat_at),
        "error": _error(step.error),
        "outputs": step.outputs,
    }


def job_view(job: JobRecord, steps: list[StepRecord]) -> dict[str, Any]:
    return {
        "id": str(job.id),
        "kind": job.kind,
        "status": job.status.value,
        "target": job.target,
        "site": job.site,
        "env": job.env,
        "requested_by": job.requested_by,
        "error": _error(job.error),
        "error_step": job.error_step,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "params": job.params,
        "outputs": job.outputs,
        "steps": [step_view(step) for step in steps],
    }


async def load_job(pool: asyncpg.Pool, job_id: uuid.UUID) -> tuple[JobRecord, list[StepRecord]]:
    row = await pool.fetchrow(sql("get_job"), job_id)
    if row is None:
        raise NotFound(f"job {job_id} does not exist", job_id=str(job_id))
    steps = [StepRecord.from_row(r) for r in await pool.fetch(sql("get_steps"), job_id)]
    return JobRecord.from_row(row), steps


async def show_job(pool: asyncpg.Pool, job_id: uuid.UUID) -> dict[str, Any]:
    job, steps = await load_job(pool, job_id)
    return job_view(job, steps)


async def list_jobs(
    pool: asyncpg.Pool,
    *,
    site: str | None = None,
    env: str | None = None,
    limit: int = 50,
    sites: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Newest first; `sites` (None: all) filters before `limit` counts."""
    rows = await pool.fetch(sql("list_jobs"), site, env, limit, sites)
    out = []
    for row in rows:
        job = JobRecord.from_row(row)
        view = job_view(job, [])
        del view["steps"]
        out.append(view)
    return out


async def job_events(pool: asyncpg.Pool, job_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = await pool.fetch(sql("list_events"), job_id)
    return [
        {
            "at": _iso(r["at"]),
            "step": r["step"],
            "event": clean_text(r["event"], 200, newlines=False),
            "data": clean_data(r["data"]),
        }
        for r in rows
    ]
