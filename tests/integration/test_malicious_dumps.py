"""Hostile MariaDB dumps through a real restore and a real import, with canaries outside.

The environment's DSN user is what a platform gives a site: all rights on its
own database and on its shadow/rollback databases, CREATE USER, PROCESS and
CONNECTION ADMIN (README, "What the DSN user needs") — not root. Every refused
dump must leave the environment exactly as it was, the canary database
untouched, no database of the dump's naming created, and no import user
behind; every accepted one must be provably defused. Each dump goes both ways
in (`tests/support/routes.py`): forged into the site's backup and restored, and
uploaded and imported; an import finds the format from the bytes, which is
the only place where the two may differ.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import tarfile
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from envrestore.pipelines import registry
from envrestore.pipelines.backup.service import list_backups
from envrestore.pipelines.dsn import Dsn, parse_dsn
from envrestore.pipelines.engines import engine_for
from envrestore.pipelines.engines.shadow import (
    create_import_login,
    drop_import_login,
    import_login_name,
    shadow_names,
)
from envrestore.pipelines.restore.targets import job_tag
from tests.integration.test_backup_job import fill
from tests.support.content import snapshot
from tests.support.databases import _mariadb_admin
from tests.support.driver import drive
from tests.support.producing import submit_backup
from tests.support.routes import ROUTES, part_bytes, run_hostile
from tests.support.sites import make_files, make_repo

pytestmark = pytest.mark.integration

TRAILER = b"\n-- Dump completed on 2026-12-01 10:00:00\n"


def _escape_pattern(name: str) -> str:
    return name.replace("_", "\\_").replace("%", "\\%")


@pytest.fixture
async def site(runtime, tmp_path, make_mariadb_db, mariadb_server) -> AsyncIterator[dict[str, Any]]:
    """shop.dev on MariaDB with a site-scoped DSN user, one backup, and a canary database."""
    root_dsn = make_mariadb_db()
    await fill(root_dsn)
    canary = make_mariadb_db()
    _mariadb_admin(canary, f"CREATE TABLE `{canary.database}`.t (i INT)")
    db = root_dsn.database
    user = f"site_{uuid.uuid4().hex[:10]}"
    password = uuid.uuid4().hex
    grants = "".join(
        f"CREATE USER '{user}'@'{host}' IDENTIFIED BY '{password}';"
        f"GRANT ALL PRIVILEGES ON `{_escape_pattern(db)}`.* TO '{user}'@'{host}' "
        "WITH GRANT OPTION;"
        f"GRANT ALL PRIVILEGES ON `{_escape_pattern(db + '__envr_')}%`.* TO '{user}'@'{host}' "
        "WITH GRANT OPTION;"
        f"GRANT CREATE USER, PROCESS, CONNECTION ADMIN ON *.* TO '{user}'@'{host}';"
        for host in ("%", "localhost")
    )
    _mariadb_admin(mariadb_server, grants)
    dsn = parse_dsn(f"mariadb://{user}:{password}@{root_dsn.host}:{root_dsn.port}/{db}")
    files = make_files(tmp_path / "site" / "files")
    code = make_repo(tmp_path / "site" / "code")
    await registry.add_site(runtime.pool, "shop")
    await registry.add_environment(
        runtime.pool,
        "shop.dev",
        db=f"mariadb://{user}:{password}@{dsn.host}:{dsn.port}/{db}",
        files=files,
        code=code,
    )
    job = await submit_backup(runtime, "shop.dev")
    assert (await drive(runtime, job.job_id))["status"] == "succeeded"
    [backup] = await list_backups(runtime.pool, "shop.dev")
    other = f"other_{uuid.uuid4().hex[:8]}"
    yield {
        "dsn": dsn,
        "root": root_dsn,
        "user": user,
        "canary": canary.database,
        "other": other,
        "files": files,
        "code": code,
        "backup": backup,
        "before": await snapshot(dsn, files, code),
        "runtime": runtime,
    }
    _mariadb_admin(
        mariadb_server,
        f"DROP USER IF EXISTS '{user}'@'%', '{user}'@'localhost';DROP DATABASE IF EXISTS `{other}`",
    )


def _root_query(site: dict[str, Any], sql: str) -> list[str]:
    return _mariadb_admin(site["root"], sql).split()


async def _assert_nothing_escaped(site: dict[str, Any]) -> None:
    """The canaries: no row in the canary, no database of the dump's, no import user left.

    Only this test's import users are looked for: other runs may share the server,
    each with its own jobs' users while they run.
    """
    assert _root_query(site, f"SELECT COUNT(*) FROM `{site['canary']}`.t") == ["0"]
    assert _root_query(site, f"SHOW DATABASES LIKE '{site['other']}'") == []
    jobs = await site["runtime"].pool.fetch("SELECT id FROM jobs")
    ours = ",".join(f"'{import_login_name(job_tag(job['id']))}'" for job in jobs) or "''"
    assert _root_query(site, f"SELECT COUNT(*) FROM mysql.user WHERE user IN ({ours})") == ["0"]


#: The restore route over 1, 2, 3 and "auto" connections, the import route over
#: one: the route changes how the bytes arrive, not how they are split between clients.
ROUTE_CONNECTIONS = [
    ("restore", 1),
    ("restore", 2),
    ("restore", 3),
    ("restore", "auto"),
    ("import", 1),
]


async def _run(
    runtime,
    site,
    dump: bytes,
    *,
    route: str,
    raw: bool = False,
    allow_incomplete_dump: bool = False,
    **settings: Any,
):
    """The database part `dump` (gzipped unless `raw`) through `route`; the job's view."""
    data = dump if raw else gzip.compress(dump)
    rt = runtime
    if settings:
        rt = dataclasses.replace(runtime, settings=runtime.settings.model_copy(update=settings))
    options = {"allow_incomplete_dump": True} if allow_incomplete_dump else {}
    return await run_hostile(rt, site, "database", data, route=route, **options)


