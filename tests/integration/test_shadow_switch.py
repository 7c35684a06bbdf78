"""Shadow databases on the real servers: import beside live, switch in, roll back.

Each test builds a live database and a dump of different content (made by the
engines' own dump), imports it into the shadow and checks what a user would
look at under the live name: tables, rows, triggers firing, views, routines,
sequences, and the exact old content after a rollback.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest

from envrestore.pipelines.dsn import Dsn
from envrestore.pipelines.engines import shadow
from envrestore.pipelines.engines.mariadb import MariaDbEngine
from envrestore.pipelines.engines.postgres import PostgresEngine
from envrestore.pipelines.engines.shadow import ShadowNames, shadow_names
from envrestore.pipelines.errors import (
    BadInput,
    EnvrestoreError,
    NotFound,
    PermanentError,
    TransientError,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

MARIADB = MariaDbEngine()
POSTGRES = PostgresEngine()

MARIADB_LIVE = """
CREATE TABLE posts (id INT PRIMARY KEY AUTO_INCREMENT, title VARCHAR(100) NOT NULL);
CREATE TABLE log (id INT PRIMARY KEY AUTO_INCREMENT, msg VARCHAR(200));
INSERT INTO posts (title) VALUES ('old one'), ('old two'), ('old ☃ three');
INSERT INTO log (msg) VALUES ('old log');
CREATE TRIGGER posts_ai AFTER INSERT ON posts FOR EACH ROW
  INSERT INTO log (msg) VALUES (CONCAT('old:', NEW.title));
CREATE VIEW v_posts AS SELECT id, title FROM posts;
CREATE FUNCTION answer() RETURNS INT DETERMINISTIC RETURN 41;
CREATE EVENT purge_log ON SCHEDULE EVERY 1 DAY DISABLE DO DELETE FROM log;
"""

MARIADB_NEW = """
CREATE TABLE posts (id INT PRIMARY KEY AUTO_INCREMENT, title VARCHAR(100) NOT NULL);
CREATE TABLE log (id INT PRIMARY KEY AUTO_INCREMENT, msg VARCHAR(200));
CREATE TABLE extra (k VARCHAR(10) PRIMARY KEY);
INSERT INTO posts (title) VALUES ('new a'), ('new b');
INSERT INTO extra VALUES ('x'), ('y'), ('z'), ('w');
CREATE TRIGGER posts_ai AFTER INSERT ON posts FOR EACH ROW
  INSERT INTO log (msg) VALUES (CONCAT('new:', NEW.title));
CREATE TRIGGER posts_bi BEFORE INSERT ON posts FOR EACH ROW
  BEGIN SET NEW.title = TRIM(NEW.title); END;
