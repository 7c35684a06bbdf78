"""Benchmark: shadow import throughput and switch windows on a ~300 MB database.

Run: .venv/bin/python -m tests.bench.bench_db_import [--posts 60000] [--repeat 2]
(not part of the test run). It generates a WordPress-like database on the local
MariaDB and PostgreSQL servers with SQL on the server, dumps it to a temporary
file, imports it into a shadow (PostgreSQL: pglz and lz4 TOAST compression,
one and two sessions, beside `psql -f` and `pg_restore -j2` of a -Fd dump of
the same data; MariaDB: 1, 2, 3 and "auto" connections; alternating, in the same run),
then times the switch windows:
switch, rollback, and a third swap, each over the full database.
Everything it creates is dropped at the end. Remember PERFORMANCE.md: on this
machine's journal-less ext4, repeated drop/create makes later runs slower.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Literal

from envrestore.pipelines.dsn import Dsn, parse_dsn
from envrestore.pipelines.engines import shadow
from envrestore.pipelines.engines.mariadb import MariaDbEngine
from envrestore.pipelines.engines.mariadb_shadow import MariaDbShadow
from envrestore.pipelines.engines.postgres import PostgresEngine
from envrestore.pipelines.engines.postgres_shadow import LZ4_OPTIONS, PostgresShadow
from envrestore.pipelines.engines.shadow import ShadowEngine, shadow_names
from envrestore.pipelines.sqlsafety import filter_dump
from envrestore.pipelines.streams import CHUNK_SIZE

MARIADB_URL = "mariadb://root@127.0.0.1:3306/"
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/"

MARIADB_FILL = """
CREATE TABLE wp_posts (
  ID BIGINT UNSIGNED PRIMARY KEY AUTO_INCREMENT,
  post_title TEXT NOT NULL, post_content LONGTEXT NOT NULL, post_date DATETIME NOT NULL,
  KEY post_date (post_date)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
CREATE TABLE wp_postmeta (
  meta_id BIGINT UNSIGNED PRIMARY KEY AUTO_INCREMENT, post_id BIGINT UNSIGNED NOT NULL,
  meta_key VARCHAR(255), meta_value LONGTEXT, KEY post_id (post_id), KEY meta_key (meta_key(191))
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
CREATE TABLE wp_log (id INT PRIMARY KEY AUTO_INCREMENT, post_id BIGINT);
INSERT INTO wp_posts (post_title, post_content, post_date)
SELECT CONCAT('Post ', p.seq), (SELECT GROUP_CONCAT(MD5(p.seq * 1000 + g.seq) SEPARATOR ' ')
       FROM seq_1_to_{words} g), '2024-01-01' + INTERVAL p.seq MINUTE
FROM seq_1_to_{posts} p;
INSERT INTO wp_postmeta (post_id, meta_key, meta_value)
SELECT p.seq, CONCAT('_meta_', m.seq), CONCAT(SHA2(p.seq * 10 + m.seq, 256), ' ', MD5(m.seq))
FROM seq_1_to_{posts} p JOIN seq_1_to_6 m;
CREATE TRIGGER wp_posts_ai AFTER INSERT ON wp_posts FOR EACH ROW
  INSERT INTO wp_log (post_id) VALUES (NEW.ID);
CREATE VIEW wp_recent AS SELECT ID, post_title FROM wp_posts WHERE post_date > '2024-02-01';
"""

POSTGRES_FILL = """
CREATE TABLE wp_posts (id bigserial PRIMARY KEY, post_title text NOT NULL,
  post_content text NOT NULL, post_date timestamp NOT NULL);
CREATE INDEX ON wp_posts (post_date);
CREATE TABLE wp_postmeta (meta_id bigserial PRIMARY KEY, post_id bigint NOT NULL,
  meta_key varchar(255), meta_value text);
CREATE INDEX ON wp_postmeta (post_id);
CREATE INDEX ON wp_postmeta (meta_key);
INSERT INTO wp_posts (post_title, post_content, post_date)
SELECT 'Post ' || n, array_to_string(ARRAY(SELECT md5((n * 1000 + g)::text)
       FROM generate_series(1, {words}) g), ' '), '2024-01-01'::timestamp + n * interval '1 minute'
FROM generate_series(1, {posts}) n;
INSERT INTO wp_postmeta (post_id, meta_key, meta_value)
SELECT p, '_meta_' || m, encode(sha256((p * 10 + m)::text::bytea), 'hex') || ' ' || md5(m::text)
FROM generate_series(1, {posts}) p, generate_series(1, 6) m;
CREATE VIEW wp_recent AS SELECT id, post_title FROM wp_posts WHERE post_date > '2024-02-01';
CREATE SEQUENCE wp_counter;
"""


async def file_chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as handle:
        while chunk := await asyncio.to_thread(handle.read, CHUNK_SIZE):
            yield chunk


async def dump_to(stream: AsyncIterator[bytes], path: Path) -> int:
    size = 0
    with path.open("wb") as handle:
        async for chunk in stream:
            handle.write(chunk)
            size += len(chunk)
    return size


async def swap_windows(engine: ShadowEngine, live: Dsn, shadow_db: str) -> list[float]:
    """Switch, rollback, then swap the restored content in once more: three full windows."""
    names = shadow_names(live.database, "bench")
    assert names.shadow == shadow_db
    windows = [(await shadow.switch(live, names)).window_seconds]
    windows.append((await shadow.rollback(live, names, "aside")).window_seconds)
    aside = shadow_names(live.database, "aside").rollback
    third = shadow_names(live.database, "third").rollback
    windows.append((await engine.swap_in(live, live.database, aside, third)).window_seconds)
    for name in (names.rollback, aside, third):
        await engine.drop_database(live, name)
    return windows


async def run_tool(
    engine: PostgresEngine, dsn: Dsn, tool: str, *args: str, lz4: bool = False
) -> float:
    """A libpq client on `dsn`'s server (PGOPTIONS lz4 TOAST when asked); its wall time."""
    env = {**os.environ, **engine.environment(dsn)}
    if lz4:
        env["PGOPTIONS"] = LZ4_OPTIONS
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        engine.tool(tool), *engine.connection_args(dsn), *args, env=env
    )
    if await proc.wait() != 0:
        raise RuntimeError(f"{tool} failed with exit code {proc.returncode}")
    return time.monotonic() - started


def mib_per_s(size: int, seconds: float) -> float:
    return size / seconds / (1 << 20)


async def bench_mariadb(posts: int, words: int, repeat: int, tmp: Path) -> None:
    engine = MariaDbEngine()
    shadow_engine = MariaDbShadow(engine)
    live = parse_dsn(MARIADB_URL + f"envr_bench_{uuid.uuid4().hex[:8]}")
    admin = live.with_database("information_schema")
    await engine.query(admin, f"CREATE DATABASE `{live.database}` CHARACTER SET utf8mb4;")
    try:
        started = time.monotonic()
        fill = MARIADB_FILL.format(posts=posts, words=words)
        await engine.query(live, "DELIMITER //\n" + fill.replace(";\n", "//\n"))
        await engine.query(live, "ANALYZE TABLE wp_posts, wp_postmeta;")
        size = await engine.query(
            admin,
            "SELECT SUM(data_length + index_length) FROM information_schema.tables "
            f"WHERE table_schema = '{live.database}';",
        )
        seconds = time.monotonic() - started
        print(f"mariadb: generated {int(size[0][0]) / 1e6:.0f} MB in {seconds:.1f}s")
        dump_path = tmp / "mariadb.sql"
        dump_size = await dump_to(engine.dump(live), dump_path)
        names = shadow_names(live.database, "bench")
        variants: tuple[int | Literal["auto"], ...] = (1, 2, 3, "auto")
        times: dict[int | str, list[float]] = {variant: [] for variant in variants}
        for _ in range(repeat):
            for connections in variants:
                await shadow.prepare_shadow(live, names)
                report = await shadow_engine.import_into(
                    live.with_database(names.shadow),
                    file_chunks(dump_path),
                    connections=connections,
                )
                times[connections].append(report.seconds)
                print(
                    f"mariadb: import {dump_size / 1e6:.0f} MB dump, connections={connections} "
                    f"({report.connections} sessions): {report.seconds:.1f}s "
                    f"({mib_per_s(dump_size, report.seconds):.1f} MiB/s)"
                )
        one = statistics.median(times[1])
        print(
            "mariadb: median import "
            + ", ".join(
                f"{variant} conn {statistics.median(t):.1f}s ({one / statistics.median(t):.2f}x)"
                for variant, t in times.items()
            )
        )
        client_start = []
        for _ in range(5):
            t0 = time.monotonic()
            await engine.query(admin, "SELECT 1;")
            client_start.append(time.monotonic() - t0)
        windows = await swap_windows(shadow_engine, live, names.shadow)
        print(
            "mariadb: RENAME TABLE windows (s): "
            + ", ".join(f"{w:.4f}" for w in windows)
            + f"; median {statistics.median(windows):.4f}; of which client start+connect "
            f"~{statistics.median(client_start):.4f}"
        )
    finally:
        for suffix in ("bench", "aside", "third"):
            names = shadow_names(live.database, suffix)
            await shadow_engine.drop_database(live, names.shadow)
            await shadow_engine.drop_database(live, names.rollback)
        await engine.query(admin, f"DROP DATABASE IF EXISTS `{live.database}`;")


async def bench_postgres(posts: int, words: int, repeat: int, tmp: Path) -> None:
    engine = PostgresEngine()
    shadow_engine = PostgresShadow(engine)
    live = parse_dsn(POSTGRES_URL + f"envr_bench_{uuid.uuid4().hex[:8]}")
    maintenance = await engine.connect(live.with_database("postgres"))
    await maintenance.execute(f'CREATE DATABASE "{live.database}" TEMPLATE template0')
    try:
        started = time.monotonic()
        conn = await engine.connect(live)
        try:
            await conn.execute(POSTGRES_FILL.format(posts=posts, words=words))
            size = await conn.fetchval("SELECT pg_database_size(current_database())")
        finally:
            await conn.close()
        print(f"postgres: generated {size / 1e6:.0f} MB in {time.monotonic() - started:.1f}s")
        dump_path = tmp / "postgres.sql"
        dump_size = await dump_to(engine.dump(live), dump_path)
        directory = tmp / "postgres.dir"
        await run_tool(
            engine,
            live,
            "pg_dump",
            "-Fd",
            "-j2",
            "--no-owner",
            "--no-privileges",
            "-f",
            str(directory),
            "--dbname",
            live.database,
        )
        names = shadow_names(live.database, "bench")
        target = live.with_database(names.shadow)

        async def envrestore(connections: int, lz4: bool, filtered: bool = False) -> float:
            chunks = file_chunks(dump_path)
            if filtered:
                chunks = filter_dump(chunks, engine="postgresql")
            report = await shadow_engine.import_into(
                target, chunks, connections=connections, lz4=lz4
            )
            return report.seconds

        async def psql_file() -> float:
            return await run_tool(
                engine,
                target,
                "psql",
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-o",
                os.devnull,
                "-f",
                str(dump_path),
                "--dbname",
                target.database,
                lz4=True,
            )

        async def pg_restore(jobs: int) -> float:
            return await run_tool(
                engine,
                target,
                "pg_restore",
                f"-j{jobs}",
                "--no-owner",
                "--no-privileges",
                "--dbname",
                target.database,
                str(directory),
                lz4=True,
            )

        contenders: dict[str, Callable[[], Awaitable[float]]] = {
            "envrestore 1 session, pglz": lambda: envrestore(1, False),
            "envrestore 1 session, lz4": lambda: envrestore(1, True),
            "envrestore 2 sessions, lz4": lambda: envrestore(2, True),
            "envrestore 2 sessions, lz4, filtered": lambda: envrestore(2, True, True),
            "psql -f (1 session), lz4": psql_file,
            "pg_restore -j2 of -Fd, lz4": lambda: pg_restore(2),
        }
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(repeat):
            for name, run in contenders.items():
                await shadow.prepare_shadow(live, names)
                seconds = await run()
                times[name].append(seconds)
                print(
                    f"postgres: import {dump_size / 1e6:.0f} MB, {name}: {seconds:.2f}s "
                    f"({mib_per_s(dump_size, seconds):.1f} MiB/s)"
                )
        baseline = statistics.median(times["pg_restore -j2 of -Fd, lz4"])
        print(f"\npostgres, {dump_size / 1e6:.0f} MB plain dump, median of {repeat}:")
        print("| contender | median s | MiB/s | vs pg_restore -j2 |\n|---|---:|---:|---:|")
        for name, values in times.items():
            median = statistics.median(values)
            print(
                f"| {name} | {median:.2f} | {mib_per_s(dump_size, median):.1f} "
                f"| {median / baseline:.2f} |"
            )
        await shadow.prepare_shadow(live, names)
        await envrestore(2, True)
        windows = await swap_windows(shadow_engine, live, names.shadow)
        print(
            "postgres: rename windows (s): "
            + ", ".join(f"{w:.4f}" for w in windows)
            + f"; median {statistics.median(windows):.4f}"
        )
    finally:
        for suffix in ("bench", "aside", "third"):
            names = shadow_names(live.database, suffix)
            await shadow_engine.drop_database(live, names.shadow)
            await shadow_engine.drop_database(live, names.rollback)
        await maintenance.execute(f'DROP DATABASE IF EXISTS "{live.database}" WITH (FORCE)')
        await maintenance.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=60000, help="wp_posts rows (~4.6 KB each)")
    parser.add_argument("--words", type=int, default=140, help="33-byte words per post")
    parser.add_argument("--repeat", type=int, default=2, help="imports per variant")
    parser.add_argument("--only", choices=("mariadb", "postgres"), default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="envr-bench-") as tmp:
        if args.only in (None, "mariadb"):
            await bench_mariadb(args.posts, args.words, args.repeat, Path(tmp))
        if args.only in (None, "postgres"):
            await bench_postgres(args.posts, args.words, args.repeat, Path(tmp))


if __name__ == "__main__":
    asyncio.run(main())
