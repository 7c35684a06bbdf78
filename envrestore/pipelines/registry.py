"""Sites and their environments: where each environment's database, files and code live."""

from __future__ import annotations

import asyncio
import re
import tomllib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from envrestore.pipelines import paths
from envrestore.pipelines.dsn import Dsn, parse_dsn
from envrestore.pipelines.errors import BadInput, Conflict, NotFound
from envrestore.pipelines.ledger.queries import sql
from envrestore.pipelines.ledger.types import Conn, Row

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
#: Environments protected unless said otherwise: restoring them directly is refused.
PROTECTED_BY_DEFAULT = frozenset({"live"})


@dataclass(frozen=True)
class Environment:
    """One environment of a site, as registered."""

    id: int
    site: str
    env: str
    engine: str
    db_dsn: str
    files_dir: Path
    code_dir: Path
    protected: bool
    created_at: datetime
    #: The base URL visitors use (https://dev.example.com), when recorded.
    url: str | None = None

    @property
    def target(self) -> str:
        return f"{self.site}.{self.env}"

    @property
    def dsn(self) -> Dsn:
        return parse_dsn(self.db_dsn)

    @classmethod
    def from_row(cls, row: Row) -> Environment:
        return cls(
            id=row["id"],
            site=row["site"],
            env=row["env"],
            engine=row["engine"],
            db_dsn=row["db_dsn"],
            files_dir=Path(row["files_dir"]),
            code_dir=Path(row["code_dir"]),
            protected=row["protected"],
            created_at=row["created_at"],
            url=row.get("url"),
        )

    def public(self) -> dict[str, Any]:
        """What may be shown to a user: the DSN with its password masked."""
        return {
            "site": self.site,
            "env": self.env,
            "engine": self.engine,
            "db": self.dsn.masked(),
            "files": str(self.files_dir),
            "code": str(self.code_dir),
            "protected": self.protected,
            "url": self.url,
        }


def check_name(kind: str, name: str) -> str:
    """A site or environment name: lower-case letters, digits and dashes."""
    if not _NAME.match(name):
        raise BadInput(
            f"{kind} name {name!r} is not valid: use lower-case letters, digits and dashes "
            "(at most 63), starting with a letter or digit",
            name=name,
        )
    return name


def parse_target(target: str) -> tuple[str, str]:
    """`SITE.ENV` → (site, env)."""
    site, dot, env = target.partition(".")
    if not dot or not site or not env:
        raise BadInput(f"{target!r} is not SITE.ENV (for example mysite.dev)", target=target)
    return check_name("site", site), check_name("environment", env)


async def add_site(pool: asyncpg.Pool, name: str) -> bool:
    """Register a site; returns False when it already existed."""
    check_name("site", name)
    row = await pool.fetchrow(sql("insert_site"), name)
    return row is not None


async def add_environment(
    pool: asyncpg.Pool,
    target: str,
    *,
    db: str,
    files: Path,
    code: Path,
    protected: bool | None = None,
    url: str | None = None,
    state_dir: Path | None = None,
) -> tuple[Environment, bool]:
    """Register (or update) an environment; returns it and whether it is new.

    `url` is its base URL; None keeps the one already recorded. The directories
    are checked (`pipelines.paths`: no system or shared directory, files and code
    apart, no other environment's, not `state_dir`). An update is refused while a
    job holds or waits for the environment's lease, and a move (another database
    or directory) while a rollback point still refers to the old ones.
    """
    site, env = parse_target(target)
    url = None if url is None else check_base_url(url)
    dsn = parse_dsn(db)
    files = files.expanduser().absolute()  # noqa: ASYNC240 - no I/O: cwd lookup only
    code = code.expanduser().absolute()  # noqa: ASYNC240 - no I/O: cwd lookup only
    if protected is None:
        protected = env in PROTECTED_BY_DEFAULT
    async with pool.acquire() as conn, conn.transaction():
        await lock_registry(conn)
        site_row = await conn.fetchrow(sql("get_site"), site)
        if site_row is None:
            raise NotFound(
                f"site {site!r} is not registered; add it first with: envrestore site add {site}",
                site=site,
            )
        await check_paths_in_ledger(conn, target, files, code, state_dir=state_dir)
        existing = await conn.fetchrow(sql("get_environment"), site, env)
        if existing is not None:
            current = Environment.from_row(existing)
            await guard_change(
                conn, current, doing="updating", moves=moves(current, dsn, files, code)
            )
        row = await conn.fetchrow(
            sql("upsert_environment"),
            site_row["id"],
            env,
            dsn.engine,
            db,
            str(files),
            str(code),
            protected,
            url,
        )
        assert row is not None  # an upsert always returns its row
        await conn.execute(sql("ensure_lease_row"), row["id"])
        created = bool(row["created"])
    return await get_environment(pool, target), created


def moves(current: Environment, dsn: Dsn, files: Path, code: Path) -> bool:
    """Whether a change points the environment at another database or directory."""
    where = (dsn.engine, dsn.host, dsn.port, dsn.socket, dsn.database)
    was = current.dsn
    return (
        where != (was.engine, was.host, was.port, was.socket, was.database)
        or files != current.files_dir
        or code != current.code_dir
    )


#: Transaction advisory lock taken first by every write that checks directories.
REGISTRY_LOCK_KEY = 0x656E7667  # "envg"


async def lock_registry(conn: Conn) -> None:
    """Serialise `env add`/`env set`: each checks the others' directories, then writes.

    Without it two transactions could both read the ledger before either wrote,
    and register the same directories twice. Released at commit or rollback.
    """
    await conn.execute(sql("lock_registry"), REGISTRY_LOCK_KEY)