CREATE VIEW v_posts AS SELECT id, UPPER(title) AS title FROM posts;
CREATE VIEW v_count AS SELECT COUNT(*) AS n FROM v_posts;
CREATE FUNCTION answer() RETURNS INT DETERMINISTIC RETURN 42;
"""

POSTGRES_LIVE = """
CREATE TABLE posts (id serial PRIMARY KEY, title text NOT NULL);
INSERT INTO posts (title) VALUES ('old one'), ('old two'), ('old ☃ three');
CREATE VIEW v_posts AS SELECT id, title FROM posts;
CREATE SEQUENCE counter START 100;
SELECT nextval('counter');
"""

POSTGRES_NEW = """
CREATE TABLE posts (id serial PRIMARY KEY, title text NOT NULL);
CREATE TABLE extra (k text PRIMARY KEY);
INSERT INTO posts (title) VALUES ('new a'), ('new b');
INSERT INTO extra VALUES ('x'), ('y'), ('z'), ('w');
CREATE VIEW v_posts AS SELECT id, upper(title) AS title FROM posts;
CREATE SEQUENCE counter START 500;
SELECT nextval('counter'), nextval('counter');
"""


async def mariadb_exec(dsn: Dsn, sql: str) -> list[list[str]]:
    return await MARIADB.query(dsn, "DELIMITER //\n" + sql.replace(";\n", "//\n"))


async def postgres_exec(dsn: Dsn, sql: str) -> None:
    conn = await POSTGRES.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def postgres_fetch(dsn: Dsn, sql: str) -> list[tuple[object, ...]]:
    conn = await POSTGRES.connect(dsn)
    try:
        return [tuple(row) for row in await conn.fetch(sql)]
    finally:
        await conn.close()


async def mariadb_content(dsn: Dsn) -> dict[str, str]:
    """Row checksums of every table plus the definitions a user relies on."""
    tables = await MARIADB.list_tables(dsn)
    sums = await MARIADB.query(dsn, "CHECKSUM TABLE " + ", ".join(f"`{t}`" for t in tables) + ";")
    content = {name.split(".", 1)[1]: value for name, value in sums}
    content["answer()"] = (await MARIADB.query(dsn, "SELECT answer();"))[0][0]
    content["v_posts"] = repr(await MARIADB.query(dsn, "SELECT * FROM v_posts ORDER BY id;"))
    return content


async def postgres_content(dsn: Dsn) -> dict[str, object]:
    content: dict[str, object] = {}
    for table in await POSTGRES.list_tables(dsn):
        rows = await postgres_fetch(
            dsn,
            f"SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM {table} t",
        )
        content[table] = rows[0][0]
    content["v_posts"] = await postgres_fetch(dsn, "SELECT * FROM v_posts ORDER BY id")
    content["counter"] = await postgres_fetch(dsn, "SELECT last_value FROM counter")
    return content


async def failing_dump(good: bytes, bad: bytes) -> AsyncIterator[bytes]:
    yield good
    yield bad
    yield b"CREATE TABLE after_the_error (id int);\n"


@pytest.fixture
async def cleanup_names(
    mariadb_server: Dsn, postgres_server: Dsn
) -> AsyncIterator[Callable[..., ShadowNames]]:
    """Registers shadow names; their shadow, rollback and aside databases are dropped after."""
    registered: list[tuple[Dsn, ShadowNames, str]] = []

    def register(live: Dsn, names: ShadowNames, aside_tag: str = "aside") -> ShadowNames:
        registered.append((live, names, aside_tag))
        return names

    yield register
    for live, names, aside_tag in registered:
        aside = shadow_names(names.live, aside_tag)
        await shadow.drop_shadow(live, names)
        await shadow.drop_rollback(live, names)
        await shadow.drop_rollback(live, aside)


@pytest.fixture
async def mariadb_restore(make_mariadb_db, cleanup_names):
    """(live dsn, names, dump bytes of the new content) with live filled with the old content."""
    live = make_mariadb_db()
    source = make_mariadb_db()
    await mariadb_exec(live, MARIADB_LIVE)
    await mariadb_exec(source, MARIADB_NEW)
    dump = b"".join([chunk async for chunk in MARIADB.dump(source)])
    names = cleanup_names(live, shadow_names(live.database, uuid.uuid4().hex[:8]))
    return live, names, dump


@pytest.fixture
async def postgres_restore(make_postgres_db, cleanup_names):
    live = make_postgres_db()
    source = make_postgres_db()
    await postgres_exec(live, POSTGRES_LIVE)
    await postgres_exec(source, POSTGRES_NEW)
    dump = b"".join([chunk async for chunk in POSTGRES.dump(source)])
    names = cleanup_names(live, shadow_names(live.database, uuid.uuid4().hex[:8]))
    return live, names, dump


async def stream(data: bytes, size: int = 4096) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]


# ---------------------------------------------------------------- names


def test_shadow_names_fit_both_engines_and_stay_distinct_for_long_names():
    """Long live names are cut to 63 bytes with a hash: two similar names never collide."""
    a = shadow_names("é" * 40 + "_site_a", "0123456789abcdef0123456789abcdef")
    b = shadow_names("é" * 40 + "_site_b", "0123456789abcdef0123456789abcdef")
    for names in (a, b):
        assert len(names.shadow.encode()) <= 63
        assert len(names.rollback.encode()) <= 63
        assert names.shadow.endswith("__envr_shadow_0123456789abcdef0123456789abcdef")
    assert a.shadow != b.shadow
    assert a.rollback != b.rollback
    short = shadow_names("sitedb", "j1")
    assert (short.shadow, short.rollback) == ("sitedb__envr_shadow_j1", "sitedb__envr_rollback_j1")


@pytest.mark.parametrize("tag", ["", "a-b", "x" * 33, "a;drop"])
def test_shadow_names_refuse_unsafe_tags(tag):
    with pytest.raises(BadInput):
        shadow_names("sitedb", tag)


# ---------------------------------------------------------------- MariaDB


async def test_mariadb_switch_shows_new_content_and_rollback_restores_the_old_exactly(
    mariadb_restore,
):
    live, names, dump = mariadb_restore
    before = await mariadb_content(live)
    await shadow.prepare_shadow(live, names)
    progress: list[int] = []
    report = await shadow.import_into(
        live.with_database(names.shadow), stream(dump), on_progress=progress.append
    )
    assert report.bytes == len(dump) == progress[-1]
    assert "--binary-mode" in report.client_options
    assert await shadow.sanity_check(live.with_database(names.shadow)) == {
        "extra": 4,
        "log": 0,
        "posts": 2,
    }

    switched = await shadow.switch(live, names)
    assert not switched.already_done
    assert switched.window_seconds > 0
    assert await MARIADB.list_tables(live) == {"extra": 4, "log": 0, "posts": 2}
    assert await MARIADB.query(live, "SELECT * FROM v_posts ORDER BY id;") == [
        ["1", "NEW A"],
        ["2", "NEW B"],
    ]
    assert await MARIADB.query(live, "SELECT n FROM v_count;") == [["2"]]
    assert await MARIADB.query(live, "SELECT answer();") == [["42"]]
    # The rollback point holds the old content, triggers and all.
    rollback_db = live.with_database(names.rollback)
    assert await mariadb_content(rollback_db) == before
    # Both new triggers fire on the live name (BEFORE trims, AFTER logs).
    await MARIADB.query(live, "INSERT INTO posts (title) VALUES ('  fresh  ');")
    assert await MARIADB.query(live, "SELECT msg FROM log;") == [["new:fresh"]]
    gone = await MARIADB.query(
        live,
        f"SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = '{names.shadow}';",
    )
    assert gone == [["0"]]

    again = await shadow.switch(live, names)
    assert again.already_done
    assert await MARIADB.list_tables(live) == {"extra": 4, "log": 1, "posts": 3}

    back = await shadow.rollback(live, names, "aside")
    assert not back.already_done
    assert await mariadb_content(live) == before
    await MARIADB.query(live, "INSERT INTO posts (title) VALUES ('later');")
    assert await MARIADB.query(live, "SELECT msg FROM log ORDER BY id;") == [
        ["old log"],
        ["old:later"],
    ]
    events = await MARIADB.query(
        live, "SELECT event_name FROM information_schema.events WHERE event_schema = DATABASE();"
    )
    assert events == [["purge_log"]]
    # The restored content was moved aside, not dropped.
    aside = live.with_database(shadow_names(live.database, "aside").rollback)
    assert await MARIADB.list_tables(aside) == {"extra": 4, "log": 1, "posts": 3}
    assert (await shadow.rollback(live, names, "aside")).already_done


async def test_mariadb_rename_table_alone_cannot_move_triggers_or_views(make_mariadb_db):
    """Why the switch recreates objects: the server refuses to move them across databases."""
    a, b = make_mariadb_db(), make_mariadb_db()
    await mariadb_exec(a, MARIADB_LIVE)
    with pytest.raises(PermanentError, match="Trigger in wrong schema"):
        await MARIADB.query(
            a, f"RENAME TABLE posts TO `{b.database}`.posts, log TO `{b.database}`.log;"
        )
    with pytest.raises(PermanentError, match="Changing schema"):
        await MARIADB.query(a, f"RENAME TABLE v_posts TO `{b.database}`.v_posts;")
    assert await MARIADB.list_tables(b) == {}


async def test_mariadb_switch_keeps_foreign_keys_working(make_mariadb_db, cleanup_names):
    live, source = make_mariadb_db(), make_mariadb_db()
    await mariadb_exec(live, "CREATE TABLE p (id INT PRIMARY KEY);\n")
    fk = (
        "CREATE TABLE p (id INT PRIMARY KEY);\n"
        "CREATE TABLE c (id INT PRIMARY KEY, p INT, FOREIGN KEY (p) REFERENCES p (id));\n"
        "INSERT INTO p VALUES (1);\nINSERT INTO c VALUES (1, 1);\n"
    )
    await mariadb_exec(source, fk)
    names = cleanup_names(live, shadow_names(live.database, "fk"))
    await shadow.prepare_shadow(live, names)
    await shadow.import_into(live.with_database(names.shadow), MARIADB.dump(source))
    await shadow.switch(live, names)
    with pytest.raises(PermanentError, match="foreign key constraint fails"):
        await MARIADB.query(live, "INSERT INTO c VALUES (2, 99);")
    await MARIADB.query(live, "INSERT INTO p VALUES (2);\nINSERT INTO c VALUES (2, 2);")
    assert await MARIADB.list_tables(live) == {"c": 2, "p": 2}


async def test_mariadb_switch_finishes_after_a_worker_died_mid_switch(mariadb_restore):
    """A switch killed after dropping live's triggers but before the rename completes later."""
    live, names, dump = mariadb_restore
    before = await mariadb_content(live)
    await shadow.prepare_shadow(live, names)
    await shadow.import_into(live.with_database(names.shadow), stream(dump))
    from envrestore.pipelines.engines.mariadb_shadow import MariaDbShadow

    engine = MariaDbShadow(MARIADB)
    charset = [["utf8mb4", "utf8mb4_unicode_ci"]]
    await engine._plan(live, names.live, names.shadow, names.rollback, charset[0])
    # What a dead attempt leaves: the plan saved, every trigger already dropped.
    await MARIADB.query(live, "DROP TRIGGER posts_ai;")
    await MARIADB.query(live.with_database(names.shadow), "DROP TRIGGER posts_ai;")

    assert not (await shadow.switch(live, names)).already_done
    await MARIADB.query(live, "INSERT INTO posts (title) VALUES ('x ');")
    assert await MARIADB.query(live, "SELECT msg FROM log;") == [["new:x"]]
    await shadow.rollback(live, names, "aside")
    assert await mariadb_content(live) == before


