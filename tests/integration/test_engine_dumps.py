"""Engine dumps on the real servers: dump → gzip → gunzip → the engine's own client
reloads the same tables, row counts and content; check() names what is wrong."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from envrestore.pipelines.dsn import Dsn, parse_dsn
from envrestore.pipelines.engines import engine_for
from envrestore.pipelines.engines.mariadb import MariaDbEngine
from envrestore.pipelines.engines.postgres import PostgresEngine
from envrestore.pipelines.errors import BadInput, EnvrestoreError, NotFound, Unavailable
from envrestore.pipelines.streams import gzip_compress, gzip_decompress, run_consumer

pytestmark = pytest.mark.integration
# Fixtures mariadb_db, make_mariadb_db, postgres_db, ... come from tests/support/databases.py
# (re-exported by tests/conftest.py).

ALL_BYTES_HEX = bytes(range(256)).hex()

MARIADB_SCHEMA = rf"""
SET SESSION max_recursive_iterations = 100000;
CREATE TABLE posts (
  id INT PRIMARY KEY AUTO_INCREMENT,
  title VARCHAR(200) NOT NULL,
  body LONGTEXT NULL,
  data BLOB NULL,
  score DOUBLE NULL,
  created DATETIME(6) NOT NULL
) ENGINE=InnoDB;
INSERT INTO posts (title, body, data, score, created)
WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < 3000)
SELECT CONCAT('Post ', n, ' — naïve ☃ 😀'),
       IF(n % 7 = 0, NULL, REPEAT(CONCAT('line ', n, ' \'quoted\' \\ back\n'), 5)),
       IF(n % 5 = 0, NULL, UNHEX(SHA2(n, 256))),
       IF(n % 3 = 0, NULL, n / 7),
       TIMESTAMP('2024-01-01 00:00:00') + INTERVAL n SECOND
FROM seq;
CREATE TABLE meta (k VARCHAR(64) PRIMARY KEY, v VARBINARY(300) NULL);
INSERT INTO meta VALUES ('all_bytes', UNHEX('{ALL_BYTES_HEX}')), ('empty', ''), ('null', NULL);
CREATE TABLE empty_table (id INT);
CREATE TRIGGER posts_touch BEFORE UPDATE ON posts FOR EACH ROW SET NEW.score = NEW.score;
"""

POSTGRES_SCHEMA = rf"""
CREATE TABLE posts (
  id serial PRIMARY KEY,
  title text NOT NULL,
  body text,
  data bytea,
  score double precision,
  created timestamptz NOT NULL
);
INSERT INTO posts (title, body, data, score, created)
SELECT 'Post ' || n || ' — naïve ☃ 😀',
       CASE WHEN n % 7 = 0 THEN NULL ELSE repeat('line ' || n || E' \'quoted\' \\ back\n', 5) END,
       CASE WHEN n % 5 = 0 THEN NULL ELSE sha256(n::text::bytea) END,
       CASE WHEN n % 3 = 0 THEN NULL ELSE n / 7.0 END,
       '2024-01-01 00:00:00+00'::timestamptz + n * interval '1 second'
FROM generate_series(1, 3000) AS n;
CREATE SCHEMA extra;
CREATE TABLE extra.meta (k text PRIMARY KEY, v bytea);
INSERT INTO extra.meta VALUES ('all_bytes', decode('{ALL_BYTES_HEX}', 'hex')), ('empty', ''),
  ('null', NULL);
