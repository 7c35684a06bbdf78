"""Throughput of the statement filter beside its baselines, same data, same run.

    .venv/bin/python -m tests.bench.bench_sqlsafety [--mb 300] [--client-mb 100]
    make bench        # test_sqlsafety_throughput: 300 MB, clients on 100 MB

Builds MariaDB dumps (extended INSERTs of wp_posts/wp_postmeta shapes, with
mysqldump's escapes: as 1 MB lines, and as mariadb-dump 10.11 writes them, a row a
line) and a pg_dump-like one (a COPY block) as 1 MiB chunks, before any timing, and
prints one table: CPU MB/s of `filter_dump` (one core), of the
pass-through `LineSplitter` it is built on, and of the engine's own client
(`mariadb`, `psql`) importing the same dump unfiltered into a scratch database on
127.0.0.1 (dropped after). The filter must be far faster than the client it feeds.

Measured on the 2-core bench machine, CPU MB/s of one core, 100 MB of each dump
(issue 11; "before" is the pure-Python filter, also what runs when `_fastscan`
could not be built):

| dump | filter before | filter after (`_fastscan`) | line splitter | client, no filter |
|---|---:|---:|---:|---:|
| mariadb, a row a line (mariadb-dump) | 339 | 2,143 | 8,291 | ~21 (wall) |
| mariadb, 1 MB lines (mysqldump) | 382 | 1,755 | 5,249 | ~21 (wall) |
| postgresql, COPY | 835 | 4,785 | 7,224 | ~46 (wall) |

`make bench` (300 MB; clients on 100 MB, wall time on a loaded machine): filter
2,213 / 1,866 / 4,821 MB/s, clients 24 / 18 / 78 MB/s: the filter takes about 1 %
of the time its client does. Dumps made by the real tools from this data (mariadb-dump
150 MB, pg_dump 100 MB): 292 -> 1,550 MB/s and 661 -> 2,920 MB/s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

from envrestore.pipelines.sqlsafety import FilterReport, filter_dump
from envrestore.pipelines.sqlsafety.lines import LineSplitter

CHUNK = 1 << 20
# English-like: about one apostrophe (escaped as \') per 150 bytes of text.
WORDS = [
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "naïve",
    "☃",
    "the",
    "and",
    "with",
    "restore",
    "backup",
    "environment",
    "database",
    "files",
    "code",
    "site",
    "it\\'s",
    "content",
    "page",
    "post",
    "image",
    "gallery",
    "category",
    "theme",
    "plugin",
]


_POST_COLUMNS = (
    "`post_author` bigint,`post_date` datetime,`post_date_gmt` datetime,`post_content` longtext,"
    "`post_title` text,`post_excerpt` text,`post_status` varchar(20),`comment_status` varchar(20),"
    "`ping_status` varchar(20),`post_password` varchar(255),`post_name` varchar(200),"
    "`to_ping` text,`pinged` text,`post_modified` datetime,`post_modified_gmt` datetime,"
    "`post_content_filtered` longtext,`post_parent` bigint,`guid` varchar(255),"
    "`menu_order` int,`post_type` varchar(20),`post_mime_type` varchar(100),"
    "`comment_count` bigint"
)
#: wp_posts and wp_postmeta as the rows below fill them (the clients import them).
MYSQL_SCHEMA = (
    f"CREATE TABLE `wp_posts` (`ID` bigint unsigned NOT NULL,{_POST_COLUMNS},"
    "PRIMARY KEY (`ID`)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;\n"
    "CREATE TABLE `wp_postmeta` (`meta_id` bigint unsigned NOT NULL,`post_id` bigint,"
    "`meta_key` varchar(255),`meta_value` longtext,PRIMARY KEY (`meta_id`))"
    " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;\n"
).encode()


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _post_html(rng: random.Random) -> str:
    """~6 KB of escaped post HTML, as mysqldump writes it (\\" in attributes, \\r\\n)."""
    paragraphs = [
        f'<p class=\\"p{i}\\">{_text(rng, 40)}</p>\\r\\n<a href=\\"/x/{i}\\">{_text(rng, 3)}</a>'
        for i in range(18)
    ]
    return "\\r\\n".join(paragraphs)


def mysql_lines(total: int, one_row_per_line: bool = False) -> Iterator[bytes]:
    """1 MB extended INSERTs shaped like a WordPress dump: by bytes ~90% wp_posts
    (long escaped HTML literals), ~10% wp_postmeta (short rows, dense quotes). One
    line each (mysqldump), or the head and then one row per line (mariadb-dump 10.11)."""
    rng = random.Random(1)
    yield b"/*!40101 SET NAMES utf8mb4 */;\n"
    yield MYSQL_SCHEMA
    posts = [_post_html(rng) for _ in range(20)]
    size = 0
    row = 0
    while size < total:
        meta = row // 1000 % 10 == 9
        table = "wp_postmeta" if meta else "wp_posts"
        parts = []
        line_size = 0
        while line_size < CHUNK:
            row += 1
            if meta:
                value = f"({row},{row // 6},'_edit_lock','1700000000:{row % 7}')"
            else:
                value = (
                    f"({row},1,'2024-01-01 00:00:00','2024-01-01 00:00:00','{posts[row % 20]}',"
                    f"'Post {row}','','publish','open','open','','post-{row}','','',"
                    f"'2024-01-01 00:00:00','2024-01-01 00:00:00','',0,'https://x/?p={row}',0,"
                    f"'post','',0)"
                )
            parts.append(value)
            line_size += len(value) + 1
        if one_row_per_line:
            line = (f"INSERT INTO `{table}` VALUES\n" + ",\n".join(parts) + ";\n").encode()
        else:
            line = (f"INSERT INTO `{table}` VALUES " + ",".join(parts) + ";\n").encode()
        size += len(line)
        yield line


def postgres_lines(total: int) -> Iterator[bytes]:
    """A COPY block of text rows, as pg_dump writes table data."""
    rng = random.Random(2)
    yield b"SET standard_conforming_strings = on;\n"
    yield b"CREATE TABLE public.posts (id integer, body text, meta text);\n"
    yield b"CREATE SEQUENCE public.posts_id_seq;\n"
    yield b"COPY public.posts (id, body, meta) FROM stdin;\n"
    bodies = [_text(rng, 40).replace("\\'", "'") for _ in range(50)]
    size = 0
    row = 0
    while size < total:
        row += 1
        line = f"{row}\t{bodies[row % 50]}\t\\\\N {row}\n".encode()
        size += len(line)
        yield line
    yield b"\\.\n"
    yield b"SELECT pg_catalog.setval('public.posts_id_seq', 1, true);\n"


async def chunks_of(lines: Iterator[bytes]) -> AsyncIterator[bytes]:
    buf = bytearray()
    for line in lines:
        buf += line
        while len(buf) >= CHUNK:
            yield bytes(buf[:CHUNK])
            del buf[:CHUNK]
    if buf:
        yield bytes(buf)


async def replay(data: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in data:
        yield chunk


async def baseline(chunks: AsyncIterator[bytes]) -> int:
    splitter = LineSplitter()
    size = 0
    async for chunk in chunks:
        size += len(splitter.feed(chunk))
    return size + len(splitter.finish())


async def filtered(chunks: AsyncIterator[bytes], engine: str) -> int:
    report = FilterReport()
    size = 0
    async for out in filter_dump(chunks, engine=engine, report=report):  # type: ignore[arg-type]
        size += len(out)
    return size


async def timed(run: Callable[[], Awaitable[object]]) -> float:
    """CPU seconds of this process (one thread): what one core spends, whatever else
    the machine runs; the clients' figures are wall time of their own process."""
    start = time.process_time()
    await run()
    return time.process_time() - start


#: The engine's own client, reading a dump on stdin into database `{db}` (no filter).
CLIENTS = {
    "mariadb": (
        ["mariadb", "-h127.0.0.1", "-P3306", "-uroot", "-e", "CREATE DATABASE {db}"],
        ["mariadb", "--binary-mode", "-h127.0.0.1", "-P3306", "-uroot", "{db}"],
        ["mariadb", "-h127.0.0.1", "-P3306", "-uroot", "-e", "DROP DATABASE IF EXISTS {db}"],
    ),
    "postgresql": (
        ["psql", "-X", "-q", "-h127.0.0.1", "-Upostgres", "-c", "CREATE DATABASE {db}"],
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h127.0.0.1", "-Upostgres", "-d", "{db}"],
        ["psql", "-X", "-q", "-h127.0.0.1", "-Upostgres", "-c", "DROP DATABASE IF EXISTS {db}"],
    ),
}


def client_import(engine: str, data: list[bytes]) -> float | str:
    """Seconds the engine's client takes to import `data` unfiltered into a scratch
    database (created and dropped here), or why it could not run."""
    if sum(len(c) for c in data) == 0:
        return "not run"
    db = f"envrestore_bench_sql_{os.getpid()}"
    create, load, drop = ([a.format(db=db) for a in argv] for argv in CLIENTS[engine])
    if shutil.which(load[0]) is None:
        return f"no {load[0]} client"
    made = subprocess.run(create, capture_output=True, timeout=60)
    if made.returncode != 0:
        return f"no server: {made.stderr.decode(errors='replace').strip()[:60]}"
    try:
        start = time.perf_counter()
        proc = subprocess.Popen(load, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            for chunk in data:
                proc.stdin.write(chunk)
            proc.stdin.close()
        error = proc.stderr.read() if proc.stderr is not None else b""
        if proc.wait() != 0:
            return f"{load[0]} failed: {error.decode(errors='replace').strip()[:60]}"
        return time.perf_counter() - start
    finally:
        subprocess.run(drop, capture_output=True, timeout=120)


def prefix(data: list[bytes], total: int) -> list[bytes]:
    """The first chunks of `data` up to `total` bytes, cut after a whole statement
    (the client imports a complete, smaller dump)."""
    out: list[bytes] = []
    size = 0
    for chunk in data:
        if size + len(chunk) >= total:
            cut = chunk.rfind(b";\n", 0, total - size + 1)
            cut = (cut if cut >= 0 else chunk.find(b";\n")) + 2
            if cut >= 2:
                out.append(chunk[:cut])
                return out
        out.append(chunk)
        size += len(chunk)
    return out


def copy_prefix(data: list[bytes], total: int) -> list[bytes]:
    """The first `total` bytes of a COPY dump, cut after a row and closed with `\\.`."""
    out = prefix_bytes(data, total)
    last = out[-1]
    out[-1] = last[: last.rfind(b"\n") + 1] + b"\\.\n"
    return out


def prefix_bytes(data: list[bytes], total: int) -> list[bytes]:
    out: list[bytes] = []
    size = 0
    for chunk in data:
        out.append(chunk[: total - size])
        size += len(out[-1])
        if size >= total:
            break
    return out


def _rate(size_mb: float, seconds: float | str) -> str:
    return f"{size_mb / seconds:,.0f} MB/s" if isinstance(seconds, float) else seconds


async def measure(total_mb: int, client_mb: int) -> list[str]:
    """The table's rows: one per engine, every figure from this run."""
    rows = [
        "| engine | dump | filter (CPU) | line splitter (CPU) | client, no filter (wall) "
        "| filter time / client time |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    dumps: tuple[tuple[str, str, Callable[[int], Iterator[bytes]]], ...] = (
        ("mariadb", "mariadb (a row a line)", lambda n: mysql_lines(n, one_row_per_line=True)),
        ("mariadb", "mariadb (mysqldump)", mysql_lines),
        ("postgresql", "postgresql (COPY)", postgres_lines),
    )
    for engine, name, make in dumps:
        # Pre-build the chunks so generation cost is outside every timing.
        data = [c async for c in chunks_of(make(total_mb * 1_000_000))]
        size = sum(len(c) for c in data) / 1e6
        base = await timed(lambda d=data: baseline(replay(d)))  # type: ignore[misc]
        filt = await timed(lambda d=data, e=engine: filtered(replay(d), e))  # type: ignore[misc]
        cut = prefix if engine == "mariadb" else copy_prefix
        part = cut(data, client_mb * 1_000_000) if client_mb > 0 else []
        part_mb = sum(len(c) for c in part) / 1e6
        client = client_import(engine, part)
        ratio = f"{(part_mb / client) / (size / filt):.3f}" if isinstance(client, float) else ""
        rows.append(
            f"| {name} | {size:,.0f} MB | {_rate(size, filt)} | {_rate(size, base)} "
            f"| {_rate(part_mb, client)} ({part_mb:,.0f} MB) | {ratio} |"
        )
        del data, part
    return rows


def test_sqlsafety_throughput() -> None:
    """`make bench`: the filter, its splitter and the clients on the same dumps."""
    rows = asyncio.run(measure(BENCH_MB, CLIENT_MB))
    print("\nSQL statement filter (one core) vs the line splitter and the clients:")
    print("\n".join(rows))
    assert len(rows) == 5


#: Sizes `make bench` uses (MB): the filter's dump, and the part the clients import.
BENCH_MB = int(os.environ.get("ENVRESTORE_BENCH_SQL_MB", "300"))
CLIENT_MB = int(os.environ.get("ENVRESTORE_BENCH_SQL_CLIENT_MB", "100"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=BENCH_MB)
    parser.add_argument("--client-mb", type=int, default=CLIENT_MB)
    args = parser.parse_args()
    print("\n".join(asyncio.run(measure(args.mb, args.client_mb))))
