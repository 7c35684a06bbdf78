"""The producer side of restores and rollbacks: every refusal before a job exists."""

from __future__ import annotations

import uuid

import asyncpg

from config.settings import Settings
from pipelines.backup.service import get_backup
from pipelines.errors import BadInput, Conflict, NotFound, Refused
from pipelines.jobs.submit import Submitted, submit_job
from pipelines.ledger.queries import sql
from pipelines.registry import get_environment, get_environment_by_id
from pipelines.restore.job import EXPIRE_ROLLBACK, RESTORE, ROLLBACK
from pipelines.restore.targets import ELEMENTS

SYSTEM_SCOPE = "envrestore-system"


def parse_elements(element: str) -> tuple[str, ...]:
    """`all`, one element, or a comma-separated list."""
    if element == "all":
        return ELEMENTS
    chosen = tuple(e.strip() for e in element.split(",") if e.strip())
    unknown = [e for e in chosen if e not in ELEMENTS]
    if not chosen or unknown:
        raise BadInput(
            f"--element {element!r}: use all, database, files or code (or a comma-separated list)"
        )
    return tuple(e for e in ELEMENTS if e in chosen)


async def create_restore(
    pool: asyncpg.Pool,
    settings: Settings,
    target: str,
    *,
    backup: str = "latest",
    element: str = "all",
    in_place: bool = False,
    force_live: bool = False,
    allow_incomplete_dump: bool = False,
    idempotency_key: str | None = None,
) -> Submitted:
    """Queue a restore of `SITE.ENV` from one of its own backups.

    `allow_incomplete_dump` imports a dump that lacks its dump tool's closing line
    (otherwise refused as truncated); the job's outputs then say so.
    """
    environment = await get_environment(pool, target)
    elements = parse_elements(element)
    if environment.protected and not force_live:
        raise Refused(
            f"{target} is protected: restoring it directly replaces what visitors see. Restore "
            f"{environment.site}.dev or {environment.site}.test instead and clone the content "
            "to it once checked, or pass --force-live if you really mean to restore it",
            target=target,
        )
    if backup == "latest":
        backup_id = await pool.fetchval(sql("latest_backup_id"), environment.id)
        if backup_id is None:
            raise NotFound(
                f"{target} has no backups yet; create one with: envrestore backup create {target}",
                target=target,
            )
    else:
        backup_id = backup
    record = await get_backup(pool, backup_id)
    if (record.site, record.env) != (environment.site, environment.env):
        raise BadInput(
            f"backup {backup_id} belongs to {record.site}.{record.env}, not {target}; "
            f"list {target}'s backups with: envrestore backup list {target}",
            backup_id=backup_id,
        )
    have = {p["part"] for p in record.parts}
    missing = [e for e in elements if e not in have]
    if missing:
        raise NotFound(f"backup {backup_id} has no {', '.join(missing)} part")
    return await submit_job(
        pool,
        RESTORE,
        {
            "backup_id": backup_id,
            "elements": list(elements),
            "in_place": in_place,
            "force_live": force_live,
            "allow_incomplete_dump": allow_incomplete_dump,
        },
        environment=environment,
        max_attempts=settings.max_attempts,
        idempotency_key=idempotency_key,
        idempotency_scope=settings.idempotency_scope,
        fingerprint_params={
            "backup": backup,
            "elements": list(elements),
            "in_place": in_place,
            "force_live": force_live,
            "allow_incomplete_dump": allow_incomplete_dump,
        },
    )


async def create_rollback(
    pool: asyncpg.Pool,
    settings: Settings,
    restore_job_id: uuid.UUID,
    *,
    idempotency_key: str | None = None,
) -> Submitted:
    """Queue the rollback of a restore (or of a rollback) that switched."""
    point = await pool.fetchrow(sql("get_rollback_point"), restore_job_id)
    if point is None:
        job = await pool.fetchrow(sql("get_job"), restore_job_id)
        if job is None:
            raise NotFound(f"job {restore_job_id} does not exist")
        raise Conflict(
            f"job {restore_job_id} ({job['kind']}, {job['status']}) did not switch an "
            "environment, so there is nothing to roll back",
            job_id=str(restore_job_id),
        )
    if point["status"] != "kept":
        raise Conflict(
            f"the rollback point of job {restore_job_id} is {point['status']}"
            + (f" (by job {point['rollback_job_id']})" if point["rollback_job_id"] else ""),
            job_id=str(restore_job_id),
        )
    later = await pool.fetchval(sql("later_restore_switched"), restore_job_id)
    if later is not None:
        raise Conflict(
            f"job {later} changed the environment after job {restore_job_id}; roll that back "
            f"first (envrestore rollback {later})",
            job_id=str(later),
        )
    environment = await get_environment_by_id(pool, point["environment_id"])
    return await submit_job(
        pool,
        ROLLBACK,
        {"restore_job_id": str(restore_job_id)},
        environment=environment,
        max_attempts=settings.max_attempts,
        idempotency_key=idempotency_key,
        idempotency_scope=settings.idempotency_scope,
    )


async def schedule_expiries(pool: asyncpg.Pool, settings: Settings, *, limit: int = 50) -> int:
    """Queue one expiry job per rollback point past its time (idempotent per point)."""
    queued = 0
    for row in await pool.fetch(sql("due_rollback_points"), limit):
        point = await pool.fetchrow(sql("get_rollback_point"), row["job_id"])
        if point is None:
            continue
        environment = await get_environment_by_id(pool, point["environment_id"])
        submitted = await submit_job(
            pool,
            EXPIRE_ROLLBACK,
            {"restore_job_id": str(row["job_id"])},
            environment=environment,
            max_attempts=settings.max_attempts,
            idempotency_key=f"expire-rollback:{row['job_id']}",
            idempotency_scope=SYSTEM_SCOPE,
        )
        queued += int(submitted.created)
    return queued