CREATE TABLE empty_table (id int);
"""


async def gz_round_trip(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    async for chunk in gzip_decompress(gzip_compress(chunks, 6), max_output=1 << 30):
        yield chunk


async def mariadb_checksums(engine: MariaDbEngine, dsn: Dsn) -> dict[str, str]:
    rows = await engine.query(dsn, "CHECKSUM TABLE posts, meta, empty_table EXTENDED;")
    return {name.split(".", 1)[1]: checksum for name, checksum in rows}


async def postgres_checksums(engine: PostgresEngine, dsn: Dsn) -> dict[str, str]:
    conn = await engine.connect(dsn)
    try:
        return {
            "posts": await conn.fetchval(
                "SELECT md5(string_agg(t::text, '|' ORDER BY id)) FROM posts t"
            ),
            "extra.meta": await conn.fetchval(
                "SELECT md5(string_agg(t::text, '|' ORDER BY k)) FROM extra.meta t"
            ),
        }
    finally:
        await conn.close()


async def test_mariadb_dump_reloads_with_same_rows_and_content(mariadb_db, make_mariadb_db):
    engine = engine_for(mariadb_db)
    assert isinstance(engine, MariaDbEngine)
    await engine.query(mariadb_db, MARIADB_SCHEMA)
    target = make_mariadb_db()

    await run_consumer(engine.client_argv(target), gz_round_trip(engine.dump(mariadb_db)))

    source_tables = await engine.list_tables(mariadb_db)
    assert source_tables == {"posts": 3000, "meta": 3, "empty_table": 0}
    assert await engine.list_tables(target) == source_tables
    assert await mariadb_checksums(engine, target) == await mariadb_checksums(engine, mariadb_db)
    triggers = await engine.query(target, "SHOW TRIGGERS;")
    assert [row[0] for row in triggers] == ["posts_touch"]


async def test_postgres_dump_reloads_with_same_rows_and_content(postgres_db, make_postgres_db):
    engine = engine_for(postgres_db)
    assert isinstance(engine, PostgresEngine)
    conn = await engine.connect(postgres_db)
    try:
        await conn.execute(POSTGRES_SCHEMA)
    finally:
        await conn.close()
    target = make_postgres_db()

    await run_consumer(engine.psql_argv(target), gz_round_trip(engine.dump(postgres_db)))

    source_tables = await engine.list_tables(postgres_db)
    assert source_tables == {"posts": 3000, "extra.meta": 3, "empty_table": 0}
    assert await engine.list_tables(target) == source_tables
    assert await postgres_checksums(engine, target) == await postgres_checksums(engine, postgres_db)


async def test_check_accepts_an_existing_database(mariadb_db, postgres_db):
    await engine_for(mariadb_db).check(mariadb_db)
    await engine_for(postgres_db).check(postgres_db)


@pytest.mark.parametrize("which", ["mariadb", "postgres"])
async def test_check_wrong_port_is_unavailable(which, mariadb_server, postgres_server):
    server = mariadb_server if which == "mariadb" else postgres_server
    dsn = parse_dsn(f"{server.engine}://{server.user}@127.0.0.1:1/{server.database}")
    with pytest.raises(Unavailable, match=r"cannot connect to \w+ at 127\.0\.0\.1:1\b"):
        await engine_for(dsn).check(dsn)


@pytest.mark.parametrize("which", ["mariadb", "postgres"])
async def test_check_missing_database_is_not_found(which, mariadb_server, postgres_server):
    server = mariadb_server if which == "mariadb" else postgres_server
    dsn = server.with_database(f"envr_missing_{uuid.uuid4().hex[:8]}")
    with pytest.raises(NotFound, match=f"database '{dsn.database}' does not exist"):
        await engine_for(dsn).check(dsn)


@pytest.mark.parametrize("which", ["mariadb", "postgres"])
async def test_dump_of_a_missing_database_raises_instead_of_an_empty_dump(
    which, mariadb_server, postgres_server
):
    server = mariadb_server if which == "mariadb" else postgres_server
    dsn = server.with_database(f"envr_missing_{uuid.uuid4().hex[:8]}")
    with pytest.raises(EnvrestoreError, match=dsn.database):
        async for _ in engine_for(dsn).dump(dsn):
            pass


async def test_postgres_unknown_role_is_bad_input(postgres_db):
    dsn = parse_dsn(
        f"postgresql://envr_no_such_role@{postgres_db.host}:{postgres_db.port}/{postgres_db.database}"
    )
    with pytest.raises(BadInput, match="refused the credentials"):
        await engine_for(dsn).check(dsn)


async def test_mariadb_password_goes_through_the_environment_and_wrong_one_is_bad_input(
    mariadb_db, monkeypatch
):
    engine = MariaDbEngine()
    user = f"envr_{uuid.uuid4().hex[:8]}"
    secret = f"pw-{uuid.uuid4().hex}"
    await engine.query(
        mariadb_db,
        f"CREATE USER '{user}'@'%' IDENTIFIED BY '{secret}';"
        f"GRANT ALL ON `{mariadb_db.database}`.* TO '{user}'@'%';"
        f"CREATE TABLE t (id INT); INSERT INTO t VALUES (1), (2);",
    )
    try:
        base = f"mariadb://{user}@{mariadb_db.host}:{mariadb_db.port}/{mariadb_db.database}"
        monkeypatch.setenv("ENVR_TEST_PW", secret)
        good = parse_dsn(f"{base}?password_env=ENVR_TEST_PW")
        await engine.check(good)
        dump = b"".join([chunk async for chunk in engine.dump(good)])
        assert b"INSERT INTO `t` VALUES" in dump

        wrong = parse_dsn(f"mariadb://{user}:not-{secret}@127.0.0.1:{mariadb_db.port}/x")
        with pytest.raises(BadInput, match="refused the credentials") as info:
            await engine.check(wrong.with_database(mariadb_db.database))
        assert secret not in str(info.value)
    finally:
        await engine.query(mariadb_db, f"DROP USER IF EXISTS '{user}'@'%';")
