"""PostgreSQL: `pg_dump` for plain SQL dumps, asyncpg for checks and row counts.

The password reaches pg_dump through PGPASSWORD (the child's environment),
never argv. `bin_dir` selects the client version: pg_dump refuses a server
newer than itself (the embedded pgserver runs 16, the system ships 15).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import asyncpg
import structlog

from envrestore.pipelines.dsn import Dsn
from envrestore.pipelines.engines.base import find_client
from envrestore.pipelines.errors import BadInput, NotFound, Unavailable
from envrestore.pipelines.streams import run_producer

log = structlog.get_logger(__name__)

DUMP_OPTIONS = ("--format=plain", "--no-owner", "--no-privileges")
CONNECT_TIMEOUT_SECONDS = 10

#: DSN query parameters that libpq tools read from the environment.
_LIBPQ_ENV = {
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "application_name": "PGAPPNAME",
}

_TABLES_SQL = """
SELECT n.nspname, c.relname
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p')
  AND NOT c.relispartition
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%'
  AND n.nspname NOT LIKE 'pg\\_temp\\_%'
ORDER BY 1, 2
"""


#: How much of a server's message an error quotes.
QUOTE_LIMIT = 300
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PSQL_LINE = re.compile(r"^psql:[^:\n]*:(\d+): ")


def quote_server_text(text: str, limit: int = QUOTE_LIMIT) -> str:
    """Server text for a message: every control character escaped, cut to about `limit`."""
    escaped = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return escaped if len(escaped) <= limit else escaped[:limit] + "…"


def psql_reason(stderr: str) -> tuple[str, int | None]:
    """psql's error as a reason ("line 12: ERROR: …") and the dump line it names.

    `run_consumer` joins psql's last stderr lines with " | "; the first one
    naming a line (`psql:<stdin>:12: ERROR:  …`) is the failure, the rest
    (LINE/DETAIL/HINT/CONTEXT) is kept after it.
    """
    parts = [part.strip() for part in stderr.split(" | ") if part.strip()]
    for index, part in enumerate(parts):
        found = _PSQL_LINE.match(part)
        if found is not None:
            line = int(found.group(1))
            rest = [part[found.end() :], *parts[index + 1 :]]
            text = " | ".join(re.sub(r"\s+", " ", piece) for piece in rest)
            return f"line {line}: {quote_server_text(text)}", line
    text = " | ".join(re.sub(r"^psql:[^:]*: ", "", part) for part in parts)
    return quote_server_text(text or "psql failed without an error message"), None


def quote_identifier(name: str) -> str:
    """A PostgreSQL identifier in double quotes (for names read from the catalog)."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class PostgresEngine:
    """PostgreSQL servers."""

    bin_dir: Path | None = None
    name: str = "postgresql"

    def tool(self, name: str) -> str:
        """A libpq client (`pg_dump`, `psql`) from bin_dir or PATH."""
        return find_client((name,), self.bin_dir, setting="pg_bin_dir")

    def connection_args(self, dsn: Dsn) -> list[str]:
        args = ["--host", dsn.socket or dsn.host, "--port", str(dsn.port)]
        if dsn.user is not None:
            args += ["--username", dsn.user]
        return args

    def environment(self, dsn: Dsn) -> dict[str, str]:
        env = {"PGCONNECT_TIMEOUT": str(CONNECT_TIMEOUT_SECONDS)}
        password = dsn.resolve_password()
        if password is not None:
            env["PGPASSWORD"] = password
        for key, var in _LIBPQ_ENV.items():
            if key in dsn.params:
                env[var] = dsn.params[key]
        return env

    def secrets(self, dsn: Dsn) -> tuple[str, ...]:
        password = dsn.resolve_password()
        return (password,) if password else ()

    def psql_argv(self, dsn: Dsn, *extra: str) -> list[str]:
        """`psql` on the DSN's database, failing on the first error (the restore side)."""
        return [
            self.tool("psql"),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            *self.connection_args(dsn),
            *extra,
            "--dbname",
            dsn.database,
        ]

    async def connect(self, dsn: Dsn) -> asyncpg.Connection:
        """An asyncpg connection, its failures turned into one clear line."""
        where = f"PostgreSQL at {dsn.socket or f'{dsn.host}:{dsn.port}'}"
        try:
            return await asyncpg.connect(
                host=dsn.socket or dsn.host,
                port=dsn.port,
                user=dsn.user,
                password=dsn.resolve_password(),
                database=dsn.database,
                timeout=CONNECT_TIMEOUT_SECONDS,
                ssl=cast("Any", dsn.params.get("sslmode")),
            )
        except asyncpg.InvalidCatalogNameError as exc:
            raise NotFound(
                f"database {dsn.database!r} does not exist on {where}; create it or fix the DSN",
                dsn=dsn.masked(),
                database=dsn.database,
            ) from exc
        except (
            asyncpg.InvalidPasswordError,
            asyncpg.InvalidAuthorizationSpecificationError,
        ) as exc:
            who = f" as {dsn.user!r}" if dsn.user else ""
            raise BadInput(
                f"{where} refused the credentials{who}: {exc}; check the DSN's user and password",
                dsn=dsn.masked(),
            ) from exc
        except (OSError, TimeoutError, asyncpg.CannotConnectNowError) as exc:
            raise Unavailable(
                f"cannot connect to {where}: {exc}; check the DSN's host/port and that the "
                "server is running",
                dsn=dsn.masked(),
            ) from exc

    async def check(self, dsn: Dsn) -> None:
        conn = await self.connect(dsn)
        await conn.close()

    def dump(self, dsn: Dsn) -> AsyncIterator[bytes]:
        argv = [
            self.tool("pg_dump"),
            *DUMP_OPTIONS,
            *self.connection_args(dsn),
            "--dbname",
            dsn.database,
        ]
        log.info("engine.dump", engine=self.name, dsn=dsn.masked())
        return run_producer(argv, env=self.environment(dsn), secrets=self.secrets(dsn))

    async def list_tables(self, dsn: Dsn) -> dict[str, int]:
        conn = await self.connect(dsn)
        try:
            result: dict[str, int] = {}
            for schema, table in await conn.fetch(_TABLES_SQL):
                key = table if schema == "public" else f"{schema}.{table}"
                # Identifiers come from the catalog and are quoted; values are never spliced.
                count = await conn.fetchval(
                    f"SELECT count(*) FROM {quote_identifier(schema)}.{quote_identifier(table)}"
                )
                result[key] = int(count)
            return result
        finally:
            await conn.close()