async def test_mariadb_failed_import_raises_and_live_is_unchanged(mariadb_restore):
    live, names, _dump = mariadb_restore
    before = await mariadb_content(live)
    await shadow.prepare_shadow(live, names)
    with pytest.raises(PermanentError, match=names.shadow) as info:
        await shadow.import_into(
            live.with_database(names.shadow),
            failing_dump(b"CREATE TABLE a (id int);\nINSERT INTO a VALUES (1);\n", b"BOGUS SQL;\n"),
        )
    assert "1064" in str(info.value)
    assert await mariadb_content(live) == before


async def test_mariadb_truncated_stream_raises(mariadb_restore):
    """A dump stream that breaks mid-way fails the import instead of half-importing quietly."""
    live, names, _dump = mariadb_restore
    await shadow.prepare_shadow(live, names)

    async def broken() -> AsyncIterator[bytes]:
        yield b"CREATE TABLE a (id int);\n"
        raise ConnectionResetError("download cut")

    with pytest.raises(TransientError, match="broke after 25 bytes"):
        await shadow.import_into(live.with_database(names.shadow), broken())


async def test_mariadb_prepare_twice_gives_one_empty_shadow_like_live(
    make_mariadb_db, mariadb_server, cleanup_names
):
    live = make_mariadb_db()
    await MARIADB.query(live, "ALTER DATABASE CHARACTER SET latin1 COLLATE latin1_swedish_ci;")
    names = cleanup_names(live, shadow_names(live.database, "prep"))
    await shadow.prepare_shadow(live, names)
    await MARIADB.query(live.with_database(names.shadow), "CREATE TABLE leftover (id int);")
    await shadow.prepare_shadow(live, names)
    assert await MARIADB.list_tables(live.with_database(names.shadow)) == {}
    rows = await MARIADB.query(
        mariadb_server,
        "SELECT default_character_set_name, default_collation_name FROM "
        f"information_schema.schemata WHERE schema_name = '{names.shadow}';",
    )
    assert rows == [["latin1", "latin1_swedish_ci"]]


