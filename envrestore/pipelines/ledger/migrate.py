"""Numbered `.sql` migrations, applied once each, under an advisory lock.

Running `envrestore db migrate` twice, or from two hosts at once, is safe: the
lock serialises the runs and `schema_migrations` records what is applied.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import asyncpg
import structlog

from envrestore.pipelines.ledger.queries import sql

log = structlog.get_logger(__name__)

_FILE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
# An arbitrary constant: the advisory lock key for migrations.
_LOCK_KEY = 0x656E7672  # "envr"


@dataclass(frozen=True)
class Migration:
    """One numbered migration file."""

    version: int
    name: str
    sql: str


def available_migrations() -> list[Migration]:
    """Every migration shipped with the package, in order."""
    folder = resources.files("envrestore.pipelines.ledger").joinpath("sql/migrations")
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a number: {versions}")
    return found


async def migrate(conn: asyncpg.Connection) -> list[Migration]:
    """Apply the migrations not applied yet; returns those applied now."""
    applied_now: list[Migration] = []
    await conn.execute(sql("lock_migrations"), _LOCK_KEY)
    try:
        await conn.execute(sql("create_schema_migrations"))
        done = {row["version"] for row in await conn.fetch(sql("applied_migrations"))}
        for migration in available_migrations():
            if migration.version in done:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(sql("record_migration"), migration.version, migration.name)
            log.info("ledger.migrated", version=migration.version, name=migration.name)
            applied_now.append(migration)
    finally:
        await conn.execute(sql("unlock_migrations"), _LOCK_KEY)
    return applied_now
