"""Producer-side checks of restores, imports and rollbacks: every refusal before a job exists."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime

import asyncpg

from envrestore.config.settings import Settings
from envrestore.pipelines.backup.naming import new_backup_id
from envrestore.pipelines.backup.service import BackupRecord, get_backup, latest_backup
from envrestore.pipelines.errors import BadInput, Conflict, NotFound, Refused
from envrestore.pipelines.jobs.prepared import SYSTEM_SCOPE, Prepared
from envrestore.pipelines.ledger.queries import sql
from envrestore.pipelines.registry import Environment, get_environment, get_environment_by_id
from envrestore.pipelines.requests import (
    CloneRequest,
    ExpireRollbackRequest,
    ImportRequest,
    RestoreRequest,
    RollbackRequest,
    to_params,
)
from envrestore.pipelines.restore.job import CLONE, EXPIRE_ROLLBACK, IMPORT, RESTORE, ROLLBACK
from envrestore.pipelines.sources.links import own_store_key
from envrestore.pipelines.sources.urlsafety import check_url


async def _pinned_backup(pool: asyncpg.Pool, request: RestoreRequest) -> BackupRecord:
    """The backup `request` names, checked to belong to its source environment."""
    source_name = request.source or request.target
    source = await get_environment(pool, source_name)
    if request.backup == "latest":
        record = await latest_backup(pool, source)
    else:
        record = await get_backup(pool, request.backup)
    backup_id = record.id
    if (record.site, record.env) != (source.site, source.env):
        hint = (
            f"restore from it with: --from {record.site}.{record.env} --backup {backup_id}"
            if request.source is None
            else f"list {source_name}'s backups with: envrestore backup list {source_name}"
        )
        raise BadInput(
            f"backup {backup_id} belongs to {record.site}.{record.env}, not {source_name}; {hint}",
            backup_id=backup_id,
        )
    if record.status == "deleting":
        raise Conflict(
            f"backup {backup_id} is being deleted (job {record.deleting_job_id}); restore "
            f"another one (envrestore backup list {record.site}.{record.env})",
            backup_id=backup_id,
        )
    return record


def refuse_protected(environment: Environment, force_live: bool) -> None:
    if environment.protected and not force_live:
        target = environment.target
        raise Refused(
            f"{target} is protected: restoring it directly replaces what visitors see. Restore "
            f"{environment.site}.dev or {environment.site}.test instead and clone the content "
            "to it once checked, or pass --force-live if you really mean to restore it",
            target=target,
        )


async def prepare_restore(pool: asyncpg.Pool, request: RestoreRequest) -> Prepared:
    """Check a restore (from the target's own backup or another environment's) and pin
    its backup; everything refused here is refused before a job exists."""
    environment = await get_environment(pool, request.target)
    refuse_protected(environment, request.force_live)
    record = await _pinned_backup(pool, request)
    have = {p["part"] for p in record.parts}
    missing = [e for e in request.elements if e not in have]
    if missing:
        held = ",".join(record.elements) or "none"
        raise NotFound(
            f"backup {record.id} has no {', '.join(missing)} part (it holds {held}); restore "
            f"only what it holds with --element {held}, or choose another backup",
            backup_id=record.id,
        )
    if "database" in request.elements and record.engine != environment.engine:
        raise BadInput(
            f"backup {record.id} of {record.site}.{record.env} holds a {record.engine} "
            f"database, but {request.target} runs {environment.engine}; restore a backup of "
            f"the same engine (or leave the database out with --element files,code)",
            backup_id=record.id,
        )
    if (
        "code" in request.elements
        and record.site != environment.site
        and request.code_strategy not in ("overwrite", "merge")
    ):
        raise BadInput(
            f"the code of {record.site}.{record.env} is another site's: choose how it "
            "comes in with --code-strategy overwrite (its tree as one commit) or merge "
            "(its history merged into the current branch)",
            backup_id=record.id,
        )
    if request.in_place and request.code_strategy not in (None, "replace"):
        raise BadInput(
            f"--code-strategy {request.code_strategy} builds on the live repository, which "
            "--in-place wipes first; drop one of them"
        )
    pinned = replace(request, backup=record.id)
    return Prepared(RESTORE, environment, to_params(pinned), asked=to_params(request))


async def prepare_rollback(pool: asyncpg.Pool, request: RollbackRequest) -> Prepared:
    """Check that the restore (or rollback) switched and is the latest to have done so."""
    restore_job_id = uuid.UUID(request.restore_job_id)
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
            f"first (envrestore rollback run {later})",
            job_id=str(later),
        )
    environment = await get_environment_by_id(pool, point["environment_id"])
    return Prepared(ROLLBACK, environment, to_params(request))


async def prepare_expiry(pool: asyncpg.Pool, request: ExpireRollbackRequest) -> Prepared:
    """An expiry job for a rollback point past its time (idempotent per point)."""
    point = await pool.fetchrow(sql("get_rollback_point"), uuid.UUID(request.restore_job_id))
    if point is None:
        raise NotFound(f"job {request.restore_job_id} has no rollback point")
    environment = await get_environment_by_id(pool, point["environment_id"])
    return Prepared(
        EXPIRE_ROLLBACK, environment, to_params(request), idempotency_scope=SYSTEM_SCOPE
    )


async def prepare_import(
    pool: asyncpg.Pool, settings: Settings, request: ImportRequest
) -> Prepared:
    """Check an import before it is queued: the environment, and each URL's shape.

    The addresses a URL resolves to are checked by the worker as it fetches
    (DNS can change in between); what can be refused now is.
    """
    environment = await get_environment(pool, request.target)
    refuse_protected(environment, request.force_live)
    for part in request.parts:
        if part.url is not None and own_store_key(part.url, settings) is None:
            check_url(part.url)
    return Prepared(IMPORT, environment, to_params(request))


async def prepare_clone(pool: asyncpg.Pool, request: CloneRequest) -> Prepared:
    """Check a clone: both environments exist, differ, and run the same engine.

    No --force-live: cloning checked content into live is the way to change it,
    and it keeps a rollback point like a restore.
    """
    source = await get_environment(pool, request.source)
    environment = await get_environment(pool, request.target)
    if source.id == environment.id:
        raise BadInput(f"cannot clone {source.target} into itself")
    if "database" in request.elements and source.engine != environment.engine:
        raise BadInput(
            f"{source.target} runs {source.engine} but {environment.target} runs "
            f"{environment.engine}; clone the files only (--files-only), or between "
            "environments of the same engine",
        )
    pinned = request
    if request.keep_snapshot:
        now = datetime.now(UTC).replace(microsecond=0)
        pinned = replace(
            request,
            snapshot_backup_id=new_backup_id(now, uuid.uuid4()),
            snapshot_created_at=now.isoformat(),
        )
    return Prepared(CLONE, environment, to_params(pinned), asked=to_params(request))
