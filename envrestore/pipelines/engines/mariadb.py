"""MariaDB/MySQL through its own clients: `mariadb-dump` to dump, `mariadb` to query.

The CLI clients are what every server ships with, so no driver is added. The
password travels in MYSQL_PWD (the environment of the child only), never argv,
where any local user could read it from the process list.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from envrestore.pipelines.dsn import Dsn
from envrestore.pipelines.engines.base import find_client
from envrestore.pipelines.errors import (
    BadInput,
    EnvrestoreError,
    NotFound,
    Unavailable,
)
from envrestore.pipelines.streams import empty_stream, run_consumer, run_producer

log = structlog.get_logger(__name__)

DUMP_OPTIONS = (
    "--single-transaction",
    "--quick",
    "--routines",
    "--triggers",
    "--events",
    "--hex-blob",
    "--default-character-set=utf8mb4",
    "--no-tablespaces",
)


def quote_identifier(name: str) -> str:
    """A MariaDB identifier in backticks (for table names read from the server)."""
    return "`" + name.replace("`", "``") + "`"


@dataclass(frozen=True)
class MariaDbEngine:
    """MariaDB and MySQL servers (dumps are mysqldump-compatible plain SQL)."""

    bin_dir: Path | None = None
    name: str = "mariadb"

    def client(self) -> str:
        return find_client(("mariadb", "mysql"), self.bin_dir, setting="mariadb_bin_dir")

    def dump_tool(self) -> str:
        return find_client(("mariadb-dump", "mysqldump"), self.bin_dir, setting="mariadb_bin_dir")

    def connection_args(self, dsn: Dsn) -> list[str]:
        """Options shared by `mariadb` and `mariadb-dump` (no password: see `environment`)."""
        args: list[str] = []
        if dsn.socket is not None:
            args += ["--protocol=SOCKET", f"--socket={dsn.socket}"]
        else:
            # "localhost" would silently mean the default socket to the client.
            args += ["--protocol=TCP", f"--host={dsn.host}", f"--port={dsn.port}"]
        if dsn.user is not None:
            args.append(f"--user={dsn.user}")
        return args

    def environment(self, dsn: Dsn) -> dict[str, str]:
        password = dsn.resolve_password()
        return {"MYSQL_PWD": password} if password is not None else {}

    def secrets(self, dsn: Dsn) -> tuple[str, ...]:
        password = dsn.resolve_password()
        return (password,) if password else ()

    def client_argv(self, dsn: Dsn, *extra: str) -> list[str]:
        """`mariadb` connected to the DSN's database (the restore side feeds it SQL)."""
        return [
            self.client(),
            *self.connection_args(dsn),
            "--default-character-set=utf8mb4",
            *extra,
            "--",
            dsn.database,
        ]

    async def query(self, dsn: Dsn, sql: str) -> list[list[str]]:
        """Run SQL with the CLI client; rows as lists of (batch-escaped) strings."""

        async def script() -> AsyncIterator[bytes]:
            yield sql.encode("utf-8")

        out = await run_consumer(
            self.client_argv(dsn, "--batch", "--skip-column-names"),
            script(),
            env=self.environment(dsn),
            secrets=self.secrets(dsn),
        )
        return [line.split("\t") for line in out.splitlines()]

    async def check(self, dsn: Dsn) -> None:
        try:
            await run_consumer(
                self.client_argv(dsn, "--batch", "--connect-timeout=10", "-e", "SELECT 1"),
                empty_stream(),
                env=self.environment(dsn),
                secrets=self.secrets(dsn),
            )
        except EnvrestoreError as exc:
            raise _explain(exc, dsn) from exc

    def dump(self, dsn: Dsn) -> AsyncIterator[bytes]:
        argv = [
            self.dump_tool(),
            *self.connection_args(dsn),
            *DUMP_OPTIONS,
            "--",
            dsn.database,
        ]
        log.info("engine.dump", engine=self.name, dsn=dsn.masked())
        return run_producer(argv, env=self.environment(dsn), secrets=self.secrets(dsn))

    async def list_tables(self, dsn: Dsn) -> dict[str, int]:
        # HEX() keeps any byte of a table name intact through the client's batch escaping.
        rows = await self.query(
            dsn,
            "SELECT HEX(table_name) FROM information_schema.tables "
            "WHERE table_schema = DATABASE() AND table_type = 'BASE TABLE' "
            "ORDER BY table_name",
        )
        names = [bytes.fromhex(row[0]).decode("utf-8") for row in rows if row and row[0]]
        if not names:
            return {}
        counts = " UNION ALL ".join(
            f"SELECT {index}, COUNT(*) FROM {quote_identifier(name)}"
            for index, name in enumerate(names)
        )
        result: dict[str, int] = {}
        for index, count in await self.query(dsn, counts + ";"):
            result[names[int(index)]] = int(count)
        return result


def _explain(exc: EnvrestoreError, dsn: Dsn) -> EnvrestoreError:
    """Turn a failed client run into one line a user can act on."""
    where = f"MariaDB at {dsn.socket or f'{dsn.host}:{dsn.port}'}"
    who = f" as {dsn.user!r}" if dsn.user else ""
    stderr = str(exc.data.get("stderr", exc.message))
    if isinstance(exc, Unavailable):
        return Unavailable(
            f"cannot connect to {where}: {stderr}; check the DSN's host/port and that the "
            "server is running",
            dsn=dsn.masked(),
        )
    if isinstance(exc, BadInput):
        return BadInput(
            f"{where} refused the credentials{who}: {stderr}; check the DSN's user and password",
            dsn=dsn.masked(),
        )
    if isinstance(exc, NotFound):
        return NotFound(
            f"database {dsn.database!r} does not exist on {where}; create it or fix the DSN",
            dsn=dsn.masked(),
            database=dsn.database,
        )
    return exc