async def test_mariadb_drops_are_idempotent_and_switch_without_shadow_is_not_found(
    mariadb_restore,
):
    live, names, _dump = mariadb_restore
    await shadow.prepare_shadow(live, names)
    for _ in range(2):
        await shadow.drop_shadow(live, names)
        await shadow.drop_rollback(live, names)
    with pytest.raises(NotFound, match=names.shadow):
        await shadow.switch(live, names)
    assert (await MARIADB.list_tables(live))["posts"] == 3


# ---------------------------------------------------------------- PostgreSQL


async def test_postgres_switch_shows_new_content_and_rollback_restores_the_old_exactly(
    postgres_restore,
):
    live, names, dump = postgres_restore
    before = await postgres_content(live)
    await shadow.prepare_shadow(live, names)
    report = await shadow.import_into(live.with_database(names.shadow), stream(dump))
    assert report.client_options == ("PGOPTIONS=-c default_toast_compression=lz4",)
    assert await shadow.sanity_check(live.with_database(names.shadow)) == {"extra": 4, "posts": 2}

    switched = await shadow.switch(live, names)
    assert not switched.already_done
    assert await POSTGRES.list_tables(live) == {"extra": 4, "posts": 2}
    assert await postgres_fetch(live, "SELECT * FROM v_posts ORDER BY id") == [
        (1, "NEW A"),
        (2, "NEW B"),
    ]
    assert await postgres_fetch(live, "SELECT last_value FROM counter") == [(501,)]
    assert await postgres_fetch(live, "INSERT INTO posts (title) VALUES ('c') RETURNING id") == [
        (3,)
    ]
    assert await postgres_content(live.with_database(names.rollback)) == before

    assert (await shadow.switch(live, names)).already_done
    assert await POSTGRES.list_tables(live) == {"extra": 4, "posts": 3}

    assert not (await shadow.rollback(live, names, "aside")).already_done
    assert await postgres_content(live) == before
    aside = live.with_database(shadow_names(live.database, "aside").rollback)
    assert await POSTGRES.list_tables(aside) == {"extra": 4, "posts": 3}
    assert (await shadow.rollback(live, names, "aside")).already_done


