"""Snapshots of an environment's content, to compare before and after a restore."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from envrestore.pipelines.dsn import Dsn
from envrestore.pipelines.engines import engine_for
from tests.support.sites import git, tags_of, tree_digest


async def table_digest(dsn: Dsn) -> dict[str, str]:
    """table → sha256 of its rows in primary-key order (engine-independent text form)."""
    engine = engine_for(dsn)
    tables = await engine.list_tables(dsn)
    out: dict[str, str] = {}
    if dsn.engine == "mariadb":
        for table in tables:
            text = await engine.query(  # type: ignore[attr-defined]
                dsn, f"SELECT * FROM `{table}` ORDER BY 1"
            )
            out[table] = hashlib.sha256(str(text).encode()).hexdigest()
    else:
        conn = await engine.connect(dsn)  # type: ignore[attr-defined]
        try:
            for table in tables:
                rows = await conn.fetch(f'SELECT * FROM "{table}" ORDER BY 1')
                out[table] = hashlib.sha256(repr([tuple(r) for r in rows]).encode()).hexdigest()
        finally:
            await conn.close()
    return out


@dataclass(frozen=True)
class Snapshot:
    tables: dict[str, int]
    rows: dict[str, str]
    files: dict[str, str]
    head: str
    tags: dict[str, str]
    status: str


async def snapshot(dsn: Dsn, files: Path, code: Path) -> Snapshot:
    return Snapshot(
        tables=await engine_for(dsn).list_tables(dsn),
        rows=await table_digest(dsn),
        files=tree_digest(files),
        head=git(code, "rev-parse", "HEAD"),
        tags=tags_of(code),
        status=git(code, "status", "--porcelain"),
    )
