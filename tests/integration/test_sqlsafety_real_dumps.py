"""Real dumps of the local servers pass the statement filter (unchanged or only normalised)
and reload with the real clients into empty databases: same tables, rows and objects."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from envrestore.pipelines.dsn import Dsn
from envrestore.pipelines.engines import engine_for
from envrestore.pipelines.engines.mariadb import MariaDbEngine
from envrestore.pipelines.engines.postgres import PostgresEngine
from envrestore.pipelines.errors import UnsafeInput
from envrestore.pipelines.sqlsafety import FilterReport, filter_dump
from envrestore.pipelines.streams import run_consumer, run_producer

pytestmark = pytest.mark.integration

MARIADB_SCHEMA = r"""
CREATE TABLE posts (
  id INT PRIMARY KEY AUTO_INCREMENT,
  title VARCHAR(200) NOT NULL,
  body LONGTEXT NULL,
  data BLOB NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
INSERT INTO posts (title, body, data) VALUES
  ('it''s \\! rm -rf /', 'GRANT ALL; LOAD_FILE(''/etc/passwd''); USE mysql;\nline two\r\n', UNHEX('00FF5C27')),
  ('-- not a comment', '/* not a comment */ # nor this', NULL),
  ('DELIMITER ;;', 'back\\slash \\\\ and "double" quotes `tick`', 0x5C);
INSERT INTO posts (title, body) SELECT CONCAT('post ', seq), REPEAT('text \'q\' ', seq % 50)
  FROM seq_1_to_2000;
CREATE TABLE audit (id INT AUTO_INCREMENT PRIMARY KEY, note VARCHAR(100));
CREATE VIEW post_titles AS SELECT id, title FROM posts WHERE id < 10;
DELIMITER ;;
CREATE TRIGGER posts_audit AFTER INSERT ON posts FOR EACH ROW
BEGIN
  INSERT INTO audit (note) VALUES (CONCAT('added; ', NEW.id));
END;;
CREATE PROCEDURE count_posts(OUT n INT)
BEGIN
  SELECT COUNT(*) INTO n FROM posts; -- a comment with a quote '
END;;
CREATE FUNCTION shout(s TEXT) RETURNS TEXT DETERMINISTIC RETURN CONCAT(UPPER(s), '!');;
DELIMITER ;
CREATE EVENT purge_audit ON SCHEDULE EVERY 1 DAY DISABLE DO DELETE FROM audit WHERE id < 0;
"""

POSTGRES_SCHEMA = r"""
CREATE SCHEMA extra;
CREATE TABLE extra.posts (id serial PRIMARY KEY, title text NOT NULL, body text, data bytea);
INSERT INTO extra.posts (title, body, data) VALUES
  ('it''s \! rm -rf /', E'GRANT ALL;\n\\.\nCOPY x FROM PROGRAM ''id'';\t\\connect x', '\x00ff5c'),
  ('\.', E'back\\slash \\\\', NULL),
  ('$$ dollar $$', '-- not a comment /* nor */', NULL);
INSERT INTO extra.posts (title, body) SELECT 'post ' || n, repeat('text ''q'' ', n % 50)
  FROM generate_series(1, 2000) AS n;
CREATE TABLE audit (id serial PRIMARY KEY, note text);
CREATE FUNCTION extra.shout(s text) RETURNS text LANGUAGE plpgsql AS $body$
BEGIN
  -- it's a body; \! is not a meta-command in here
  RETURN upper(s) || '!';
END
$body$;
CREATE VIEW extra.titles AS SELECT id, extra.shout(title) AS t FROM extra.posts WHERE id < 10;
GRANT SELECT ON extra.posts TO PUBLIC;
COMMENT ON TABLE extra.posts IS 'posts; \connect elsewhere';
"""


async def filtered(chunks: AsyncIterator[bytes], engine: str, report: FilterReport):
    async for chunk in filter_dump(chunks, engine=engine, report=report):  # type: ignore[arg-type]
        yield chunk


async def mariadb_objects(engine: MariaDbEngine, dsn: Dsn) -> dict[str, list[list[str]]]:
    return {
        "triggers": await engine.query(
            dsn,
            "SELECT trigger_name FROM information_schema.triggers"
            f" WHERE trigger_schema = '{dsn.database}'",
        ),
        "routines": await engine.query(
            dsn,
            "SELECT routine_name FROM information_schema.routines"
            f" WHERE routine_schema = '{dsn.database}' ORDER BY 1",
        ),
        "views": await engine.query(
            dsn,
            "SELECT table_name FROM information_schema.views"
            f" WHERE table_schema = '{dsn.database}'",
        ),
        "events": await engine.query(
            dsn,
            "SELECT event_name FROM information_schema.events"
            f" WHERE event_schema = '{dsn.database}'",
        ),
        "checksum": [row[1:] for row in await engine.query(dsn, "CHECKSUM TABLE posts EXTENDED")],
        "shout": await engine.query(dsn, "SELECT shout('x')"),
    }


@pytest.mark.parametrize("databases_flag", [False, True], ids=["single-db", "--databases"])
async def test_mariadb_dump_with_routines_triggers_events_reloads_the_same(
    mariadb_db, make_mariadb_db, databases_flag
):
    engine = engine_for(mariadb_db)
    assert isinstance(engine, MariaDbEngine)
    await engine.query(mariadb_db, MARIADB_SCHEMA)
    target = make_mariadb_db()
    argv = [
        engine.dump_tool(),
        *engine.connection_args(mariadb_db),
        "--single-transaction",
        "--routines",
        "--triggers",
        "--events",
        "--hex-blob",
        "--default-character-set=utf8mb4",
        *(["--databases"] if databases_flag else []),
        mariadb_db.database,
    ]
    report = FilterReport()
    if databases_flag:
        # A --databases dump names its database: refused, naming the statement.
        with pytest.raises(UnsafeInput, match="CREATE DATABASE") as info:
            await run_consumer(
                engine.client_argv(target, "--binary-mode"),
                filtered(run_producer(argv, env=engine.environment(mariadb_db)), "mariadb", report),
                env=engine.environment(target),
            )
        assert "--databases" in str(info.value)
        assert await engine.list_tables(target) == {}
        return

    await run_consumer(
        engine.client_argv(target, "--binary-mode"),
        filtered(run_producer(argv, env=engine.environment(mariadb_db)), "mariadb", report),
        env=engine.environment(target),
    )

    tables = await engine.list_tables(mariadb_db)
    assert tables == {"posts": 2003, "audit": 0}
    assert await engine.list_tables(target) == tables
    assert await mariadb_objects(engine, target) == await mariadb_objects(engine, mariadb_db)
    assert "rewrote DEFINER= clauses to CURRENT_USER" in report.normalised


async def postgres_state(engine: PostgresEngine, dsn: Dsn) -> dict[str, object]:
    conn = await engine.connect(dsn)
    try:
        return {
            "posts": await conn.fetchval(
                "SELECT md5(string_agg(t::text, '|' ORDER BY id)) FROM extra.posts t"
            ),
            "view": await conn.fetch("SELECT * FROM extra.titles ORDER BY id"),
            "comment": await conn.fetchval("SELECT obj_description('extra.posts'::regclass)"),
        }
    finally:
        await conn.close()


@pytest.mark.parametrize(
    "plain_options",
    [[], ["--no-owner", "--no-privileges"]],
    ids=["with-owner-and-privileges", "no-owner-no-privileges"],
)
async def test_postgres_plain_dump_reloads_the_same(postgres_db, make_postgres_db, plain_options):
    engine = engine_for(postgres_db)
    assert isinstance(engine, PostgresEngine)
    conn = await engine.connect(postgres_db)
    try:
        await conn.execute(POSTGRES_SCHEMA)
    finally:
        await conn.close()
    target = make_postgres_db()
    argv = [
        engine.tool("pg_dump"),
        "--format=plain",
        *plain_options,
        *engine.connection_args(postgres_db),
        "--dbname",
        postgres_db.database,
    ]
    report = FilterReport()

    await run_consumer(
        engine.psql_argv(target),
        filtered(run_producer(argv, env=engine.environment(postgres_db)), "postgresql", report),
        env=engine.environment(target),
    )

    tables = await engine.list_tables(postgres_db)
    assert tables == {"extra.posts": 2003, "audit": 0}
    assert await engine.list_tables(target) == tables
    assert await postgres_state(engine, target) == await postgres_state(engine, postgres_db)
    assert report.copy_rows == 2003
    if plain_options:
        assert report.normalised == [
            "dropped SET statement_timeout = 0 (the restore sets the import's time limits)"
        ]
    else:
        assert any("OWNER TO" in note for note in report.normalised)
        assert any("GRANT/REVOKE" in note for note in report.normalised)
