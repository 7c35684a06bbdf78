"""Deleting a backup: marked under its row lock, kept while a job reads it, objects then rows.

mark_deleting → wait_readers → delete_objects → forget_backup; abandon_delete on failure.

* `mark_deleting` sets the row to 'deleting' under `SELECT … FOR UPDATE`: from
  then on a new restore, link or "latest" no longer picks the backup.
* `wait_readers` waits (polling, the heartbeat keeping the attempt alive) until no
  unfinished job names the backup in its parameters; it can still be cancelled.
* `delete_objects` removes every object under the backup's prefix, parts first and
  the manifest last; it is the point of no return (cancel is refused from here).
* `forget_backup` deletes the ledger rows (parts and links cascade).

A worker dying anywhere leaves the row 'deleting' (never picked by a new job) and
the step is resumed: deletes of missing keys succeed, so every step may run twice.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from envrestore.pipelines.backup.service import get_backup
from envrestore.pipelines.errors import BadInput, Conflict
from envrestore.pipelines.failpoints import failpoint
from envrestore.pipelines.jobs.cancel import enter_irreversible
from envrestore.pipelines.jobs.context import StepContext
from envrestore.pipelines.jobs.fingerprint import request_fingerprint
from envrestore.pipelines.jobs.kinds import JobKind
from envrestore.pipelines.jobs.model import Plan, StepSpec
from envrestore.pipelines.jobs.prepared import SYSTEM_SCOPE, Prepared
from envrestore.pipelines.jobs.submit import Submitted
from envrestore.pipelines.ledger.queries import sql
from envrestore.pipelines.registry import get_environment, parse_target
from envrestore.pipelines.requests import DeleteBackupRequest, to_params

BACKUPS_PREFIX = "backups/"


def backup_prefix(site: str, env: str, backup_id: str) -> str:
    """`backups/<site>/<env>/<id>/`, refusing an id that would name another prefix."""
    if not backup_id or "/" in backup_id or backup_id in (".", ".."):
        raise BadInput(f"{backup_id!r} is not a backup id")
    return f"{BACKUPS_PREFIX}{site}/{env}/{backup_id}/"


async def prepare_delete(pool: asyncpg.Pool, request: DeleteBackupRequest) -> Prepared:
    """Check the backup exists, belongs to the target and is not being deleted already.

    The job has no environment: it must not take the environment's lease (a
    restore of that environment from this very backup would wait for the delete
    that waits for it), and it touches only the object store and the ledger.
    """
    environment = await get_environment(pool, request.target)
    backup = await get_backup(pool, request.backup_id)
    if (backup.site, backup.env) != (environment.site, environment.env):
        raise BadInput(
            f"backup {backup.id} belongs to {backup.site}.{backup.env}, not {request.target}",
            backup_id=backup.id,
        )
    deleting = await pool.fetchval(sql("active_delete_of"), backup.id)
    if deleting is not None:
        raise Conflict(
            f"backup {backup.id} is already being deleted by job {deleting}; "
            f"follow it with: envrestore job show {deleting} --wait",
            backup_id=backup.id,
            job_id=str(deleting),
        )
    scope = SYSTEM_SCOPE if request.reason == "expired" else None
    return Prepared(DELETE_BACKUP, None, to_params(request), idempotency_scope=scope)


async def earlier_delete(
    pool: asyncpg.Pool, request: DeleteBackupRequest, *, key: str, default_scope: str
) -> Submitted | None:
    """The job an identical earlier request under idempotency `key` made, else None.

    Looked up before `prepare_delete`, which refuses a backup being deleted (or
    gone): a retry of the request that started the delete gets its job back, as
    with every other kind. Another key, or another request, still meets the
    refusal. The fingerprint is computed as `submit_job` stored it (no target,
    the parameters as asked).
    """
    scope = SYSTEM_SCOPE if request.reason == "expired" else default_scope
    row = await pool.fetchrow(sql("get_idempotency_key"), scope, key)
    if row is None:
        return None
    if row["fingerprint"] != request_fingerprint(DELETE_BACKUP.name, None, to_params(request)):
        return None
    return Submitted(row["job_id"], created=False)


def _request(ctx: StepContext) -> DeleteBackupRequest:
    return DeleteBackupRequest.from_params(ctx.job.params)


def _prefix(request: DeleteBackupRequest) -> str:
    site, env = parse_target(request.target)
    return backup_prefix(site, env, request.backup_id)


async def mark_deleting(ctx: StepContext) -> dict[str, Any]:
    """Mark the backup 'deleting' under its row lock, so no new job starts reading it."""
    request = _request(ctx)
    async with ctx.runtime.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(sql("lock_backup"), request.backup_id)
        if row is None:
            return {"backup_id": request.backup_id, "already_gone": True}
        owner = row["deleting_job_id"]
        if row["status"] == "deleting" and owner not in (None, ctx.job.id):
            active = await conn.fetchval(sql("job_is_active"), owner)
            if active:
                raise Conflict(
                    f"backup {request.backup_id} is already being deleted by job {owner}",
                    job_id=str(owner),
                )
        await conn.execute(sql("mark_backup_deleting"), request.backup_id, ctx.job.id)
    await ctx.event("backup.deleting", backup_id=request.backup_id, reason=request.reason)
    return {"backup_id": request.backup_id, "reason": request.reason}


async def _wait_for_readers(ctx: StepContext, backup_id: str) -> list[str]:
    """Sleep until no unfinished job names the backup; returns the jobs waited for."""
    waited: list[str] = []
    while True:
        rows = await ctx.runtime.pool.fetch(sql("backup_readers"), backup_id, ctx.job.id)
        if not rows:
            return waited
        readers = [str(r["id"]) for r in rows]
        fresh = [r for r in readers if r not in waited]
        if fresh:
            waited.extend(fresh)
            await ctx.event("backup.kept", backup_id=backup_id, readers=readers)
            ctx.log.info("backup.kept_while_read", backup_id=backup_id, readers=readers)
        await asyncio.sleep(ctx.settings.backup_delete_poll_seconds)


async def wait_readers(ctx: StepContext) -> dict[str, Any]:
    """Keep the backup while a queued or running job reads it (cancellable here)."""
    request = _request(ctx)
    waited = await _wait_for_readers(ctx, request.backup_id)
    return {"waited_for": waited}


async def delete_objects(ctx: StepContext) -> dict[str, Any]:
    """Every object under the backup's prefix: parts first, manifest.json last."""
    request = _request(ctx)
    prefix = _prefix(request)
    row = await ctx.runtime.pool.fetchrow(sql("get_backup"), request.backup_id)
    if row is not None and not str(row["manifest_key"]).startswith(prefix):
        raise BadInput(
            f"backup {request.backup_id}: its manifest {row['manifest_key']} is not under "
            f"{prefix}; refusing to delete anything",
            backup_id=request.backup_id,
        )
    # A job that slipped in between the mark and now (it was being queued) is waited for too.
    await _wait_for_readers(ctx, request.backup_id)
    await enter_irreversible(ctx)
    keys = [info.key async for info in ctx.store.list(prefix)]
    manifests = [k for k in keys if k.endswith("/manifest.json")]
    removed = 0
    for key in [k for k in keys if k not in manifests] + manifests:
        await ctx.store.delete(key)
        removed += 1
        await failpoint(ctx.settings, "delete_objects.after_each")
    removed += await ctx.store.delete_prefix(prefix)  # anything that landed meanwhile
    await ctx.event("backup.objects_deleted", prefix=prefix, objects=removed)
    return {"prefix": prefix, "objects_removed": removed}


