"""Rollback points as an operator sees them: what each keeps, its size, and the cap.

A point keeps the replaced database (MariaDB: a database of its own holding the
old tables; PostgreSQL: the old database renamed) and the replaced files and
code trees beside the live ones (`pipelines.trees`). Their sizes are measured
once, when the point is made, and stored on its row, so `rollback list` and
ENVRESTORE_ROLLBACK_MAX_BYTES never walk trees or ask servers each time.
Dropping a point (by hand, by expiry or by the cap) is always the same
`expire_rollback` job, which takes the environment's lease like any other job.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import stat
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import structlog

from envrestore.pipelines.dsn import Dsn
from envrestore.pipelines.errors import Conflict, EnvrestoreError, NotFound
from envrestore.pipelines.ledger.queries import sql
from envrestore.pipelines.registry import (
    Environment,
    check_name,
    get_environment,
    get_environment_by_id,
    parse_target,
    refuse_if_busy,
)

if TYPE_CHECKING:
    from envrestore.config.settings import Settings
    from envrestore.pipelines.jobs.runtime import Runtime
    from envrestore.pipelines.jobs.submit import Submitted
    from envrestore.pipelines.producer import Producer

log = structlog.get_logger(__name__)

#: The idempotency key of a point's expiry job: the reconciler, the cap and
#: `rollback drop` all ask for the same job, so a point is dropped once.
EXPIRY_KEY = "expire-rollback:{job_id}"


@dataclass(frozen=True)
class RollbackPoint:
    """One kept rollback point, as `rollback list` shows it."""

    job_id: uuid.UUID
    environment_id: int
    site: str
    env: str
    elements: tuple[str, ...]
    created_at: datetime
    expires_at: datetime
    #: Bytes on disk of the kept files and code trees (None: not measured).
    disk_bytes: int | None
    #: Bytes of the kept database as its server reports them (None: not measured).
    db_bytes: int | None
    details: dict[str, Any]

    @property
    def target(self) -> str:
        return f"{self.site}.{self.env}"

    @property
    def total_bytes(self) -> int:
        return (self.disk_bytes or 0) + (self.db_bytes or 0)

    @classmethod
    def from_row(cls, row: Any) -> RollbackPoint:
        details: dict[str, Any] = dict(row["details"])
        return cls(
            job_id=row["job_id"],
            environment_id=row["environment_id"],
            site=row["site"],
            env=row["env"],
            elements=tuple(details.get("elements", ())),
            created_at=row["created_at"],
            expires_at=row["expires_at"],
            disk_bytes=row["disk_bytes"],
            db_bytes=row["db_bytes"],
            details=details,
        )

    def public(self) -> dict[str, Any]:
        """The `--json` form: ids whole, sizes in bytes, times in ISO 8601."""
        return {
            "job_id": str(self.job_id),
            "target": self.target,
            "elements": list(self.elements),
            "disk_bytes": self.disk_bytes,
            "db_bytes": self.db_bytes,
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
        }


# ---------------------------------------------------------------- measuring


def tree_bytes(root: Path) -> int:
    """Bytes a tree occupies on disk (allocated blocks), each inode counted once.

    Symbolic links are not followed; a missing tree is 0 (already deleted).
    """
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = [root]
    while stack:
        path = stack.pop()
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen:
            continue
        seen.add(key)
        total += st.st_blocks * 512
        if stat.S_ISDIR(st.st_mode):
            try:
                with os.scandir(path) as entries:
                    stack.extend(Path(entry.path) for entry in entries)
            except (FileNotFoundError, NotADirectoryError):
                continue
    return total


async def database_bytes(dsn: Dsn, name: str, *, settings: Settings | None = None) -> int:
    """The size of database `name` on the DSN's server (0 when it no longer exists).

    MariaDB: data and index length of its tables (information_schema);
    PostgreSQL: pg_database_size of the kept database.
    """
    if dsn.engine == "mariadb":
        from envrestore.pipelines.engines.mariadb import MariaDbEngine
        from envrestore.pipelines.engines.mariadb_sql import lit

        engine = MariaDbEngine(bin_dir=settings.mariadb_bin_dir if settings else None)
        rows = await engine.query(
            dsn.with_database("information_schema"),
            "SELECT COALESCE(SUM(data_length + index_length), 0) FROM information_schema.tables "
            f"WHERE table_schema = {lit(name)};",
        )
        return int(rows[0][0]) if rows and rows[0] and rows[0][0] not in ("", "NULL") else 0
    from envrestore.pipelines.engines.postgres import PostgresEngine

    pg = PostgresEngine(bin_dir=settings.pg_bin_dir if settings else None)
    conn = await pg.connect(dsn.with_database(dsn.params.get("maintenance_db", "postgres")))
    try:
        size = await conn.fetchval(
            "SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) "
            "THEN pg_database_size($1::name) ELSE 0 END",
            name,
        )
    finally:
        await conn.close()
    return int(size or 0)


async def measure(
    environment: Environment, details: dict[str, Any], *, settings: Settings | None = None
) -> tuple[int, int]:
    """(disk bytes of the kept trees, bytes of the kept database) of one point."""
    disk = 0
    db = 0
    for element in details.get("elements", ()):
        entry = details.get(element) or {}
        if element == "database":
            db = await database_bytes(environment.dsn, entry["rollback"], settings=settings)
        elif entry.get("rollback"):
            disk += await asyncio.to_thread(tree_bytes, Path(entry["rollback"]))
    return disk, db


async def record_sizes(
    pool: asyncpg.Pool,
    job_id: uuid.UUID,
    environment: Environment,
    details: dict[str, Any],
    *,
    settings: Settings | None = None,
) -> tuple[int, int]:
    """Measure a point and store its sizes on its row."""
    disk, db = await measure(environment, details, settings=settings)
    await pool.execute(sql("set_rollback_point_sizes"), job_id, disk, db)
    return disk, db


# ---------------------------------------------------------------- listing


async def list_points(
    pool: asyncpg.Pool, scope: str | None = None, *, settings: Settings | None = None
) -> list[RollbackPoint]:
    """Kept points of all, of SITE or of SITE.ENV, newest first per environment.

    A point not measured yet (made before sizes were recorded) is measured now, once.
    """
    site: str | None = None
    env: str | None = None
    if scope is not None:
        if "." in scope:
            await get_environment(pool, scope)  # NotFound names what is missing
            site, env = parse_target(scope)
        else:
            site = check_name("site", scope)
            if await pool.fetchrow(sql("get_site"), site) is None:
                raise NotFound(f"site {site!r} is not registered", site=site)
    points = [
        RollbackPoint.from_row(r) for r in await pool.fetch(sql("list_rollback_points"), site, env)
    ]
    measured: list[RollbackPoint] = []
    for point in points:
        if point.disk_bytes is None or point.db_bytes is None:
            point = await _measure_late(pool, point, settings=settings)
        measured.append(point)
    return measured


async def _measure_late(
    pool: asyncpg.Pool, point: RollbackPoint, *, settings: Settings | None
) -> RollbackPoint:
    try:
        environment = await get_environment_by_id(pool, point.environment_id)
        disk, db = await record_sizes(
            pool, point.job_id, environment, point.details, settings=settings
        )
    except (EnvrestoreError, OSError) as exc:  # listed as not measured ("?"), not a traceback
        message = exc.message if isinstance(exc, EnvrestoreError) else str(exc)
        log.warning("rollback_point.measure_failed", job_id=str(point.job_id), error=message)
        return point
    return dataclasses.replace(point, disk_bytes=disk, db_bytes=db)


# ---------------------------------------------------------------- dropping


async def check_droppable(pool: asyncpg.Pool, job_id: uuid.UUID) -> Environment:
    """The environment of a kept point, or the error a user sees.

    Refused while another job holds the environment's lease or is queued for
    it: dropping would otherwise wait behind that job, and a queued rollback
    may be about to use the point.
    """
    point = await pool.fetchrow(sql("get_rollback_point"), job_id)
    if point is None:
        job = await pool.fetchrow(sql("get_job"), job_id)
        if job is None:
            raise NotFound(f"job {job_id} does not exist", job_id=str(job_id))
        raise NotFound(f"job {job_id} ({job['kind']}) left no rollback point", job_id=str(job_id))
    if point["status"] != "kept":
        raise Conflict(
            f"the rollback point of job {job_id} is already {point['status']}; nothing to drop",
            job_id=str(job_id),
        )
    environment = await get_environment_by_id(pool, point["environment_id"])
    await refuse_if_busy(pool, environment, doing="dropping a rollback point of")
    return environment


async def submit_drop(producer: Producer, job_id: uuid.UUID, *, key: str | None) -> Submitted:
    """Queue an expiry job for the point; `key` None: a new job (an operator's drop after
    an earlier one failed must not get that failed job back)."""
    from envrestore.pipelines.requests import ExpireRollbackRequest

    return await producer.submit(ExpireRollbackRequest(str(job_id)), idempotency_key=key)


# ---------------------------------------------------------------- the cap


def over_cap(sizes: list[tuple[uuid.UUID, int]], cap: int) -> list[uuid.UUID]:
    """Which points to drop, given (job id, bytes) newest first: the oldest first, until
    the rest fit under `cap`. The newest point is always kept, so the restore that just
    switched can be undone even when it alone is larger than the cap. 0: no cap."""
    if cap <= 0:
        return []
    total = 0
    for index, (_job_id, size) in enumerate(sizes):
        total += size
        if index > 0 and total > cap:
            return [job_id for job_id, _ in sizes[index:]]
    return []


async def points_over_cap(pool: asyncpg.Pool, environment_id: int, cap: int) -> list[uuid.UUID]:
    rows = await pool.fetch(sql("kept_rollback_points_of"), environment_id)
    sizes = [(r["job_id"], (r["disk_bytes"] or 0) + (r["db_bytes"] or 0)) for r in rows]
    return over_cap(sizes, cap)


async def point_made(
    runtime: Runtime, job_id: uuid.UUID, environment: Environment
) -> dict[str, Any]:
    """After a switch (or a rollback) kept a point: record its sizes, then enforce the cap.

    Never fails the step that calls it: the content is already switched, and a
    point without sizes is measured on its first listing. Points over the cap
    get their expiry job, which waits for this job's lease and runs after it.
    """
    from envrestore.pipelines.jobs.principal import Principal
    from envrestore.pipelines.producer import Producer

    settings = runtime.settings
    outcome: dict[str, Any] = {}
    try:
        row = await runtime.pool.fetchrow(sql("get_rollback_point"), job_id)
        if row is None:
            return outcome
        disk, db = await record_sizes(
            runtime.pool, job_id, environment, dict(row["details"]), settings=settings
        )
        outcome.update(disk_bytes=disk, db_bytes=db)
        cap = settings.rollback_max_bytes
        dropped = await points_over_cap(runtime.pool, environment.id, cap)
        if dropped:
            producer = Producer(
                runtime.pool, settings, runtime.store, Principal.system("rollback-cap")
            )
            for old in dropped:
                await submit_drop(producer, old, key=EXPIRY_KEY.format(job_id=old))
            outcome["dropped_over_cap"] = [str(d) for d in dropped]
            log.info(
                "rollback_point.over_cap",
                target=environment.target,
                cap=cap,
                dropped=outcome["dropped_over_cap"],
            )
    except Exception as exc:  # the switch is done: a ledger blip must not fail its step
        message = exc.message if isinstance(exc, EnvrestoreError) else str(exc) or repr(exc)
        log.warning("rollback_point.size_failed", job_id=str(job_id), error=message, exc_info=True)
        outcome["size_error"] = message
    return outcome
