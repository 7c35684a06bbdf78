"""The PostgreSQL import login on the real server: what it cannot do, the whole
restore sequence through it, the watchdog's view of its statements, and errors."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from envrestore.pipelines.dsn import Dsn
from envrestore.pipelines.engines import shadow
from envrestore.pipelines.engines.postgres import PostgresEngine
from envrestore.pipelines.engines.postgres_shadow import PostgresShadow, psql_reason
from envrestore.pipelines.engines.shadow import import_login_name, shadow_names
from envrestore.pipelines.errors import PermanentError
from envrestore.pipelines.sqlsafety import FilterReport, filter_dump
from envrestore.pipelines.streams import run_producer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

POSTGRES = PostgresEngine()
SHADOW = PostgresShadow(POSTGRES)

SOURCE_SCHEMA = r"""
CREATE SCHEMA extra;
CREATE TABLE extra.posts (id serial PRIMARY KEY, title text NOT NULL, language text);
INSERT INTO extra.posts (title, language) SELECT 'post ' || n, 'en' FROM generate_series(1, 50) n;
CREATE TABLE audit (id serial PRIMARY KEY, note text);
CREATE FUNCTION extra.shout(s text) RETURNS text LANGUAGE plpgsql AS $body$
BEGIN
  RETURN upper(s) || '!';
