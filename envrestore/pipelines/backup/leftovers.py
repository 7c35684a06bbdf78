"""What the orphan sweep frees besides backup prefixes: unfinished uploads and stale import uploads.

* An unfinished S3 multipart upload under `backups/<site>/<env>/<id>/` (a backup
  job killed or cancelled mid-upload) is invisible to `list`, yet its parts take
  storage until aborted. It is aborted once initiated more than the minimum age
  ago and no unfinished job names its backup id. Whether the backup has a row
  does not matter: a finished backup never resumes an old upload, so one left by
  an attempt that died before a retry succeeded is garbage too.
* `envrestore import --file` uploads to `staging/uploads/<identity>/<name>`
  (objects, or multipart uploads kept open for a resume). The import job
  deletes what it read when it ends (`release_fetched`); an upload whose import
  was never submitted, or whose worker died, stays. Such an object or
  unfinished upload goes once older than the minimum age and no unfinished job
  names its key.

Nothing else in the bucket is judged. Every candidate is checked again just
before it goes: a job may have been queued meanwhile.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg
import structlog

from envrestore.pipelines.backup.delete import BACKUPS_PREFIX
from envrestore.pipelines.ledger.queries import sql
from envrestore.pipelines.objectstore import ObjectStore, PendingUpload
from envrestore.pipelines.requests import UPLOADS_PREFIX

log = structlog.get_logger(__name__)


def backup_id_of(key: str) -> tuple[str, str] | None:
    """(prefix, id) of a key shaped `backups/<site>/<env>/<id>/<name>`, else None."""
    parts = key.split("/")
    if len(parts) < 5 or parts[0] != BACKUPS_PREFIX.rstrip("/") or not all(parts[1:4]):
        return None
    return "/".join(parts[:4]) + "/", parts[3]


async def named_by_unfinished_jobs(pool: asyncpg.Pool, names: Iterable[str]) -> set[str]:
    """Which of `names` (backup ids, upload keys) a queued or running job's parameters hold."""
    wanted = sorted(set(names))
    if not wanted:
        return set()
    rows = await pool.fetch(sql("active_job_params_naming"), wanted)
    return {str(r["backup_id"]) for r in rows}


def _old(initiated: datetime | None, now: datetime, min_age: timedelta) -> bool:
    """A store that does not say when an upload began never has it judged old."""
    return initiated is not None and now - initiated >= min_age


async def abandoned_backup_uploads(
    pool: asyncpg.Pool, store: ObjectStore, *, now: datetime, min_age: timedelta
) -> list[PendingUpload]:
    """Unfinished multipart uploads of backup keys, old, whose id no unfinished job names."""
    candidates: list[tuple[PendingUpload, str]] = []
    async for upload in store.list_pending_uploads(BACKUPS_PREFIX):
        found = backup_id_of(upload.key)
        if found is not None and _old(upload.initiated, now, min_age):
            candidates.append((upload, found[1]))
    busy = await named_by_unfinished_jobs(pool, (backup_id for _, backup_id in candidates))
    return sorted(
        (upload for upload, backup_id in candidates if backup_id not in busy),
        key=lambda u: (u.key, u.upload_id),
    )


@dataclass(frozen=True)
class StaleUploads:
    """Import uploads no unfinished job reads: finished objects and unfinished multipart uploads."""

    keys: list[str]
    pending: list[PendingUpload]


async def stale_import_uploads(
    pool: asyncpg.Pool, store: ObjectStore, *, now: datetime, min_age: timedelta
) -> StaleUploads:
    """Everything under `staging/uploads/` older than `min_age` that no unfinished job names."""
    keys = [
        info.key async for info in store.list(UPLOADS_PREFIX) if now - info.last_modified >= min_age
    ]
    pending = [
        upload
        async for upload in store.list_pending_uploads(UPLOADS_PREFIX)
        if upload.key.startswith(UPLOADS_PREFIX) and _old(upload.initiated, now, min_age)
    ]
    busy = await named_by_unfinished_jobs(pool, [*keys, *(u.key for u in pending)])
    return StaleUploads(
        keys=sorted(k for k in keys if k not in busy),
        pending=sorted(
            (u for u in pending if u.key not in busy), key=lambda u: (u.key, u.upload_id)
        ),
    )


async def abort_backup_upload(
    pool: asyncpg.Pool, store: ObjectStore, upload: PendingUpload
) -> bool:
    """Abort it unless a job naming its backup id appeared meanwhile; whether it was aborted."""
    found = backup_id_of(upload.key)
    if found is None or await named_by_unfinished_jobs(pool, [found[1]]):
        return False
    await store.abort_upload(upload.key, upload.upload_id)
    log.info("backup.orphan_upload_aborted", key=upload.key, upload_id=upload.upload_id)
    return True


async def remove_import_upload(
    pool: asyncpg.Pool, store: ObjectStore, key: str, *, now: datetime, min_age: timedelta
) -> bool:
    """Delete it unless a job now reads it or it was uploaded again meanwhile."""
    if await named_by_unfinished_jobs(pool, [key]):
        return False
    info = await store.head(key)
    if info is None or now - info.last_modified < min_age:
        return False
    await store.delete(key)
    log.info("import.stale_upload_removed", key=key, size=info.size)
    return True


async def abort_import_upload(
    pool: asyncpg.Pool, store: ObjectStore, upload: PendingUpload
) -> bool:
    """Abort it unless a job naming its key appeared meanwhile."""
    if await named_by_unfinished_jobs(pool, [upload.key]):
        return False
    await store.abort_upload(upload.key, upload.upload_id)
    log.info("import.stale_upload_aborted", key=upload.key, upload_id=upload.upload_id)
    return True