async def forget_backup(ctx: StepContext) -> dict[str, Any]:
    """The ledger rows last: the backup, its parts and its links."""
    request = _request(ctx)
    deleted = await ctx.runtime.pool.execute(sql("delete_backup_rows"), request.backup_id)
    await ctx.event("backup.deleted", backup_id=request.backup_id, reason=request.reason)
    ctx.log.info("backup.deleted", backup_id=request.backup_id, reason=request.reason)
    return {"backup_id": request.backup_id, "rows_deleted": deleted != "DELETE 0"}


async def abandon_delete(ctx: StepContext) -> dict[str, Any]:
    """After a failure or cancel: a backup whose objects were never touched is ready again.

    Once a delete of the backup (this one or an earlier one that ended midway)
    has passed `delete_objects`' irreversible checkpoint, the row stays 'deleting'
    (its objects may be partly gone); `backup delete` again finishes the work.
    Before it (still waiting for readers) nothing was removed: ready again.
    """
    request = _request(ctx)
    passed = sql("backup_delete_passed_irreversible")
    if await ctx.runtime.pool.fetchval(passed, request.backup_id):
        return {"restored": False}
    await ctx.runtime.pool.execute(sql("unmark_backup_deleting"), request.backup_id, ctx.job.id)
    await ctx.event("backup.delete_abandoned", backup_id=request.backup_id)
    return {"restored": True}


DELETE_BACKUP = JobKind(
    name=DeleteBackupRequest.kind,
    plan=Plan(
        (
            StepSpec("mark_deleting"),
            StepSpec("wait_readers", depends_on=("mark_deleting",)),
            StepSpec("delete_objects", depends_on=("wait_readers",)),
            StepSpec("forget_backup", depends_on=("delete_objects",)),
            StepSpec("abandon_delete", on_failure=True),
        )
    ),
    steps={
        "mark_deleting": mark_deleting,
        "wait_readers": wait_readers,
        "delete_objects": delete_objects,
        "forget_backup": forget_backup,
        "abandon_delete": abandon_delete,
    },
    irreversible_from="delete_objects",
)
