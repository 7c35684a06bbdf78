"""Creating jobs: the plan stored with the job, the first steps in the outbox, the key claimed.

Same idempotency key and same request → the same job; same key and another
request → Conflict. Each job is recorded by one statement (`submit_jobs` in
queries.sql: one round trip, so a job is never half made); a batch
(`submit_jobs` here) is one statement for all its jobs, in one transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
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


@dataclass(frozen=True)
class JobSpec:
    """One job to record: what `submit_job` takes, for a batch (`submit_jobs`).

    `fingerprint_params` are the request as the user gave it (defaults to
    `params`); values derived at submission time, like timestamps, stay out.
    `reads_backups`: the job reads the backups its parameters name (as a delete's
    `backup_readers` finds them); they are checked again in the insert's
    statement, so none is being deleted by then.
    """

    kind: JobKind
    params: dict[str, Any]
    environment: Environment | None
    max_attempts: int
    idempotency_key: str | None = None
    idempotency_scope: str = "default"
    fingerprint_params: dict[str, Any] | None = None
    principal: Principal | None = None
    reads_backups: bool = False

    def fingerprint(self) -> str:
        target = self.environment.target if self.environment else None
        asked = self.params if self.fingerprint_params is None else self.fingerprint_params
        return request_fingerprint(self.kind.name, target, asked)


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
    """Record a new job (or find the one its idempotency key names): one round trip."""
    spec = JobSpec(
        kind,
        params,
        environment,
        max_attempts,
        idempotency_key,
        idempotency_scope,
        fingerprint_params,
        principal,
        reads_backups,
    )
    (submitted,) = await submit_jobs(pool, [spec])
    return submitted


async def submit_jobs(pool: asyncpg.Pool, specs: Sequence[JobSpec]) -> list[Submitted]:
    """Record many jobs in one transaction: one statement for the batch (two if a
    concurrent producer claimed one of its keys meanwhile). Any refusal (a key
    reused for another request, a backup being deleted) raises, and none of the
    batch is recorded. Results are in the order of `specs`; a key given twice in
    the batch names one job (the second time `created=False`)."""
    if len(specs) <= 1:  # one statement is atomic: no transaction's two round trips
        return await _record(pool, specs) if specs else []
    async with pool.acquire() as conn, conn.transaction():
        return await _record(conn, specs)


async def _record(conn: asyncpg.Pool | Conn, specs: Sequence[JobSpec]) -> list[Submitted]:
    fingerprints = [spec.fingerprint() for spec in specs]
    ids = [uuid.uuid4() for _ in specs]
    first_of: dict[tuple[str, str], int] = {}  # (scope, key) → the first job with it
    rows: dict[uuid.UUID, dict[str, Any]] = {}
    for index, spec in enumerate(specs):
        if spec.idempotency_key is not None:
            scoped = (spec.idempotency_scope, spec.idempotency_key)
            if scoped in first_of:
                continue  # the same key again in this batch: answered below
            first_of[scoped] = index
        rows[ids[index]] = _row(ids[index], spec, fingerprints[index])
    found: dict[uuid.UUID, Submitted] = {}
    pending = list(rows.values())
    for _ in range(2):
        raced = []
        for outcome in await conn.fetch(sql("submit_jobs"), pending):
            if outcome["outcome"] == "raced":
                raced.append(rows[outcome["request_id"]])  # not inserted: same id again
            else:
                found[outcome["request_id"]] = _result(outcome, rows[outcome["request_id"]])
        if not raced:
            break
        pending = raced  # another producer claimed the key meanwhile: read it again
    else:
        raise Conflict(f"idempotency key {pending[0]['key']!r} is contended; try again")
    results = []
    for index, spec in enumerate(specs):
        if ids[index] in found:
            results.append(found[ids[index]])
            if found[ids[index]].created:
                _log_queued(spec, ids[index])
            continue
        assert spec.idempotency_key is not None  # only a repeated key has no row of its own
        first = first_of[(spec.idempotency_scope, spec.idempotency_key)]
        same = found[ids[first]]
        if fingerprints[index] != fingerprints[first]:
            raise Conflict(
                f"idempotency key {spec.idempotency_key!r} was already used for a different "
                f"request (job {same.job_id}); use a new key for a new request",
                key=spec.idempotency_key,
                job_id=str(same.job_id),
            )
        results.append(Submitted(same.job_id, created=False))
    return results


def _log_queued(spec: JobSpec, job_id: uuid.UUID) -> None:
    log.info(
        "job.queued",
        job_id=str(job_id),
        kind=spec.kind.name,
        target=spec.environment and spec.environment.target,
        requested_by=str(spec.principal) if spec.principal else None,
    )


def _row(job_id: uuid.UUID, spec: JobSpec, fingerprint: str) -> dict[str, Any]:
    """One job as the `submit_jobs` statement reads it."""
    plan = spec.kind.plan_for(spec.params)
    states = [StepState(s.name, StepStatus.PENDING, s.depends_on, s.on_failure) for s in plan.steps]
    environment = spec.environment
    return {
        "id": str(job_id),
        "kind": spec.kind.name,
        "environment_id": environment.id if environment else None,
        "site": environment.site if environment else None,
        "env": environment.env if environment else None,
        "params": spec.params,
        "requested_by": str(spec.principal) if spec.principal else None,
        "scope": spec.idempotency_scope,
        "key": spec.idempotency_key,
        "fingerprint": fingerprint,
        "steps": [
            {
                "name": step.name,
                "position": position,
                "depends_on": list(step.depends_on),
                "on_failure": step.on_failure,
                "max_attempts": spec.max_attempts,
            }
            for position, step in enumerate(plan.steps)
        ],
        "ready": ready_steps(JobStatus.QUEUED, states),
        "reads_backups": spec.reads_backups,
    }


def _result(outcome: asyncpg.Record, row: dict[str, Any]) -> Submitted:
    """What the statement did with one job, or the refusal a user sees."""
    kind = outcome["outcome"]
    if kind == "created":
        return Submitted(outcome["job_id"], created=True)
    if kind == "existing":
        return Submitted(outcome["job_id"], created=False)
    if kind == "conflict":
        raise Conflict(
            f"idempotency key {row['key']!r} was already used for a different request "
            f"(job {outcome['job_id']}); use a new key for a new request",
            key=row["key"],
            job_id=str(outcome["job_id"]),
        )
    raise Conflict(
        f"backup {outcome['backup_id']} is being deleted (job {outcome['deleting_job_id']}); "
        f"choose another one (envrestore backup list "
        f"{outcome['backup_site']}.{outcome['backup_env']})",
        backup_id=outcome["backup_id"],
    )
