"""The producer side of backups: checks before queueing, and listing.

Everything a user can get wrong is checked here, before a job exists, so a
mistake is one clear line instead of a failed job; the steps check again,
since the world can change between queueing and running.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from config.settings import Settings
from pipelines.archives.git import ensure_repo
from pipelines.backup.job import BACKUP
from pipelines.backup.naming import new_backup_id
from pipelines.engines.base import engine_for
from pipelines.errors import BadInput, NotFound
from pipelines.jobs.submit import Submitted, submit_job
from pipelines.ledger.queries import sql
from pipelines.objectstore import ObjectStore
from pipelines.registry import Environment, get_environment

BACKUP_KINDS = ("manual", "automatic")


async def preflight(environment: Environment, settings: Settings, store: ObjectStore) -> None:
    """Refuse, with one clear line, what would make the backup fail."""
    if not environment.files_dir.is_dir():
        raise BadInput(
            f"files directory {environment.files_dir} of {environment.target} does not exist "
            "or is not a directory",
            path=str(environment.files_dir),
        )
    await ensure_repo(environment.code_dir)
    dsn = environment.dsn
    await engine_for(dsn, settings).check(dsn)
    await store.check()


async def create_backup(
    pool: asyncpg.Pool,
    settings: Settings,
    store: ObjectStore,
    target: str,
    *,
    kind: str = "manual",
    keep_days: int | None = None,
    idempotency_key: str | None = None,
    check: bool = True,
) -> Submitted:
    """Queue a backup of `SITE.ENV`; returns its job."""
    if kind not in BACKUP_KINDS:
        raise BadInput(f"backup kind {kind!r} is not one of {', '.join(BACKUP_KINDS)}")
    keep = settings.backup_keep_days if keep_days is None else keep_days
    if keep < 1:
        raise BadInput(f"--keep-for must be at least 1 day, not {keep}")
    environment = await get_environment(pool, target)
    if check:
        await preflight(environment, settings, store)
    now = datetime.now(UTC).replace(microsecond=0)
    job_hint = uuid.uuid4()
    params = {
        "kind": kind,
        "keep_days": keep,
        "created_at": now.isoformat(),
        "backup_id": new_backup_id(now, job_hint),
    }
    return await submit_job(
        pool,
        BACKUP,
        params,
        environment=environment,
        max_attempts=settings.max_attempts,
        idempotency_key=idempotency_key,
        idempotency_scope=settings.idempotency_scope,
        fingerprint_params={"kind": kind, "keep_days": keep},
    )


@dataclass(frozen=True)
class BackupRecord:
    """A backup as listed."""

    id: str
    site: str
    env: str
    kind: str
    engine: str
    git_head: str | None
    manifest_key: str
    job_id: uuid.UUID | None
    created_at: datetime
    expires_at: datetime | None
    parts: list[dict[str, Any]]

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> BackupRecord:
        return cls(
            id=row["id"],
            site=row["site"],
            env=row["env"],
            kind=row["kind"],
            engine=row["engine"],
            git_head=row["git_head"],
            manifest_key=row["manifest_key"],
            job_id=row["job_id"],
            created_at=row["created_at"],
            expires_at=row["expires_at"],
            parts=list(row["parts"]),
        )

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "site": self.site,
            "env": self.env,
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "kind": self.kind,
            "engine": self.engine,
            "git_head": self.git_head,
            "manifest_key": self.manifest_key,
            "job_id": str(self.job_id) if self.job_id else None,
            "parts": self.parts,
        }


async def list_backups(pool: asyncpg.Pool, target: str) -> list[BackupRecord]:
    """Backups of `SITE.ENV`, newest first."""
    environment = await get_environment(pool, target)
    rows = await pool.fetch(sql("list_backups"), environment.id)
    return [BackupRecord.from_row(row) for row in rows]


async def get_backup(pool: asyncpg.Pool, backup_id: str) -> BackupRecord:
    row = await pool.fetchrow(sql("get_backup"), backup_id)
    if row is None:
        raise NotFound(f"backup {backup_id!r} does not exist", backup_id=backup_id)
    return BackupRecord.from_row(row)