async def _real_dump(runtime, site) -> bytes:
    return gzip.decompress(await part_bytes(runtime, site["backup"], "database"))


def _before_trailer(dump: bytes, extra: bytes) -> bytes:
    cut = dump.rindex(b"-- Dump completed")
    return dump[:cut] + extra + dump[cut:]


def _step(view: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in view["steps"] if s["name"] == name)


ESCAPES = {
    "qualified insert": (
        b"CREATE TABLE a (i INT);\nINSERT INTO `{canary}`.`t` VALUES (666);\n",
        "a table in another database",
    ),
    "trigger body": (
        b"CREATE TABLE a (i INT);\nDELIMITER ;;\n"
        b"/*!50003 CREATE*/ /*!50017 DEFINER=`root`@`localhost`*/ /*!50003 TRIGGER tr "
        b"AFTER INSERT ON a FOR EACH ROW BEGIN\n  INSERT INTO `{canary}`.t VALUES (NEW.i);\n"
        b"END */;;\nDELIMITER ;\n",
        "a table in another database",
    ),
    "create database": (
        b"CREATE DATABASE `{other}`;\nUSE `{other}`;\nCREATE TABLE x (i INT);\n",
        "CREATE DATABASE",
    ),
    "use": (b"CREATE TABLE a (i INT);\nUSE `{canary}`;\nINSERT INTO t VALUES (666);\n", "USE"),
    "mysql schema": (
        b"CREATE TABLE a (i INT);\nINSERT INTO mysql.global_priv VALUES ('%','evil','{{}}');\n",
        "server's own schema",
    ),
}


@pytest.mark.parametrize(("route", "connections"), ROUTE_CONNECTIONS)
@pytest.mark.parametrize("case", sorted(ESCAPES))
async def test_a_dump_reaching_another_database_is_refused(runtime, site, case, route, connections):
    template, reason = ESCAPES[case]
    dump = template.replace(b"{canary}", site["canary"].encode()).replace(
        b"{other}", site["other"].encode()
    )
    view = await _run(
        runtime, site, dump + TRAILER, route=route, mariadb_import_connections=connections
    )
    assert view["status"] == "failed"
    assert view["error_step"] == "import_db"
    assert reason in view["error"] and "database part" in view["error"]
    assert _step(view, "import_db")["attempts"] == 1
    assert await snapshot(site["dsn"], site["files"], site["code"]) == site["before"]
    await _assert_nothing_escaped(site)