async def test_postgres_switch_terminates_sessions_on_live_and_succeeds(postgres_restore):
    live, names, dump = postgres_restore
    await shadow.prepare_shadow(live, names)
    await shadow.import_into(live.with_database(names.shadow), stream(dump))
    session = await POSTGRES.connect(live)
    shadow_session = await POSTGRES.connect(live.with_database(names.shadow))
    busy = await POSTGRES.connect(live)
    await busy.execute("BEGIN; LOCK TABLE posts IN ACCESS EXCLUSIVE MODE")
    try:
        assert not (await shadow.switch(live, names)).already_done
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError)):
            await session.fetchval("SELECT 1")
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError)):
            await shadow_session.fetchval("SELECT 1")
    finally:
        for conn in (session, shadow_session, busy):
            conn.terminate()
    assert await POSTGRES.list_tables(live) == {"extra": 4, "posts": 2}
    rows = await postgres_fetch(
        live.with_database("postgres"),
        "SELECT datname, datallowconn FROM pg_database "
        f"WHERE datname IN ('{live.database}', '{names.rollback}') ORDER BY 1",
    )
    assert rows == sorted([(live.database, True), (names.rollback, True)])


async def test_postgres_switch_finishes_a_half_done_rename(postgres_restore):
    """live renamed away but shadow not yet renamed (a worker died): the retry finishes it."""
    live, names, dump = postgres_restore
    before = await postgres_content(live)
    await shadow.prepare_shadow(live, names)
    await shadow.import_into(live.with_database(names.shadow), stream(dump))
    await postgres_exec(
        live.with_database("postgres"),
        f'ALTER DATABASE "{live.database}" ALLOW_CONNECTIONS false;'
        f'ALTER DATABASE "{live.database}" RENAME TO "{names.rollback}"',
    )
    assert not (await shadow.switch(live, names)).already_done
    assert await POSTGRES.list_tables(live) == {"extra": 4, "posts": 2}
    assert await postgres_content(live.with_database(names.rollback)) == before