END
$body$;
CREATE FUNCTION extra.log_post() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.audit (note) VALUES (NEW.title); RETURN NEW; END $$;
CREATE TRIGGER posts_log AFTER INSERT ON extra.posts FOR EACH ROW EXECUTE FUNCTION extra.log_post();
CREATE VIEW extra.titles AS SELECT id, extra.shout(title) AS t FROM extra.posts WHERE id < 5;
CREATE FUNCTION public.plus(x integer) RETURNS integer LANGUAGE sql IMMUTABLE RETURN x + 1;
"""


def _tag() -> str:
    return f"lp{uuid.uuid4().hex[:10]}"


async def _exec(dsn: Dsn, sql: str) -> None:
    conn = await POSTGRES.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _fetch(dsn: Dsn, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await POSTGRES.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def _stream(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _filtered(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    async for chunk in filter_dump(chunks, engine="postgresql", report=FilterReport()):
        yield chunk


async def _role_exists(admin: Dsn, role: str) -> bool:
    rows = await _fetch(admin, "SELECT 1 FROM pg_roles WHERE rolname = $1", role)
    return bool(rows)


OWNERS_SQL = """
SELECT c.relkind::text, n.nspname, c.relname, pg_get_userbyid(c.relowner)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
UNION ALL
SELECT 'f', n.nspname, p.proname, pg_get_userbyid(p.proowner)
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
UNION ALL
SELECT 'n', nspname, nspname, pg_get_userbyid(nspowner) FROM pg_namespace
WHERE nspname = 'extra'
"""


async def _owners(dsn: Dsn) -> set[str]:
    return {row[3] for row in await _fetch(dsn, OWNERS_SQL)}


@pytest.fixture
def admin(postgres_server: Dsn) -> Dsn:
    return postgres_server.with_database("postgres")


@pytest.fixture
def roles(admin: Dsn) -> Iterator[list[str]]:
    """Roles a test makes; dropped after it (with what they own)."""
    made: list[str] = []
    yield made

    async def cleanup() -> None:
        for role in made:
            if await _role_exists(admin, role):
                for (name,) in await _fetch(
                    admin, "SELECT datname FROM pg_database WHERE datallowconn"
                ):
                    # A database may be dropped meanwhile (other tests run beside this one).
                    with contextlib.suppress(Exception):
                        await _exec(
                            admin.with_database(name),
                            f'REASSIGN OWNED BY "{role}" TO postgres; DROP OWNED BY "{role}"',
                        )
                await _exec(admin, f'DROP ROLE IF EXISTS "{role}"')

    asyncio.run(cleanup())


# ------------------------------------------------------------------ (a) what the login cannot do

FORBIDDEN = [
    ("CREATE DATABASE envr_lp_forbidden", "create database"),
    ("CREATE ROLE envr_lp_forbidden SUPERUSER", "create role"),
    ("ALTER SYSTEM SET work_mem = '1MB'", "ALTER SYSTEM"),
    ("COPY (SELECT 1) TO PROGRAM 'id'", "PROGRAM"),
    ("SELECT rolpassword FROM pg_authid", "pg_authid"),
    ("CREATE FUNCTION sys(cstring) RETURNS int AS 'libc.so.6', 'system' LANGUAGE c", "c"),
    ("CREATE FUNCTION f() RETURNS int AS 'int4in' LANGUAGE internal", "internal"),
    ("UPDATE pg_catalog.pg_database SET datallowconn = true", "pg_database"),
    ("CREATE TABLE pg_catalog.evil (a int)", "pg_catalog"),
    ("SET ROLE postgres", "postgres"),
    ("SET SESSION AUTHORIZATION postgres", "session"),
    ("SELECT pg_read_file('/etc/passwd')", "pg_read_file"),
]


async def test_the_import_login_cannot_reach_beyond_its_database(postgres_db, admin, roles):
    live = postgres_db
    tag = _tag()
    names = shadow_names(live.database, tag)
    roles.append(import_login_name(tag))
    await shadow.prepare_shadow(live, names)

    login = await shadow.create_import_login(live, names.shadow, tag)

    assert login.user == import_login_name(tag)
    assert login.dsn.user == login.user and login.dsn.database == names.shadow
    assert login.dsn.password and login.dsn.password not in repr(login)
    flags = await _fetch(
        admin,
        "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, rolinherit,"
        " rolconnlimit FROM pg_roles WHERE rolname = $1",
        login.user,
    )
    # Room for 8 parallel sessions (twice: one stage's may still be ending) and a probe.
    assert tuple(flags[0]) == (False, False, False, False, False, False, 18)
    conn = await POSTGRES.connect(login.dsn)
    try:
        for sql, _ in FORBIDDEN:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(sql)
        # Its own database: it may build the site's schema there.
        await conn.execute("CREATE SCHEMA extra; CREATE TABLE extra.t (id int); CREATE TABLE u ()")
        await conn.execute("INSERT INTO extra.t VALUES (1)")
    finally:
        await conn.close()
    # Another database (live): PUBLIC may connect (the server's pg_hba decides), not create.
    other = await POSTGRES.connect(dataclasses.replace(login.dsn, database=live.database))
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await other.execute("CREATE TABLE public.intruder (a int)")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await other.execute("CREATE SCHEMA intruder")
    finally:
        await other.close()

    await shadow.hand_over(live, names.shadow, login)

    shadow_dsn = live.with_database(names.shadow)
    assert await _owners(shadow_dsn) == {live.user}
    owner = await _fetch(
        admin, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1", names.shadow
    )
    assert owner[0][0] == live.user
    await shadow.drop_import_login(live, tag)
    assert not await _role_exists(admin, login.user)
    await shadow.drop_import_login(live, tag)  # idempotent
    with pytest.raises(Exception):  # noqa: B017 - the role is gone: no login any more
        await POSTGRES.connect(login.dsn)


async def test_a_login_left_owning_a_shadow_is_still_dropped(postgres_db, admin, roles):
    """A worker died between import and hand-over: dropping the login re-owns its objects."""
    live = postgres_db
    tag = _tag()
    names = shadow_names(live.database, tag)
    roles.append(import_login_name(tag))
    await shadow.prepare_shadow(live, names)
    login = await shadow.create_import_login(live, names.shadow, tag)
    await _exec(login.dsn, "CREATE TABLE t (id int); CREATE SEQUENCE s")
    # A session still open, as a stuck psql would hold.
    stuck = await POSTGRES.connect(login.dsn)

    again = await shadow.create_import_login(live, names.shadow, tag)  # retry: made anew
    assert again.dsn.password != login.dsn.password
    await shadow.drop_import_login(live, tag)

    assert stuck.is_closed() or not await _role_exists(admin, login.user or "")
    assert not await _role_exists(admin, login.user or "")
    assert await _owners(live.with_database(names.shadow)) == {live.user}
    await stuck.close()


# ------------------------------------------------------------------ (b) the whole sequence


async def test_full_sequence_through_the_login_leaves_live_owned_by_the_dsn_user(
    make_postgres_db, admin, roles
):
    source = make_postgres_db()
    await _exec(source, SOURCE_SCHEMA)
    live = make_postgres_db()
    await _exec(live, "CREATE TABLE old_table (id int)")
    tag = _tag()
    names = shadow_names(live.database, tag)
    roles.append(import_login_name(tag))
    argv = [
        POSTGRES.tool("pg_dump"),
        "--format=plain",
        *POSTGRES.connection_args(source),
        "--dbname",
        source.database,
    ]

    await shadow.prepare_shadow(live, names)
    login = await shadow.create_import_login(live, names.shadow, tag)
    assert login.user is not None
    report = await shadow.import_into(
        login.dsn, _filtered(run_producer(argv, env=POSTGRES.environment(source)))
    )
    await shadow.hand_over(live, names.shadow, login)
    await shadow.drop_import_login(live, tag)
    switched = await shadow.switch(live, names)

    assert report.bytes > 0 and not switched.already_done
    assert await POSTGRES.list_tables(live) == {"extra.posts": 50, "audit": 0}
    assert await _owners(live) == {live.user}
    assert not await _role_exists(admin, login.user)
    await _exec(live, "INSERT INTO extra.posts (title) VALUES ('new')")
    rows = await _fetch(live, "SELECT note FROM audit")
    assert [row[0] for row in rows] == ["new"]
    assert (await _fetch(live, "SELECT t FROM extra.titles WHERE id = 1"))[0][0] == "POST 1!"
    assert (await _fetch(live, "SELECT public.plus(1)"))[0][0] == 2
    assert await POSTGRES.list_tables(live.with_database(names.rollback)) == {"old_table": 0}


async def test_a_dsn_user_with_createrole_but_no_superuser_gets_a_login(
    make_postgres_db, admin, roles, postgres_server
):
    """The platform's usual DSN user: CREATEDB CREATEROLE, owner of the live database."""
    dsn_user = f"envr_lp_admin_{uuid.uuid4().hex[:8]}"
    roles.append(dsn_user)
    await _exec(admin, f"CREATE ROLE \"{dsn_user}\" LOGIN PASSWORD 'pw' CREATEDB CREATEROLE")
    created = make_postgres_db()
    await _exec(admin, f'ALTER DATABASE "{created.database}" OWNER TO "{dsn_user}"')
    live = dataclasses.replace(created, user=dsn_user, password="pw")
    await _exec(live, f'ALTER SCHEMA public OWNER TO "{dsn_user}"')
    tag = _tag()
    names = shadow_names(live.database, tag)
    roles.append(import_login_name(tag))
    dump = b"CREATE TABLE posts (id int PRIMARY KEY, title text);\n" + (
        b"COPY public.posts (id, title) FROM stdin;\n1\tone\n2\ttwo\n\\.\n"
    )

    await shadow.prepare_shadow(live, names)
    login = await shadow.create_import_login(live, names.shadow, tag)
    assert login.user is not None
    await shadow.import_into(login.dsn, _filtered(_stream(dump)))
    await shadow.hand_over(live, names.shadow, login)
    await shadow.drop_import_login(live, tag)
    await shadow.switch(live, names)

    assert await POSTGRES.list_tables(live) == {"posts": 2}
    owners = await _fetch(
        live, "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 'posts'"
    )
    assert owners[0][0] == dsn_user
    assert not await _role_exists(admin, login.user)


