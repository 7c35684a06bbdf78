"""Hostile PostgreSQL dumps through a real restore and a real import: refused before the
switch, canaries untouched.

The environment's DSN user here is the server's superuser (the worst case a
platform can configure): the import still runs as a per-job login that owns
only the shadow database, and the filter refuses what would need more. Each
dump goes both ways in (`tests/support/routes.py`): forged into the backup and
restored, and uploaded and imported.
"""

# ruff: noqa: F811 - `backed_up` is a fixture imported from test_restore_job

from __future__ import annotations

import dataclasses
import gzip
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from envrestore.pipelines.engines import engine_for
from envrestore.pipelines.engines.shadow import import_login_name
from envrestore.pipelines.restore.targets import job_tag
from tests.integration.test_restore_job import backed_up  # noqa: F401 - a fixture
from tests.support.content import snapshot
from tests.support.routes import ROUTES, part_bytes, run_hostile

pytestmark = [
    pytest.mark.integration,
    pytest.mark.parametrize("backed_up", ["postgresql"], indirect=True),
    pytest.mark.parametrize("route", ROUTES),
]

TRAILER = b"\n--\n-- PostgreSQL database dump complete\n--\n\n"


async def _run(runtime, site, data: bytes, *, route: str, **settings: Any) -> dict[str, Any]:
    """The database part `data` through `route`; the job's view."""
    rt = runtime
    if settings:
        rt = dataclasses.replace(runtime, settings=runtime.settings.model_copy(update=settings))
    return await run_hostile(rt, site, "database", data, route=route)


def _step(view: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in view["steps"] if s["name"] == name)


async def _logins(runtime, dsn) -> list[str]:
    """This test's jobs' import logins still on the server (other runs may share it)."""
    jobs = await runtime.pool.fetch("SELECT id FROM jobs")
    ours = [import_login_name(job_tag(job["id"])) for job in jobs]
    conn = await engine_for(dsn).connect(dsn)  # type: ignore[attr-defined]
    try:
        rows = await conn.fetch("SELECT rolname FROM pg_roles WHERE rolname = ANY($1)", ours)
    finally:
        await conn.close()
    return [r["rolname"] for r in rows]


async def _unchanged(runtime, site) -> None:
    assert await snapshot(site["dsn"], site["files"], site["code"]) == site["before"]
    assert await _logins(runtime, site["dsn"]) == []


async def test_a_c_function_bound_to_system_is_refused_and_never_runs(
    runtime, backed_up, tmp_path, route
):
    site = backed_up
    canary = Path("/tmp") / f"envrestore-canary-{uuid.uuid4().hex}"
    dump = (
        b"CREATE FUNCTION public.sys(cstring) RETURNS integer\n"
        b"    AS 'libc.so.6', 'system' LANGUAGE c STRICT;\n"
        b"CREATE TABLE public.t (i integer DEFAULT public.sys('touch "
        + str(canary).encode()
        + b"'));\n"
        b"COPY public.t (i) FROM stdin;\n1\n\\.\n" + TRAILER
    )
    view = await _run(runtime, site, gzip.compress(dump), route=route)
    assert view["status"] == "failed"
    assert "line 2: a function loaded from a server library" in view["error"]
    assert not canary.exists()
    await _unchanged(runtime, site)


async def test_a_custom_format_dump_fails_at_once_naming_it(runtime, backed_up, route):
    site = backed_up
    dsn = site["dsn"]
    custom = subprocess.run(
        ["pg_dump", "-Fc", "-h", dsn.host, "-p", str(dsn.port), "-U", dsn.user, dsn.database],
        check=True,
        capture_output=True,
    ).stdout
    view = await _run(runtime, site, gzip.compress(custom), route=route)
    assert view["status"] == "failed"
    assert "custom-format dump: restore with pg_restore or give a plain SQL dump" in view["error"]
    assert _step(view, "import_db")["attempts"] == 1
    await _unchanged(runtime, site)


async def test_a_mariadb_dump_says_so(runtime, backed_up, route):
    site = backed_up
    dump = (
        b"-- MariaDB dump 10.19  Distrib 10.11.19-MariaDB\n"
        b"/*!40101 SET NAMES utf8mb4 */;\nCREATE TABLE `t` (`i` int);\n"
        b"-- Dump completed on 2026-12-01\n"
    )
    view = await _run(runtime, site, gzip.compress(dump), route=route)
    assert view["status"] == "failed"
    assert "this is a MariaDB dump; the environment's database is PostgreSQL" in view["error"]
    assert _step(view, "import_db")["attempts"] == 1
    await _unchanged(runtime, site)


async def test_a_truncated_dump_is_refused(runtime, backed_up, route):
    site = backed_up
    dump = gzip.decompress(await part_bytes(runtime, site["backup"], "database"))
    half = dump[: dump.index(b"\\.\n") + 3]  # the first table's data, then nothing
    view = await _run(runtime, site, gzip.compress(half), route=route)
    assert view["status"] == "failed" and "truncated" in view["error"]
    await _unchanged(runtime, site)


async def test_a_statement_that_sleeps_forever_is_killed(runtime, backed_up, route):
    site = backed_up
    dump = (
        b"CREATE TABLE public.a (i integer);\n"
        b"CREATE MATERIALIZED VIEW public.v AS SELECT 1 AS s FROM pg_sleep(3600) WITH NO DATA;\n"
        b"REFRESH MATERIALIZED VIEW public.v;\n" + TRAILER
    )
    view = await _run(runtime, site, gzip.compress(dump), route=route, import_statement_timeout=2)
    assert view["status"] == "failed"
    assert "ran longer than 2 s" in view["error"]
    assert "REFRESH MATERIALIZED VIEW public.v" in view["error"]
    assert _step(view, "import_db")["attempts"] == 1
    await _unchanged(runtime, site)


async def test_a_restored_database_belongs_to_the_dsn_user(runtime, backed_up, route):
    site = backed_up
    data = await part_bytes(runtime, site["backup"], "database")
    view = await _run(runtime, site, data, route=route)
    assert view["status"] == "succeeded", view["error"]
    assert _step(view, "import_db")["outputs"]["import_user"].startswith("envr_i_")
    dsn = site["dsn"]
    conn = await engine_for(dsn).connect(dsn)  # type: ignore[attr-defined]
    try:
        owners = {
            r["tableowner"]
            for r in await conn.fetch("SELECT tableowner FROM pg_tables WHERE schemaname='public'")
        }
        db_owner = await conn.fetchval(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
        )
    finally:
        await conn.close()
    assert owners == {dsn.user} and db_owner == dsn.user
    assert await _logins(runtime, dsn) == []


async def test_a_statement_hidden_after_an_e_string_doubled_quote_is_refused(
    runtime, backed_up, route
):
    site = backed_up
    canary = Path("/tmp") / f"envrestore-canary-{uuid.uuid4().hex}"
    # psql: the literal is `a'' ` and COPY … PROGRAM runs; the filter saw a literal there.
    dump = (
        b"CREATE TABLE public.t (c text DEFAULT E'a''\\' ' ); "
        b"COPY (SELECT 1) TO PROGRAM $$touch " + str(canary).encode() + b"$$; -- ' );\n" + TRAILER
    )
    view = await _run(runtime, site, gzip.compress(dump), route=route)
    assert view["status"] == "failed"
    assert not canary.exists()  # the import login may not run programs either
    assert "COPY … PROGRAM" in view["error"]
    await _unchanged(runtime, site)
