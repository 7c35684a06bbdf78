"""The end of a backup's life: expiry becomes delete jobs; the orphan sweep removes leftovers.

Both are called by the scheduler's leader (and the sweep by `envrestore backup
sweep`); both are safe to run twice or from two processes: expiry through
idempotency keys, the sweep because deleting a missing key or aborting a gone
upload is fine and it never touches a prefix that has a ledger row, nor
anything an unfinished job names (see `leftovers` for uploads).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import asyncpg
import structlog

from envrestore.pipelines.backup import leftovers
from envrestore.pipelines.backup.delete import BACKUPS_PREFIX
from envrestore.pipelines.backup.leftovers import backup_id_of
from envrestore.pipelines.errors import PermanentError
from envrestore.pipelines.ledger.queries import sql
from envrestore.pipelines.objectstore import ObjectStore, PendingUpload
from envrestore.pipelines.producer import Producer
from envrestore.pipelines.requests import DeleteBackupRequest

log = structlog.get_logger(__name__)

#: The default age (no settings at hand) before a prefix without a row is an orphan.
DEFAULT_ORPHAN_MIN_AGE = timedelta(days=1)
EXPIRE_BATCH = 100


async def expire_backups(pool: asyncpg.Pool, producer: Producer, *, now: datetime) -> int:
    """Submit one delete job per backup whose expires_at <= now; how many were new.

    The idempotency key `expire-backup:<id>` makes a second call (another tick,
    another scheduler) find the same job instead of queueing a second one. Once
    a delete of the backup has ended and the backup is still there (a failed or
    cancelled delete gave it back 'ready' or left it 'deleting'), the next job is
    keyed by the one that ended, so no expired backup stays forever. Every due
    row is visited, page by page: rows that give no new job cannot starve the rest.
    """
    submitted = 0
    after: tuple[datetime, str] | None = None
    while True:
        rows = await pool.fetch(
            sql("backups_due_for_expiry"),
            now,
            EXPIRE_BATCH,
            after[0] if after else None,
            after[1] if after else None,
        )
        for row in rows:
            if await _expire_one(producer, row):
                submitted += 1
        if len(rows) < EXPIRE_BATCH:
            return submitted
        after = (rows[-1]["expires_at"], rows[-1]["id"])


async def _expire_one(producer: Producer, row: asyncpg.Record) -> bool:
    """Queue the delete of one due backup; whether a new job was made."""
    backup_id: str = row["id"]
    key = f"expire-backup:{backup_id}"
    if row["last_delete_id"] is not None:  # an earlier delete ended, the backup is still here
        key += f":after-{row['last_delete_id']}"
    try:
        result = await producer.submit(
            DeleteBackupRequest(row["target"], backup_id, reason="expired"), idempotency_key=key
        )
    except PermanentError as exc:
        # Deleted or taken by a manual delete meanwhile: not this tick's business.
        log.info("backup.expiry_skipped", backup_id=backup_id, reason=str(exc))
        return False
    if result.created:
        log.info("backup.expiry_queued", backup_id=backup_id, job_id=str(result.job_id))
    return result.created


@dataclass
class _Prefix:
    """What the store holds under one `backups/<site>/<env>/<id>/`."""

    keys: list[str] = field(default_factory=list)
    newest: datetime | None = None


async def find_orphans(
    pool: asyncpg.Pool, store: ObjectStore, *, now: datetime, min_age: timedelta
) -> dict[str, list[str]]:
    """prefix → its keys, for each backup prefix with no ledger row, no unfinished job
    naming its id, and no object younger than `min_age`."""
    seen: dict[str, _Prefix] = defaultdict(_Prefix)
    ids: dict[str, str] = {}
    async for info in store.list(BACKUPS_PREFIX):
        found = backup_id_of(info.key)
        if found is None:
            continue  # not a backup's object: never ours to judge
        prefix, backup_id = found
        entry = seen[prefix]
        entry.keys.append(info.key)
        if entry.newest is None or info.last_modified > entry.newest:
            entry.newest = info.last_modified
        ids[prefix] = backup_id
    if not seen:
        return {}
    all_ids = sorted(set(ids.values()))
    recorded = {r["id"] for r in await pool.fetch(sql("backup_ids_in"), all_ids)}
    # A backup job writes its parts before its row exists (record_backup is last).
    writing = {r["backup_id"] for r in await pool.fetch(sql("active_job_params_naming"), all_ids)}
    orphans: dict[str, list[str]] = {}
    for prefix, entry in seen.items():
        backup_id = ids[prefix]
        if backup_id in recorded or backup_id in writing:
            continue
        if entry.newest is not None and now - entry.newest < min_age:
            continue
        orphans[prefix] = entry.keys
    return orphans


@dataclass(frozen=True)
class Swept:
    """What one sweep removed (or, in a dry run, would remove)."""

    #: Backup prefix → its keys.
    prefixes: dict[str, list[str]] = field(default_factory=dict)
    #: Unfinished multipart uploads under `backups/` (see `leftovers`).
    backup_uploads: list[PendingUpload] = field(default_factory=list)
    #: Import uploads under `staging/uploads/`: finished objects, unfinished uploads.
    upload_keys: list[str] = field(default_factory=list)
    upload_pending: list[PendingUpload] = field(default_factory=list)

    @property
    def total(self) -> int:
        return (
            len(self.prefixes)
            + len(self.backup_uploads)
            + len(self.upload_keys)
            + len(self.upload_pending)
        )


async def sweep_leftovers(
    pool: asyncpg.Pool,
    store: ObjectStore,
    *,
    now: datetime,
    min_age: timedelta = DEFAULT_ORPHAN_MIN_AGE,
    dry_run: bool = False,
) -> Swept:
    """Remove orphaned backup prefixes, abandoned multipart uploads and stale import uploads.

    What a cancelled or killed backup job, or an import never submitted, left
    behind. Only keys under `backups/<site>/<env>/<id>/` and `staging/uploads/`
    are considered; each one is checked again just before it goes (a row or a
    job may have appeared meanwhile), and the result holds only what went.
    """
    orphans = await find_orphans(pool, store, now=now, min_age=min_age)
    backup_uploads = await leftovers.abandoned_backup_uploads(pool, store, now=now, min_age=min_age)
    stale = await leftovers.stale_import_uploads(pool, store, now=now, min_age=min_age)
    if dry_run:
        for prefix, keys in sorted(orphans.items()):
            log.info("backup.orphan_found", prefix=prefix, objects=len(keys))
        return Swept(orphans, backup_uploads, stale.keys, stale.pending)
    swept = Swept()
    for prefix, keys in sorted(orphans.items()):
        backup_id = prefix.rstrip("/").rsplit("/", 1)[1]
        if await pool.fetchval(sql("backup_ids_in"), [backup_id]) is not None:
            continue
        if await leftovers.named_by_unfinished_jobs(pool, [backup_id]):
            continue
        count = await store.delete_prefix(prefix)
        log.info("backup.orphan_removed", prefix=prefix, objects=count)
        swept.prefixes[prefix] = keys
    for upload in backup_uploads:
        if await leftovers.abort_backup_upload(pool, store, upload):
            swept.backup_uploads.append(upload)
    for key in stale.keys:
        if await leftovers.remove_import_upload(pool, store, key, now=now, min_age=min_age):
            swept.upload_keys.append(key)
    for upload in stale.pending:
        if await leftovers.abort_import_upload(pool, store, upload):
            swept.upload_pending.append(upload)
    return swept


async def sweep_orphans(
    pool: asyncpg.Pool,
    store: ObjectStore,
    *,
    now: datetime,
    min_age: timedelta = DEFAULT_ORPHAN_MIN_AGE,
    dry_run: bool = False,
) -> int:
    """`sweep_leftovers` for the scheduler: how many prefixes, uploads and objects went."""
    swept = await sweep_leftovers(pool, store, now=now, min_age=min_age, dry_run=dry_run)
    return swept.total
