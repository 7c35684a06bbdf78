"""Creating jobs: the plan stored with the job, the first steps in the outbox, the key claimed.

Same idempotency key and same request → the same job; same key and another
request → Conflict. All of it in one transaction, so a job is never half made.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog

from envrestore.pipelines.errors import Conflict
from envrestore.pipelines.jobs.fingerprint import request_fingerprint
from envrestore.pipelines.jobs.kinds import JobKind
from envrestore.pipelines.jobs.model import JobStatus, StepState, StepStatus, ready_steps
from envrestore.pipelines.jobs.principal import Principal
from envrestore.pipelines.ledger.queries import sql
from envrestore.pipelines.registry import Environment

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Submitted:
    """The job a request maps to, and whether this call created it."""

    job_id: uuid.UUID
    created: bool


async def submit_job(
    pool: asyncpg.Pool,
    kind: JobKind,
    params: dict[str, Any],
    *,
    environment: Environment | None,
    max_attempts: int,
    idempotency_key: str | None = None,
    idempotency_scope: str = "default",
    fingerprint_params: dict[str, Any] | None = None,
    principal: Principal | None = None,
) -> Submitted:
    """Record a new job (or find the one its idempotency key names).

    `fingerprint_params` are the request as the user gave it (defaults to
    `params`); values derived at submission time, like timestamps, stay out.
    """
    target = environment.target if environment else None
    fingerprint = request_fingerprint(
        kind.name, target, params if fingerprint_params is None else fingerprint_params
    )
    for _ in range(2):
        try:
            return await _insert_job(
                pool,
                kind,
                params,
                environment=environment,
                max_attempts=max_attempts,
                idempotency_key=idempotency_key,
                idempotency_scope=idempotency_scope,
                fingerprint=fingerprint,
                requested_by=str(principal) if principal else None,
            )
        except _RaceLostError:
            continue  # another producer claimed the key meanwhile: read it again
    raise Conflict(f"idempotency key {idempotency_key!r} is contended; try again")


async def _insert_job(
    pool: asyncpg.Pool,
    kind: JobKind,
    params: dict[str, Any],
    *,
    environment: Environment | None,
    max_attempts: int,
    idempotency_key: str | None,
    idempotency_scope: str,
    fingerprint: str,
    requested_by: str | None,
) -> Submitted:
    job_id = uuid.uuid4()
    plan = kind.plan_for(params)
    async with pool.acquire() as conn, conn.transaction():
        if idempotency_key is not None:
            existing = await conn.fetchrow(
                sql("get_idempotency_key"), idempotency_scope, idempotency_key
            )
            if existing is not None:
                return _same_or_conflict(existing, fingerprint, idempotency_key)
        await conn.execute(
            sql("insert_job"),
            job_id,
            kind.name,
            environment.id if environment else None,
            environment.site if environment else None,
            environment.env if environment else None,
            params,
            requested_by,
        )
        if idempotency_key is not None:
            claimed = await conn.fetchrow(
                sql("claim_idempotency_key"),
                idempotency_scope,
                idempotency_key,
                fingerprint,
                job_id,
            )
            if claimed is None:
                raise _RaceLostError
        for position, step in enumerate(plan.steps):
            await conn.execute(
                sql("insert_step"),
                job_id,
                step.name,
                position,
                list(step.depends_on),
                step.on_failure,
                max_attempts,
            )
        states = [
            StepState(s.name, StepStatus.PENDING, s.depends_on, s.on_failure) for s in plan.steps
        ]
        for name in ready_steps(JobStatus.QUEUED, states):
            await conn.execute(sql("insert_outbox"), job_id, name, 0.0)
        await conn.execute(
            sql("insert_event"),
            job_id,
            None,
            "job.queued",
            {"kind": kind.name, "requested_by": requested_by},
        )
        await conn.execute(sql("notify_outbox"), str(job_id))
    log.info(
        "job.queued",
        job_id=str(job_id),
        kind=kind.name,
        target=environment and environment.target,
        requested_by=requested_by,
    )
    return Submitted(job_id, created=True)


class _RaceLostError(Exception):
    """Two producers inserted the same idempotency key at once; the loser reads it again."""


def _same_or_conflict(row: asyncpg.Record, fingerprint: str, key: str) -> Submitted:
    if row["fingerprint"] != fingerprint:
        raise Conflict(
            f"idempotency key {key!r} was already used for a different request "
            f"(job {row['job_id']}); use a new key for a new request",
            key=key,
            job_id=str(row["job_id"]),
        )
    return Submitted(row["job_id"], created=False)