async def test_a_dsn_user_without_createrole_imports_as_itself_with_a_reason(
    make_postgres_db, admin, roles
):
    dsn_user = f"envr_lp_plain_{uuid.uuid4().hex[:8]}"
    roles.append(dsn_user)
    await _exec(admin, f"CREATE ROLE \"{dsn_user}\" LOGIN PASSWORD 'pw' CREATEDB")
    created = make_postgres_db()
    await _exec(admin, f'ALTER DATABASE "{created.database}" OWNER TO "{dsn_user}"')
    live = dataclasses.replace(created, user=dsn_user, password="pw")
    tag = _tag()
    names = shadow_names(live.database, tag)
    await shadow.prepare_shadow(live, names)

    login = await shadow.create_import_login(live, names.shadow, tag)

    assert login.user is None
    assert "CREATEROLE" in login.reason
    assert login.dsn == live.with_database(names.shadow)
    await shadow.hand_over(live, names.shadow, login)  # no-op
    await shadow.drop_import_login(live, tag)  # no-op


# ------------------------------------------------------------------ (c) the watchdog's view


async def test_running_statements_sees_the_login_and_end_sessions_stops_it(
    postgres_db, admin, roles
):
    live = postgres_db
    tag = _tag()
    names = shadow_names(live.database, tag)
    roles.append(import_login_name(tag))
    await shadow.prepare_shadow(live, names)
    login = await shadow.create_import_login(live, names.shadow, tag)
    conn = await POSTGRES.connect(login.dsn)
    sleeper = asyncio.create_task(conn.execute("SELECT pg_sleep(30)"))
    try:
        statements = []
        for _ in range(200):
            statements = await SHADOW.running_statements(live, names.shadow, login.user)
            if statements:
                break
            await asyncio.sleep(0.02)
        assert len(statements) == 1
        assert "pg_sleep(30)" in statements[0].text
        assert 0 <= statements[0].seconds < 30
        assert await SHADOW.running_statements(live, names.shadow, "someone_else") == []
        assert await SHADOW.running_statements(live, live.database, login.user) == []

        await SHADOW.end_sessions(live, names.shadow, login.user)

        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError)):
            await asyncio.wait_for(sleeper, 10)
        assert await SHADOW.running_statements(live, names.shadow, None) == []
    finally:
        sleeper.cancel()
        conn.terminate()
    await shadow.drop_import_login(live, tag)