async def test_the_import_login_reaches_only_the_shadow(site, runtime):
    """Even a statement the filter let through cannot leave the shadow: the server says no."""
    dsn: Dsn = site["dsn"]
    names = shadow_names(dsn.database, "t" + uuid.uuid4().hex[:11])
    _mariadb_admin(site["root"], f"CREATE DATABASE `{names.shadow}`")
    try:
        login = await create_import_login(dsn, names.shadow, names.shadow[-12:])
        assert login.user is not None and login.user != dsn.user
        engine = engine_for(login.dsn)
        await engine.query(login.dsn, "CREATE TABLE ok (i INT); INSERT INTO ok VALUES (1);")  # type: ignore[attr-defined]
        lookalike = names.shadow.replace("_", "X", 1)  # `_` is a wildcard in grants
        for sql in (
            f"INSERT INTO `{site['canary']}`.t VALUES (666)",
            f"CREATE DATABASE `{site['other']}`",
            f"CREATE DATABASE `{lookalike}`",
            "SELECT COUNT(*) FROM mysql.user",
            f"GRANT ALL ON `{names.shadow}`.* TO '{site['user']}'@'%'",
            "SET GLOBAL max_connections = 1",
        ):
            with pytest.raises(Exception, match=r"denied|privilege"):
                await engine.query(login.dsn, sql)  # type: ignore[attr-defined]
        await drop_import_login(dsn, names.shadow[-12:])
        assert _root_query(
            site, f"SELECT COUNT(*) FROM mysql.user WHERE user = '{login.user}'"
        ) == ["0"]
        assert _root_query(site, f"SHOW DATABASES LIKE '{lookalike}'") == []
    finally:
        _mariadb_admin(site["root"], f"DROP DATABASE IF EXISTS `{names.shadow}`")
    await _assert_nothing_escaped(site)


@pytest.mark.parametrize(("route", "connections"), ROUTE_CONNECTIONS)
async def test_definers_are_dropped_and_objects_run_as_the_site_user(
    runtime, site, route, connections
):
    objects = (
        b"DELIMITER ;;\n"
        b"/*!50003 CREATE*/ /*!50017 DEFINER=`root`@`localhost`*/ /*!50003 TRIGGER tr "
        b"BEFORE INSERT ON wp_options FOR EACH ROW SET NEW.option_value = CURRENT_USER() */;;\n"
        b"CREATE DEFINER=`root`@`localhost` PROCEDURE `who`() SELECT CURRENT_USER() ;;\n"
        b"DELIMITER ;\n"
        b"/*!50001 CREATE ALGORITHM=UNDEFINED */\n"
        b"/*!50013 DEFINER=`root`@`localhost` SQL SECURITY DEFINER */\n"
        b"/*!50001 VIEW `v` AS select CURRENT_USER() AS `u` */;\n"
    )
    dump = _before_trailer(await _real_dump(runtime, site), objects)
    view = await _run(runtime, site, dump, route=route, mariadb_import_connections=connections)
    assert view["status"] == "succeeded", view["error"]
    assert _step(view, "import_db")["outputs"]["import_user"].startswith("envr_i_")
    assert (
        "rewrote DEFINER= clauses to CURRENT_USER"
        in _step(view, "import_db")["outputs"]["normalised"]
    )
    dsn: Dsn = site["dsn"]
    engine = engine_for(dsn)
    await engine.query(dsn, "INSERT INTO wp_options VALUES ('probe', 'x')")  # type: ignore[attr-defined]
    [[value]] = await engine.query(  # type: ignore[attr-defined]
        dsn, "SELECT option_value FROM wp_options WHERE option_name = 'probe'"
    )
    assert value.split("@")[0] == site["user"]  # the trigger ran as the site, not as root
    [[viewer]] = await engine.query(dsn, "SELECT u FROM v")  # type: ignore[attr-defined]
    assert viewer.split("@")[0] == site["user"]
    definers = _root_query(
        site,
        "SELECT definer FROM information_schema.triggers WHERE trigger_schema = "
        f"'{dsn.database}' UNION ALL SELECT definer FROM information_schema.routines WHERE "
        f"routine_schema = '{dsn.database}' UNION ALL SELECT definer FROM "
        f"information_schema.views WHERE table_schema = '{dsn.database}'",
    )
    assert len(definers) == 3
    assert all(d.split("@")[0] == site["user"] for d in definers), definers
    await _assert_nothing_escaped(site)


