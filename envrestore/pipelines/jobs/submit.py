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
from envrestore.pipelines.ledger.types import Conn
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
    reads_backups: bool = False,
) -> Submitted:
    """Record a new job (or find the one its idempotency key names).

    `fingerprint_params` are the request as the user gave it (defaults to
    `params`); values derived at submission time, like timestamps, stay out.
    `reads_backups`: the job reads the backups its parameters name (as a delete's
    `backup_readers` finds them); they are checked again in the insert's
    transaction, so none is being deleted by then.
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
                reads_backups=reads_backups,
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
    reads_backups: bool,
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
        if reads_backups:
            await _refuse_backups_being_deleted(conn, params)
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


async def _refuse_backups_being_deleted(conn: Conn, params: dict[str, Any]) -> None:
    """Share-lock the backups `params` name; refuse one a delete has marked.

    The producer's checks read the backup earlier, without a lock; a delete could
    have marked it since. `FOR SHARE` orders this insert with `mark_deleting`'s
    `FOR UPDATE`: either the delete sees this job as a reader, or this sees 'deleting'.
    """
    for row in await conn.fetch(sql("lock_backups_named"), params):
        if row["status"] != "ready":
            raise Conflict(
                f"backup {row['id']} is being deleted (job {row['deleting_job_id']}); "
                f"choose another one (envrestore backup list {row['site']}.{row['env']})",
                backup_id=row["id"],
            )


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