async def check_paths_in_ledger(
    conn: Conn, target: str, files: Path, code: Path, *, state_dir: Path | None
) -> None:
    """`pipelines.paths` rules, against every other registered environment."""
    others = [
        paths.UsedPaths(f"{r['site']}.{r['env']}", Path(r["files_dir"]), Path(r["code_dir"]))
        for r in await conn.fetch(sql("list_environments"), None)
    ]
    await asyncio.to_thread(
        paths.check_environment_paths, target, files, code, others=others, state_dir=state_dir
    )


async def refuse_if_busy(
    conn: asyncpg.Pool | Conn, environment: Environment, *, doing: str
) -> None:
    """Conflict naming the job that holds the environment's lease or waits for it."""
    busy = await conn.fetchrow(sql("environment_busy"), environment.id)
    if busy is None:
        return
    how = "holds the lease on" if busy["holds_lease"] else f"is {busy['status']} for"
    raise Conflict(
        f"{doing} {environment.target} is refused: job {busy['id']} ({busy['kind']}) {how} it; "
        f"try again when it ends (envrestore job show {busy['id']} --wait)",
        job_id=str(busy["id"]),
        target=environment.target,
    )


async def guard_change(conn: Conn, environment: Environment, *, doing: str, moves: bool) -> None:
    """In the caller's transaction: hold the lease row (no job starts until commit) and
    refuse while a job has it or waits; a move also while a rollback point is kept."""
    await conn.fetchrow(sql("lock_lease_row"), environment.id)
    await refuse_if_busy(conn, environment, doing=doing)
    if moves:
        point = await conn.fetchval(sql("newest_kept_rollback_point"), environment.id)
        if point is not None:
            raise Conflict(
                f"{doing} {environment.target} is refused: the rollback point of job {point} "
                "is kept and names its current database and directories; drop it first "
                f"(envrestore rollback drop {point})",
                job_id=str(point),
                target=environment.target,
            )


def check_base_url(url: str) -> str:
    """An environment's base URL: http(s), a host, maybe a path; no query, no trailing slash."""
    parts = urlsplit(url.strip())
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.query
        or parts.fragment
        or parts.username
        or any(c.isspace() for c in url.strip())
    ):
        raise BadInput(
            f"--url {url!r} is not a base URL like https://dev.example.com (http or https, a "
            "host, optionally a path; no query)",
            url=url,
        )
    return urlunsplit((parts.scheme, parts.netloc.lower(), parts.path.rstrip("/"), "", ""))


async def get_environment(pool: asyncpg.Pool | Conn, target: str) -> Environment:
    """The environment `SITE.ENV`, or NotFound naming what is missing."""
    site, env = parse_target(target)
    row = await pool.fetchrow(sql("get_environment"), site, env)
    if row is None:
        if await pool.fetchrow(sql("get_site"), site) is None:
            raise NotFound(
                f"site {site!r} is not registered (envrestore site add {site})", site=site
            )
        raise NotFound(
            f"environment {target!r} is not registered (envrestore env add {target} ...)",
            site=site,
            env=env,
        )
    return Environment.from_row(row)


async def get_environment_by_id(
    pool: asyncpg.Pool | asyncpg.Connection, environment_id: int
) -> Environment:
    row = await pool.fetchrow(sql("get_environment_by_id"), environment_id)
    if row is None:
        raise NotFound(f"environment #{environment_id} no longer exists", id=environment_id)
    return Environment.from_row(row)


async def list_environments(pool: asyncpg.Pool, site: str | None = None) -> list[Environment]:
    rows = await pool.fetch(sql("list_environments"), site)
    return [Environment.from_row(row) for row in rows]


@dataclass(frozen=True)
class EnvironmentSpec:
    """One `[[env]]` entry of a registry file."""

    target: str
    db: str
    files: Path
    code: Path
    protected: bool | None
    url: str | None = None


def read_registry_file(path: Path) -> list[EnvironmentSpec]:
    """Parse a TOML file of environments, all or nothing.

    ```toml
    [[env]]
    target = "mysite.dev"      # or site = "mysite" and env = "dev"
    db = "mariadb://root@127.0.0.1:3306/mysite_dev"
    files = "/srv/mysite/dev/files"
    code = "/srv/mysite/dev/code"
    protected = false          # optional; live is protected by default
    url = "https://dev.mysite.example"   # optional: the base URL visitors use
    ```
    """
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise NotFound(f"registry file {path} does not exist", path=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"registry file {path} is not valid TOML: {exc}", path=str(path)) from exc
    entries = data.get("env")
    if not isinstance(entries, list) or not entries:
        raise BadInput(f"registry file {path} has no [[env]] entries", path=str(path))
    specs: list[EnvironmentSpec] = []
    base = path.parent
    for index, entry in enumerate(entries, start=1):
        where = f"{path}, [[env]] #{index}"
        if not isinstance(entry, dict):
            raise BadInput(f"{where}: not a table")
        target = entry.get("target") or (
            f"{entry['site']}.{entry['env']}" if "site" in entry and "env" in entry else None
        )
        missing = [k for k in ("db", "files", "code") if not entry.get(k)]
        if target is None:
            missing.insert(0, "target (or site and env)")
        if missing:
            raise BadInput(f"{where}: missing {', '.join(missing)}")
        parse_target(str(target))
        parse_dsn(str(entry["db"]))
        protected = entry.get("protected")
        if protected is not None and not isinstance(protected, bool):
            raise BadInput(f"{where}: protected must be true or false")
        specs.append(
            EnvironmentSpec(
                target=str(target),
                db=str(entry["db"]),
                files=base / Path(str(entry["files"])).expanduser(),
                code=base / Path(str(entry["code"])).expanduser(),
                protected=protected,
                url=check_base_url(str(entry["url"])) if entry.get("url") else None,
            )
        )
    return specs