# ------------------------------------------------------------------ errors


async def test_a_failing_import_names_the_reason_and_line_first(postgres_db, roles):
    live = postgres_db
    tag = _tag()
    names = shadow_names(live.database, tag)
    roles.append(import_login_name(tag))
    await shadow.prepare_shadow(live, names)
    login = await shadow.create_import_login(live, names.shadow, tag)
    dump = b"CREATE TABLE a (id int);\n\nINSERT INTO a VALUES ('x\x1b[31m');\n"

    with pytest.raises(PermanentError) as info:
        await shadow.import_into(login.dsn, _stream(dump))

    message = str(info.value)
    assert message.startswith("line 3: ERROR: invalid input syntax for type integer")
    assert "while importing into the shadow database" in message
    assert names.shadow not in message and str(live.port) not in message
    assert "\x1b" not in message and "\\x1b" in message
    assert info.value.data["line"] == 3
    assert info.value.data["database"] == names.shadow
    await shadow.drop_import_login(live, tag)


@pytest.mark.parametrize(
    ("stderr", "reason", "line"),
    [
        (
            'psql:<stdin>:12: ERROR:  relation "x" does not exist | LINE 1: SELECT * FROM x;',
            'line 12: ERROR: relation "x" does not exist | LINE 1: SELECT * FROM x;',
            12,
        ),
        ("psql: error: connection to server failed", "connection to server failed", None),
        ("", "psql failed without an error message", None),
    ],
)
def test_psql_reason(stderr, reason, line):
    assert psql_reason(stderr) == (reason, line)


def test_psql_reason_cuts_long_server_text():
    reason, _ = psql_reason("psql:<stdin>:1: ERROR:  " + "x" * 1000)
    assert len(reason) < 320