@pytest.mark.parametrize("route", ROUTES)
async def test_without_create_user_the_dsn_user_imports_and_the_filter_still_guards(
    runtime, site, mariadb_server, route
):
    user = site["user"]
    _mariadb_admin(
        mariadb_server,
        f"REVOKE CREATE USER ON *.* FROM '{user}'@'%', '{user}'@'localhost'",
    )
    dump = await _real_dump(runtime, site)
    view = await _run(runtime, site, dump, route=route)
    assert view["status"] == "succeeded", view["error"]
    outputs = _step(view, "import_db")["outputs"]
    assert outputs["import_user"] is None
    assert "cannot create users" in outputs["least_privilege"]
    hostile = _before_trailer(dump, f"INSERT INTO `{site['canary']}`.t VALUES (666);\n".encode())
    view = await _run(runtime, site, hostile, route=route)
    assert view["status"] == "failed" and "a table in another database" in view["error"]
    await _assert_nothing_escaped(site)


@pytest.mark.parametrize("connections", [2, 3, "auto"])
async def test_a_literal_spanning_lines_is_never_cut_between_import_sessions(
    runtime, site, mariadb_server, monkeypatch, connections
):
    """The filter reads the smuggling lines as one INSERT with a string literal; a split
    cutting on lines would run the DELETE alone, on live, as the DSN user (no CREATE
    USER: no import login to stop it). The failing statement at the end runs after
    all the sessions' rows; the restore fails and live stays as it was."""
    from envrestore.pipelines.engines import mariadb_split

    monkeypatch.setattr(mariadb_split, "SPLIT_AFTER_BYTES", 0)
    user, db = site["user"], site["dsn"].database
    _mariadb_admin(
        mariadb_server,
        f"REVOKE CREATE USER ON *.* FROM '{user}'@'%', '{user}'@'localhost'",
    )
    smuggle = (
        b"INSERT INTO `smug` VALUES ('x;\n"
        + f"INSERT INTO `smug` VALUES (0);DELETE FROM `{db}`.`wp_options`;\n".encode()
        + b"INSERT INTO `smug` VALUES (0)');\n"
    )
    rows = b"".join(b"INSERT INTO `smug` VALUES ('row %d');\n" % n for n in range(40))
    extra = b"CREATE TABLE `smug` (s TEXT);\n" + rows + smuggle * 3 + rows
    extra += b"INSERT INTO `no_such_table` VALUES (1);\n"  # fails on the server, after all
    dump = _before_trailer(await _real_dump(runtime, site), extra)
    view = await _run(runtime, site, dump, route="restore", mariadb_import_connections=connections)
    assert view["status"] == "failed" and "no_such_table" in view["error"]
    assert await snapshot(site["dsn"], site["files"], site["code"]) == site["before"]
    await _assert_nothing_escaped(site)


#: Where `mariadb --binary-mode` (10.11, checked by hand) reads a dump differently from
#: the statement filter: a line ending in a backslash inside a literal is joined to the
#: next, whose first byte it escapes; a statement `delimiter //` (or a line starting
#: `delimiterX`) changes the delimiter. Each hides a statement on live from the filter.
CLIENT_READS_DIFFERENTLY = {
    "backslash at the end of a line": (
        b"CREATE TABLE `bs` (s TEXT);\nINSERT INTO `bs` VALUES ('ab\\\n"
        b"' , ' ); DELETE FROM `{db}`.`wp_options`; -- ' );\n"
    ),
    "delimiter statement": (
        b"CREATE TABLE `dl` (i INT); delimiter //;\n"
        b"SELECT 2 // USE `{db}` // DELETE FROM wp_options //\nDELIMITER ;\n"
    ),
    # The client reads `--x` at a statement's start as a comment; the filter read code
    # there, so the quote opened a literal over the DELETE (/tmp/r1/dash.sql's shape).
    "--x at a statement's start": (
        b"CREATE TABLE `t2` (a text);\n--x '\nDELETE FROM `{db}`.`wp_options`;\n-- ';\n"
    ),
    # The server (and the filter) read `--` and a control byte as a comment, the client
    # as code: the client ran `\C gbk` the filter saw in a literal, and in GBK `\xbf\\`
    # is one character, so the quote after it ended the literal (/tmp/r1/gbk.sql's shape).
    "-- and a control byte": (
        b"CREATE TABLE `t3` (a text);\nSELECT 1 --\x01 '\n' \\C gbk\n--\x01 '\n# '\n;\n"
        b"INSERT INTO `t3` VALUES ('\xbf\\'); DELETE FROM `{db}`.`wp_options`; -- ');\n"
    ),
    # After /*! on a line the client ends a /* comment only at the second */: the
    # quote the filter read as code was inside that comment for the client.
    "a comment inside an executable comment": (
        b"/*!40101 /* x */ ' */ SELECT 1 */;\nDELETE FROM `{db}`.`wp_options`;\n-- '\n;\n"
    ),
}


