"""Throughput of the statement filter against a pass-through line splitter, same run.

    .venv/bin/python tests/bench/bench_sqlsafety.py [--mb 300]

Builds ~300 MB mysqldump-like (1 MB extended INSERT lines of wp_posts/wp_postmeta
shapes) and pg_dump-like (COPY blocks) streams as 1 MiB chunks (built before timing,
so generation cost is in neither figure), and prints MB/s of `filter_dump` and of
the baseline (`LineSplitter` alone), and their ratio. Not part of the test run.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator

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


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _post_html(rng: random.Random) -> str:
    """~6 KB of escaped post HTML, as mysqldump writes it (\\" in attributes, \\r\\n)."""
    paragraphs = [
        f'<p class=\\"p{i}\\">{_text(rng, 40)}</p>\\r\\n<a href=\\"/x/{i}\\">{_text(rng, 3)}</a>'
        for i in range(18)
    ]
    return "\\r\\n".join(paragraphs)


def mysql_lines(total: int) -> Iterator[bytes]:
    """1 MB extended INSERT lines shaped like a WordPress dump: by bytes ~90% wp_posts
    (long escaped HTML literals), ~10% wp_postmeta (short rows, dense quotes)."""
    rng = random.Random(1)
    yield b"/*!40101 SET NAMES utf8mb4 */;\n"
    yield b"CREATE TABLE `wp_posts` (`ID` bigint(20) unsigned NOT NULL AUTO_INCREMENT,"
    yield b" `post_content` longtext NOT NULL, PRIMARY KEY (`ID`)) ENGINE=InnoDB;\n"
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
        line = (f"INSERT INTO `{table}` VALUES " + ",".join(parts) + ";\n").encode()
        size += len(line)
        yield line


def postgres_lines(total: int) -> Iterator[bytes]:
    """A COPY block of text rows, as pg_dump writes table data."""
    rng = random.Random(2)
    yield b"SET standard_conforming_strings = on;\n"
    yield b"CREATE TABLE public.posts (id integer, body text, meta text);\n"
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


async def timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    await run()  # type: ignore[misc]
    return time.perf_counter() - start


async def main(total_mb: int) -> None:
    total = total_mb * 1_000_000
    for engine, make in (("mariadb", mysql_lines), ("postgresql", postgres_lines)):
        # Pre-build the chunks so generation cost is outside both timings.
        data = [c async for c in chunks_of(make(total))]

        size = sum(len(c) for c in data) / 1e6
        base = await timed(lambda d=data: baseline(replay(d)))  # type: ignore[misc]
        filt = await timed(lambda d=data, e=engine: filtered(replay(d), e))  # type: ignore[misc]
        print(
            f"{engine:<11} {size:7.0f} MB  baseline {size / base:8.0f} MB/s  "
            f"filter {size / filt:6.0f} MB/s  filter/baseline time ratio {filt / base:5.2f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=300)
    asyncio.run(main(parser.parse_args().mb))