async def test_postgres_failed_import_raises_and_live_is_unchanged(postgres_restore):
    live, names, _dump = postgres_restore
    before = await postgres_content(live)
    await shadow.prepare_shadow(live, names)
    with pytest.raises(PermanentError, match="while importing into the shadow database"):
        await shadow.import_into(
            live.with_database(names.shadow),
            failing_dump(b"CREATE TABLE a (id int);\nINSERT INTO a VALUES (1);\n", b"BOGUS SQL;\n"),
        )
    assert await postgres_content(live) == before
    tables = await POSTGRES.list_tables(live.with_database(names.shadow))
    assert "after_the_error" not in tables


async def test_postgres_prepare_twice_and_drops_are_idempotent(postgres_restore, postgres_server):
    live, names, _dump = postgres_restore
    search_path = '"$user", public, "odd ""name"""'
    await postgres_exec(
        live.with_database("postgres"),
        f"ALTER DATABASE \"{live.database}\" SET work_mem = '7MB';"
        f'ALTER DATABASE "{live.database}" SET search_path = {search_path}',
    )
    await shadow.prepare_shadow(live, names)
    await postgres_exec(live.with_database(names.shadow), "CREATE TABLE leftover (id int)")
    await shadow.prepare_shadow(live, names)
    assert await POSTGRES.list_tables(live.with_database(names.shadow)) == {}
    assert await postgres_fetch(live.with_database(names.shadow), "SHOW work_mem") == [("7MB",)]
    shown = await postgres_fetch(live.with_database(names.shadow), "SHOW search_path")
    assert shown == [(search_path,)]
    for _ in range(2):
        await shadow.drop_shadow(live, names)
        await shadow.drop_rollback(live, names)
    with pytest.raises(NotFound, match=names.shadow):
        await shadow.switch(live, names)


async def test_errors_name_the_database_and_never_the_password(mariadb_server):
    live = mariadb_server.with_database("envr_no_such_db_x")
    live = dataclasses.replace(live, password="s3cret-pw")
    with pytest.raises(EnvrestoreError) as info:
        await shadow.prepare_shadow(live, shadow_names(live.database, "t1"))
    assert "s3cret-pw" not in str(info.value)
    assert "envr_no_such_db_x" in str(info.value)


@pytest.mark.parametrize("which", ["mariadb", "postgres"])
async def test_prepare_in_place_wipes_live_and_survives_a_retry_after_its_drop(
    which, make_mariadb_db, make_postgres_db, mariadb_server, postgres_server
):
    """In-place mode passes shadow == live: wiped; a retry after the DROP recreates it."""
    live = make_mariadb_db() if which == "mariadb" else make_postgres_db()
    engine = MARIADB if which == "mariadb" else POSTGRES
    names = ShadowNames(live=live.database, shadow=live.database, rollback="unused")
    if which == "mariadb":
        await mariadb_exec(live, "CREATE TABLE t (id int);\n")
    else:
        await postgres_exec(live, "CREATE TABLE t (id int)")
    await shadow.prepare_shadow(live, names)
    assert await engine.list_tables(live) == {}
    admin = mariadb_server if which == "mariadb" else postgres_server
    if which == "mariadb":
        await MARIADB.query(admin, f"DROP DATABASE `{live.database}`;")
    else:
        await postgres_exec(admin, f'DROP DATABASE "{live.database}"')
    await shadow.prepare_shadow(live, names)
    assert await engine.list_tables(live) == {}