@pytest.mark.parametrize("case", sorted(CLIENT_READS_DIFFERENTLY))
async def test_what_the_client_reads_differently_cannot_reach_live(
    runtime, site, mariadb_server, case
):
    """Run as the DSN user (no CREATE USER): only the filter stands between the dump and
    live. The dump fails at its end, so nothing is switched: live must be as it was."""
    user, db = site["user"], site["dsn"].database
    _mariadb_admin(
        mariadb_server,
        f"REVOKE CREATE USER ON *.* FROM '{user}'@'%', '{user}'@'localhost'",
    )
    extra = CLIENT_READS_DIFFERENTLY[case].replace(b"{db}", db.encode())
    extra += b"INSERT INTO `no_such_table` VALUES (1);\n"
    dump = _before_trailer(await _real_dump(runtime, site), extra)
    view = await _run(runtime, site, dump, route="restore", mariadb_import_connections=1)
    assert view["status"] == "failed"
    assert await snapshot(site["dsn"], site["files"], site["code"]) == site["before"]
    await _assert_nothing_escaped(site)


@pytest.mark.parametrize("route", ROUTES)
async def test_a_mysql8_dump_is_normalised_and_the_outputs_say_so(runtime, site, route):
    dump = (
        b"-- MySQL dump 10.13  Distrib 8.0.36, for Linux (x86_64)\n--\n"
        b"/*!40101 SET NAMES utf8mb4 */;\n"
        b"CREATE TABLE `wp_posts` (`ID` bigint NOT NULL, `t` text COLLATE utf8mb4_0900_ai_ci,"
        b" PRIMARY KEY (`ID`)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
        b" COLLATE=utf8mb4_0900_ai_ci;\n"
        b"INSERT INTO `wp_posts` VALUES (1,'hello');\n" + TRAILER
    )
    view = await _run(runtime, site, dump, route=route)
    assert view["status"] == "succeeded", view["error"]
    normalised = _step(view, "import_db")["outputs"]["normalised"]
    assert any("MySQL 8" in note for note in normalised)
    assert "rewrote collation utf8mb4_0900_ai_ci to utf8mb4_unicode_ci" in normalised
    [event] = await runtime.pool.fetch(
        "SELECT data FROM job_events WHERE job_id = $1 AND event = 'restore.dump_normalised'",
        uuid.UUID(view["id"]),
    )
    assert any("MySQL 8" in change for change in event["data"]["changes"])
    assert _root_query(
        site,
        "SELECT table_collation FROM information_schema.tables WHERE table_schema = "
        f"'{site['dsn'].database}' AND table_name = 'wp_posts'",
    ) == ["utf8mb4_unicode_ci"]


