"""Changing the registry after the fact: list sites, remove sites and environments, set fields.

Every change runs in one transaction that first locks the environment's lease
row, so no job can take the lease until it commits, and is refused while a
job holds the lease or waits for it (the error names the job).

Removing only forgets: the site's database, files and code stay where they
are on disk. It is refused while the ledger still knows backups of the
environment (forgetting their rows would leave their objects to the orphan
sweep, which deletes them) and while a rollback point is kept (its database
and trees would be left behind unseen); the error says how to free each.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

from envrestore.pipelines import paths
from envrestore.pipelines.dsn import parse_dsn
from envrestore.pipelines.errors import BadInput, Conflict, NotFound
from envrestore.pipelines.ledger.queries import sql
from envrestore.pipelines.ledger.types import Conn
from envrestore.pipelines.registry import (
    Environment,
    check_base_url,
    check_name,
    check_paths_in_ledger,
    get_environment,
    guard_change,
    lock_registry,
    moves,
    parse_target,
)


@dataclass(frozen=True)
class Site:
    """A registered site and the names of its environments."""

    name: str
    created_at: datetime
    envs: tuple[str, ...]

    def public(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "created_at": self.created_at.isoformat(),
            "environments": list(self.envs),
        }


async def list_sites(pool: asyncpg.Pool) -> list[Site]:
    return [
        Site(r["name"], r["created_at"], tuple(r["envs"]))
        for r in await pool.fetch(sql("list_sites"))
    ]


async def _forget(conn: Conn, environment: Environment) -> None:
    """Refuse, or delete the environment's rows (never anything on disk)."""
    await guard_change(conn, environment, doing="removing", moves=True)
    backups = await conn.fetchval(sql("count_backups_of_environment"), environment.id)
    if backups:
        raise Conflict(
            f"removing {environment.target} is refused: the ledger holds {backups} backup(s) of "
            f"it; delete them first (envrestore backup list {environment.target}, then backup "
            "delete), or let retention expire them",
            target=environment.target,
            backups=backups,
        )
    await conn.execute(sql("delete_environment"), environment.id)


async def remove_environment(pool: asyncpg.Pool, target: str) -> Environment:
    """Forget one environment; its database, files and code stay on disk."""
    async with pool.acquire() as conn, conn.transaction():
        environment = await get_environment(conn, target)
        await _forget(conn, environment)
    return environment


async def remove_site(pool: asyncpg.Pool, name: str, *, cascade: bool) -> list[Environment]:
    """Forget a site; with `cascade` its environments too (each checked as by env remove).

    Returns the environments forgotten. All or nothing: one refusal keeps everything.
    """
    check_name("site", name)
    async with pool.acquire() as conn, conn.transaction():
        site = await conn.fetchrow(sql("lock_site"), name)
        if site is None:
            raise NotFound(f"site {name!r} is not registered", site=name)
        environments = [
            Environment.from_row(r) for r in await conn.fetch(sql("list_environments"), name)
        ]
        if environments and not cascade:
            names = ", ".join(e.target for e in environments)
            raise Conflict(
                f"site {name!r} still has environments ({names}); remove them first "
                "(envrestore env remove SITE.ENV) or add --cascade",
                site=name,
            )
        for environment in environments:
            await _forget(conn, environment)
        await conn.execute(sql("delete_site"), site["id"])
    return environments


async def set_environment(
    pool: asyncpg.Pool,
    target: str,
    *,
    db: str | None = None,
    files: Path | None = None,
    code: Path | None = None,
    url: str | None = None,
    protected: bool | None = None,
    state_dir: Path | None = None,
) -> tuple[Environment, list[str]]:
    """Change only the given fields; returns the environment and the fields changed.

    The same checks as `env add`: directories (`pipelines.paths`), the lease, and
    no move while a rollback point refers to the old database or directories.
    """
    if db is None and files is None and code is None and url is None and protected is None:
        raise BadInput(
            "nothing to change: give at least one of --db, --files, --code, --url, "
            "--protected/--unprotected"
        )
    site, env = parse_target(target)
    url = None if url is None else check_base_url(url)
    async with pool.acquire() as conn, conn.transaction():
        await lock_registry(conn)
        current = await get_environment(conn, target)
        dsn = parse_dsn(db) if db is not None else current.dsn
        new_files = current.files_dir if files is None else files.expanduser().absolute()  # noqa: ASYNC240 - no I/O: cwd lookup only
        new_code = current.code_dir if code is None else code.expanduser().absolute()  # noqa: ASYNC240 - no I/O: cwd lookup only
        if files is not None or code is not None:
            await check_paths_in_ledger(conn, target, new_files, new_code, state_dir=state_dir)
        await guard_change(
            conn, current, doing="changing", moves=moves(current, dsn, new_files, new_code)
        )
        site_row = await conn.fetchrow(sql("get_site"), site)
        assert site_row is not None  # the environment was found under it
        await conn.fetchrow(
            sql("upsert_environment"),
            site_row["id"],
            env,
            dsn.engine,
            current.db_dsn if db is None else db,
            str(new_files),
            str(new_code),
            current.protected if protected is None else protected,
            url,
        )
    changed = [
        name
        for name, given in (
            ("db", db),
            ("files", files),
            ("code", code),
            ("url", url),
            ("protected", protected),
        )
        if given is not None
    ]
    return await get_environment(pool, target), changed


async def check_many(
    pool: asyncpg.Pool, entries: list[tuple[str, Path, Path]], *, state_dir: Path | None
) -> None:
    """`env load`: every entry's directories against the ledger and the file's other
    entries, before anything is written (the writes check again, one by one)."""
    planned = {target for target, _files, _code in entries}
    known = [
        paths.UsedPaths(f"{r['site']}.{r['env']}", Path(r["files_dir"]), Path(r["code_dir"]))
        for r in await pool.fetch(sql("list_environments"), None)
        if f"{r['site']}.{r['env']}" not in planned
    ]
    in_file = [
        paths.UsedPaths(t, f.expanduser().absolute(), c.expanduser().absolute())
        for t, f, c in entries
    ]
    for target, files, code in entries:
        others = known + [u for u in in_file if u.target != target]
        try:
            await asyncio.to_thread(
                paths.check_environment_paths,
                target,
                files,
                code,
                others=others,
                state_dir=state_dir,
            )
        except (BadInput, Conflict) as exc:  # name the entry: a file holds many
            raise type(exc)(f"{target}: {exc.message}", **exc.data) from None


async def check_directories(
    *, files: Path | None, code: Path | None, state_dir: Path | None
) -> None:
    """On disk, before the ledger is touched: what `env add`, `env set` and the API's
    environment routes check of the directories given (None: not given).

    Dangerous directories first (`pipelines.paths`), before anything looks at
    them; then each must exist, and code must be the top of a git working tree.
    """
    for role, path in (("files", files), ("code", code)):
        if path is not None:
            paths.check_alone(path, role=role, state_dir=state_dir)
    if files is not None and not await asyncio.to_thread(files.is_dir):
        raise BadInput(f"files directory {files} does not exist or is not a directory")
    if code is not None:
        if not await asyncio.to_thread(code.is_dir):
            raise BadInput(f"code directory {code} does not exist or is not a directory")
        from envrestore.pipelines.archives.git import ensure_repo

        await ensure_repo(code)