@pytest.mark.parametrize("connections", [2, 3])
async def test_mariadb_two_connection_import_loads_exactly_what_one_would(
    make_mariadb_db, cleanup_names, monkeypatch, connections
):
    """connections=2 or 3 splits big tables' INSERTs over the sessions: same rows,
    triggers not fired."""
    from envrestore.pipelines.engines import mariadb_split
    from envrestore.pipelines.streams import run_producer

    source, live = make_mariadb_db(), make_mariadb_db()
    await mariadb_exec(
        source,
        MARIADB_NEW
        + "SET SESSION max_recursive_iterations = 100000;\n"
        + "INSERT INTO posts (title) WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL "
        + "SELECT n + 1 FROM seq WHERE n < 5000) SELECT CONCAT('bulk ', n, REPEAT('x', n % 80)) "
        + "FROM seq;\n"
        + "INSERT INTO extra WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL "
        + "SELECT n + 1 FROM seq WHERE n < 3000) SELECT CONCAT('k', n) FROM seq;\n",
    )
    argv = [
        MARIADB.dump_tool(),
        *MARIADB.connection_args(source),
        "--net-buffer-length=4096",
        "--triggers",
        "--routines",
        "--",
        source.database,
    ]
    dump = b"".join([chunk async for chunk in run_producer(argv)])
    monkeypatch.setattr(mariadb_split, "SPLIT_AFTER_BYTES", 8192)
    splitters: list[mariadb_split.Splitter] = []

    class Recording(mariadb_split.Splitter):
        def __init__(self, database: str, sessions: int = 2) -> None:
            super().__init__(database, sessions)
            splitters.append(self)

    monkeypatch.setattr(mariadb_split, "Splitter", Recording)
    names = cleanup_names(live, shadow_names(live.database, "two"))
    await shadow.prepare_shadow(live, names)
    target = live.with_database(names.shadow)
    report = await shadow.import_into(target, stream(dump, 1 << 16), connections=connections)
    assert report.bytes == len(dump) and report.connections == connections
    # every other session carried a real share
    assert min(splitters[0].sent[1:]) > len(dump) // (2 * connections)
    assert await MARIADB.list_tables(target) == await MARIADB.list_tables(source)
    sums = "CHECKSUM TABLE posts, log, extra EXTENDED;"
    strip = lambda rows: [row[1] for row in rows]  # noqa: E731
    assert strip(await MARIADB.query(target, sums)) == strip(await MARIADB.query(source, sums))
    # The dump's rows did not fire the trigger a second time (log matches), new rows do.
    await MARIADB.query(target, "INSERT INTO posts (title) VALUES (' t ');")
    last = "SELECT COUNT(*), MAX(msg = 'new:t') FROM log;"
    assert await MARIADB.query(target, last) == [["5001", "1"]]


async def test_mariadb_two_connection_import_fails_cleanly_on_a_bad_statement(
    mariadb_restore, monkeypatch
):
    from envrestore.pipelines.engines import mariadb_shadow, mariadb_split

    live, names, dump = mariadb_restore
    monkeypatch.setattr(mariadb_split, "SPLIT_AFTER_BYTES", 0)
    await shadow.prepare_shadow(live, names)
    engine = mariadb_shadow.MariaDbShadow(MARIADB)
    with pytest.raises(PermanentError, match=names.shadow):
        await engine.import_into(
            live.with_database(names.shadow), failing_dump(dump, b"BOGUS SQL;\n"), connections=2
        )