@pytest.mark.parametrize("route", ROUTES)
async def test_empty_and_truncated_dumps_are_refused_unless_allowed(runtime, site, route):
    dump = await _real_dump(runtime, site)
    view = await _run(runtime, site, b"", route=route)
    assert view["status"] == "failed" and "creates no table" in view["error"]
    assert await snapshot(site["dsn"], site["files"], site["code"]) == site["before"]

    half = dump[: dump.index(b";\n", len(dump) // 2) + 2]  # cut between two statements
    view = await _run(runtime, site, half, route=route)
    assert view["status"] == "failed" and "truncated" in view["error"]
    assert "--allow-incomplete-dump" in view["error"]
    assert "lorem ipsum" not in str(_step(view, "import_db"))  # no row data in the error
    assert await snapshot(site["dsn"], site["files"], site["code"]) == site["before"]

    view = await _run(runtime, site, half, route=route, allow_incomplete_dump=True)
    assert view["status"] == "succeeded", view["error"]
    notes = _step(view, "import_db")["outputs"]["normalised"]
    assert any("--allow-incomplete-dump" in note for note in notes)
    await _assert_nothing_escaped(site)


SLEEPER = b"CREATE TABLE a (i INT);\nSET SESSION max_statement_time = 0;\nSELECT SLEEP(3600);\n"


@pytest.mark.parametrize(("route", "connections"), ROUTE_CONNECTIONS)
async def test_a_statement_that_runs_forever_is_killed(runtime, site, route, connections):
    view = await _run(
        runtime,
        site,
        SLEEPER + TRAILER,
        route=route,
        import_statement_timeout=2,
        mariadb_import_connections=connections,
    )
    assert view["status"] == "failed"
    assert "ran longer than 2 s" in view["error"] and "SELECT SLEEP(3600)" in view["error"]
    assert _step(view, "import_db")["attempts"] == 1
    assert await snapshot(site["dsn"], site["files"], site["code"]) == site["before"]
    sleeping = _root_query(
        site, "SELECT COUNT(*) FROM information_schema.processlist WHERE info LIKE 'SELECT SLEEP%'"
    )
    assert sleeping == ["0"]
    await _assert_nothing_escaped(site)


@pytest.mark.parametrize("route", ROUTES)
async def test_an_import_without_progress_is_stopped(runtime, site, route):
    view = await _run(runtime, site, SLEEPER + TRAILER, route=route, import_idle_timeout=2)
    assert view["status"] == "failed"
    assert "made no progress" in view["error"] and "SELECT SLEEP(3600)" in view["error"]
    assert await snapshot(site["dsn"], site["files"], site["code"]) == site["before"]
    await _assert_nothing_escaped(site)


def _tar_with(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _zip_bytes() -> bytes:
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("dump.sql", "CREATE TABLE a (i int);")
    return buffer.getvalue()


FORMATS = {
    "postgresql dump": (
        gzip.compress(
            b"--\n-- PostgreSQL database dump\n--\n\n\\restrict abc\n\n"
            b"SET statement_timeout = 0;\nCREATE TABLE public.a (i integer);\n"
        ),
        "this is a PostgreSQL dump; the environment's database is MariaDB",
    ),
    "custom format": (
        gzip.compress(b"PGDMP\x01\x0e\x00\x04\x08\x01\x01\x00\x00\x00" + bytes(200)),
        "custom-format dump: restore with pg_restore or give a plain SQL dump",
    ),
    "mysql shell": (
        gzip.compress(_tar_with("dump/@.json", b'{"dumper": "mysqlsh"}')),
        "a MySQL Shell dump",
    ),
    "zip": (_zip_bytes(), "not gzip-compressed: found a zip archive"),
    "zip inside gzip": (gzip.compress(_zip_bytes()), "found a zip archive"),
}
#: Where an import's verdict differs, and why. An import finds the format from the
#: bytes, and a zip holding one .sql file is one it takes: the zip is opened and its
#: dump (one statement, no closing line) is refused as cut short, still at once.
IMPORT_FORMATS = {"zip": "the dump is truncated: it does not end with '-- Dump completed'"}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("case", sorted(FORMATS))
async def test_unknown_formats_fail_at_once_naming_what_was_found(runtime, site, case, route):
    data, message = FORMATS[case]
    if route == "import":
        message = IMPORT_FORMATS.get(case, message)
    view = await _run(runtime, site, data, route=route, raw=True)
    assert view["status"] == "failed"
    assert message in view["error"]
    assert _step(view, "import_db")["attempts"] == 1
    assert await snapshot(site["dsn"], site["files"], site["code"]) == site["before"]


@pytest.mark.parametrize("route", ROUTES)
async def test_control_characters_from_the_dump_never_reach_the_error(runtime, site, route):
    dump = b"CREATE TABLE a (i INT);\n\\! printf '\x1b[2J\x07'\n" + TRAILER
    view = await _run(runtime, site, dump, route=route)
    assert view["status"] == "failed"
    assert "client command" in view["error"] and "\\x1b" in view["error"]
    assert not any(ch in view["error"] for ch in "\x1b\x07\x00")
    assert await snapshot(site["dsn"], site["files"], site["code"]) == site["before"]


@pytest.mark.parametrize("route", ROUTES)
async def test_an_endless_line_is_refused_at_the_cap(runtime, site, route):
    dump = b"CREATE TABLE a (i INT);\nINSERT INTO a VALUES " + b"(1)," * (1 << 20)
    view = await _run(runtime, site, dump, route=route, sql_max_line_mb=1)
    assert view["status"] == "failed"
    assert "longer than 1048576 bytes" in view["error"]
    assert await snapshot(site["dsn"], site["files"], site["code"]) == site["before"]


def test_server_reason_puts_the_reason_first():
    from envrestore.pipelines.engines.mariadb_sql import server_reason

    text, data = server_reason(
        "ERROR 1142 (42000) at line 7: INSERT command denied to user 'x'@'localhost' for table"
    )
    assert text.startswith("line 7: INSERT command denied")
    assert data == {"server_error": 1142, "line": 7}
