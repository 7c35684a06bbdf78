"""The producer side of backups: checks before queueing, and listing.

Everything a user can get wrong is checked here, before a job exists, so a
mistake is one clear line instead of a failed job; the steps check again,
since the world can change between queueing and running.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import asyncpg

from envrestore.config.settings import Settings
from envrestore.pipelines.archives.git import ensure_repo
from envrestore.pipelines.backup.job import BACKUP
from envrestore.pipelines.backup.naming import new_backup_id
from envrestore.pipelines.engines.base import engine_for
from envrestore.pipelines.errors import BadInput, NotFound
from envrestore.pipelines.jobs.prepared import Prepared
from envrestore.pipelines.ledger.queries import sql
from envrestore.pipelines.objectstore import ObjectStore
from envrestore.pipelines.registry import Environment, get_environment
from envrestore.pipelines.requests import ELEMENTS, BackupRequest, to_params

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


#: The longest a backup is kept (`--keep-for`, ENVRESTORE_BACKUP_KEEP_DAYS): 100 years.
MAX_KEEP_DAYS = 36500


async def prepare_backup(
    pool: asyncpg.Pool,
    settings: Settings,
    store: ObjectStore,
    request: BackupRequest,
    *,
    check: bool = True,
) -> Prepared:
    """Check a backup request; its id and time are fixed now (not part of the fingerprint)."""
    if request.backup_kind not in BACKUP_KINDS:
        raise BadInput(
            f"backup kind {request.backup_kind!r} is not one of {', '.join(BACKUP_KINDS)}"
        )
    keep = settings.backup_keep_days if request.keep_days is None else request.keep_days
    if not 1 <= keep <= MAX_KEEP_DAYS:
        # Past it the expiry date overflows (after the whole backup ran, in record_backup).
        raise BadInput(f"--keep-for must be 1 to {MAX_KEEP_DAYS} days (100 years), not {keep}")
    environment = await get_environment(pool, request.target)
    if check:
        await preflight(environment, settings, store)
    now = datetime.now(UTC).replace(microsecond=0)
    asked = replace(request, keep_days=keep, backup_id=None, created_at=None)
    pinned = replace(asked, created_at=now.isoformat(), backup_id=new_backup_id(now, uuid.uuid4()))
    return Prepared(BACKUP, environment, to_params(pinned), asked=to_params(asked))


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
    #: 'ready', or 'deleting' once a delete job has marked it (no new job may read it).
    status: str = "ready"
    deleting_job_id: uuid.UUID | None = None

    @property
    def elements(self) -> list[str]:
        """The parts this backup holds (a `--element` backup holds fewer than three)."""
        held = {p["part"] for p in self.parts}
        return [e for e in ELEMENTS if e in held]

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
            status=row["status"],
            deleting_job_id=row["deleting_job_id"],
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
            "elements": self.elements,
            "status": self.status,
            "deleting_job_id": str(self.deleting_job_id) if self.deleting_job_id else None,
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


async def latest_backup(pool: asyncpg.Pool, environment: Environment) -> BackupRecord:
    """The newest backup of `environment`, or NotFound with how to make one."""
    backup_id = await pool.fetchval(sql("latest_backup_id"), environment.id)
    if backup_id is None:
        raise NotFound(
            f"{environment.target} has no backups yet; create one with: "
            f"envrestore backup create {environment.target}",
            target=environment.target,
        )
    return await get_backup(pool, backup_id)
