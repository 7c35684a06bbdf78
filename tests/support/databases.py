"""Fresh site databases on the real local servers, one per test, dropped afterwards.

Admin DSNs come from ENVRESTORE_TEST_MARIADB_URL / ENVRESTORE_TEST_POSTGRES_URL
(defaults: the loopback servers). A server that cannot be reached fails the
test under CI (CI=true) and skips it, with the reason, elsewhere.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator

import pytest

from envrestore.pipelines.dsn import Dsn, parse_dsn

__all__ = [
    "make_mariadb_db",
    "make_postgres_db",
    "mariadb_db",
    "mariadb_server",
    "postgres_db",
    "postgres_server",
]

_DEFAULT_MARIADB = "mariadb://root@127.0.0.1:3306/mysql"
_DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


def _unreachable(what: str, dsn: Dsn, why: str) -> None:
    message = f"{what} at {dsn.masked()} is not reachable ({why}); start it or set the test URL"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _probe(what: str, dsn: Dsn) -> None:
    if dsn.socket is not None:
        return
    try:
        with socket.create_connection((dsn.host, dsn.port), timeout=2):
            pass
    except OSError as exc:
        _unreachable(what, dsn, str(exc))


def _mariadb_admin(admin: Dsn, sql: str) -> str:
    env = dict(os.environ)
    password = admin.resolve_password()
    if password:
        env["MYSQL_PWD"] = password
    where = (
        [f"--socket={admin.socket}"]
        if admin.socket
        else ["--protocol=TCP", f"--host={admin.host}", f"--port={admin.port}"]
    )
    done = subprocess.run(
        ["mariadb", *where, f"--user={admin.user or 'root'}", "--batch", "-N", "-e", sql],
        check=True,
        env=env,
        capture_output=True,
        timeout=60,
    )
    return done.stdout.decode()


def _postgres_admin(admin: Dsn, sql: str) -> str:
    env = dict(os.environ)
    password = admin.resolve_password()
    if password:
        env["PGPASSWORD"] = password
    return subprocess.run(
        [
            "psql",
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "--host",
            admin.socket or admin.host,
            "--port",
            str(admin.port),
            "--username",
            admin.user or "postgres",
            "--dbname",
            admin.database,
            "-c",
            sql,
        ],
        check=True,
        env=env,
        capture_output=True,
        timeout=60,
    ).stdout.decode()


def _name() -> str:
    return f"envr_test_{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def mariadb_server() -> Dsn:
    """Admin DSN of the test MariaDB server (skips/fails when it is down)."""
    dsn = parse_dsn(os.environ.get("ENVRESTORE_TEST_MARIADB_URL", _DEFAULT_MARIADB))
    _probe("MariaDB", dsn)
    try:
        _mariadb_admin(dsn, "SELECT 1")
    except (subprocess.CalledProcessError, OSError) as exc:
        _unreachable("MariaDB", dsn, str(getattr(exc, "stderr", b"") or exc).strip())
    return dsn


@pytest.fixture(scope="session")
def postgres_server() -> Dsn:
    """Admin DSN of the test PostgreSQL server (skips/fails when it is down)."""
    dsn = parse_dsn(os.environ.get("ENVRESTORE_TEST_POSTGRES_URL", _DEFAULT_POSTGRES))
    _probe("PostgreSQL", dsn)
    try:
        _postgres_admin(dsn, "SELECT 1")
    except (subprocess.CalledProcessError, OSError) as exc:
        _unreachable("PostgreSQL", dsn, str(getattr(exc, "stderr", b"") or exc).strip())
    return dsn


@pytest.fixture
def make_mariadb_db(mariadb_server: Dsn) -> Iterator[Callable[[], Dsn]]:
    """Factory: each call creates another empty utf8mb4 database; all are dropped after."""
    created: list[str] = []

    def make() -> Dsn:
        name = _name()
        _mariadb_admin(
            mariadb_server,
            f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
        )
        created.append(name)
        return mariadb_server.with_database(name)

    yield make
    for name in created:
        # Restores in the test leave shadow and rollback databases beside it.
        kept = _mariadb_admin(
            mariadb_server,
            f"SELECT schema_name FROM information_schema.schemata "
            f"WHERE schema_name LIKE '{name}\\_\\_envr\\_%'",
        ).split()
        for database in [name, *kept]:
            _mariadb_admin(mariadb_server, f"DROP DATABASE IF EXISTS `{database}`")


@pytest.fixture
def make_postgres_db(postgres_server: Dsn) -> Iterator[Callable[[], Dsn]]:
    """Factory: each call creates another empty UTF8 database; all are dropped after."""
    created: list[str] = []

    def make() -> Dsn:
        name = _name()
        _postgres_admin(
            postgres_server, f"CREATE DATABASE \"{name}\" ENCODING 'UTF8' TEMPLATE template0"
        )
        created.append(name)
        return postgres_server.with_database(name)

    yield make
    for name in created:
        kept = _postgres_admin(
            postgres_server,
            f"SELECT datname FROM pg_database WHERE datname LIKE '{name}\\_\\_envr\\_%'",
        ).split()
        for database in [name, *kept]:
            _postgres_admin(postgres_server, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@pytest.fixture
def mariadb_db(make_mariadb_db: Callable[[], Dsn]) -> Dsn:
    """A fresh, empty MariaDB database for this test."""
    return make_mariadb_db()


@pytest.fixture
def postgres_db(make_postgres_db: Callable[[], Dsn]) -> Dsn:
    """A fresh, empty PostgreSQL database for this test."""
    return make_postgres_db()
