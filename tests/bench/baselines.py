"""The inputs of the plain-tool baselines, made once per site before the timed rounds.

`import_db` is compared with the `mariadb` client loading the same dump in two
sessions, and `import_files` with `tar -x` of the same archive. Both read their
input from local disk, already downloaded (and the dump already inflated and
split), so they measure the server's and the kernel's own speed: the floor
envrestore's streaming steps are held to.

The split follows PERFORMANCE.md ("two connections with byte-balanced INSERT
streams"): everything but the `INSERT` statements is the schema, loaded first;
each extended `INSERT` goes whole to the lighter of two halves, each starting
with the dump's own session settings (the `/*!... SET ...*/;` lines before the
first table: character set, unique and foreign-key checks, SQL mode, time
zone). The dump is streamed line by line, never held.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import IO

#: Lines the schema session skips: table locks belong to the INSERTs, which it has not.
SKIPPED = (b"LOCK TABLES", b"UNLOCK TABLES")
#: The first of these ends the dump's header of session settings.
TABLES = (b"DROP ", b"CREATE ", b"USE ")


def download(url: str, out: Path) -> None:
    subprocess.run(["curl", "-sSf", "-o", str(out), url], check=True)


def inflater(key: str) -> list[str]:
    return ["zstd", "-dc"] if key.endswith(".zst") else ["gzip", "-dc"]


def prepare(parts_dir: Path, urls: dict[str, str], keys: dict[str, str]) -> dict[str, int]:
    """Download the files part and the dump; split the dump for two sessions. Sizes back."""
    parts_dir.mkdir(parents=True, exist_ok=True)
    download(urls["files"], parts_dir / "files.tar")
    packed = parts_dir / "database.packed"
    download(urls["database"], packed)
    split = parts_dir / "split"
    split.mkdir()
    with packed.open("rb") as source:
        proc = subprocess.Popen(
            [*inflater(keys["database"]), "-"], stdin=source, stdout=subprocess.PIPE
        )
        assert proc.stdout is not None
        sizes = split_dump(proc.stdout, split)
        assert proc.wait() == 0, "could not inflate the dump"
    packed.unlink()
    return sizes


def split_dump(dump: IO[bytes], out: Path) -> dict[str, int]:
    """schema.sql, half-0.sql and half-1.sql from one mariadb-dump stream.

    An INSERT may span lines (one row a line); it ends at the line ending in `;`
    (mariadb-dump escapes newlines inside values, so no value ends a line).
    """
    header: list[bytes] = []
    in_header = True
    halves: list[IO[bytes]] = []
    sizes = [0, 0]
    into = -1  # the half the INSERT being read goes to, -1 outside one
    with (out / "schema.sql").open("wb") as schema:
        try:
            for line in dump:
                if into < 0 and line.startswith(b"INSERT INTO "):
                    if not halves:
                        halves = [(out / f"half-{i}.sql").open("wb") for i in (0, 1)]
                        for half in halves:
                            half.writelines(header)
                    into = 0 if sizes[0] <= sizes[1] else 1
                if into >= 0:
                    halves[into].write(line)
                    sizes[into] += len(line)
                    if line.rstrip().endswith(b";"):
                        into = -1
                    continue
                if line.startswith(TABLES):
                    in_header = False
                elif in_header and line.startswith(b"/*") and b" SET " in line:
                    header.append(line)
                if not line.startswith(SKIPPED):
                    schema.write(line)
        finally:
            for half in halves:
                half.close()
    assert halves, "the dump has no INSERT statements to split"
    return {"half_0_bytes": sizes[0], "half_1_bytes": sizes[1]}


# ------------------------------------------------------------------ PostgreSQL

#: A post-data statement's table: its session, so no two sessions lock one table.
PG_TABLE = re.compile(rb"(?:ALTER TABLE(?: ONLY)?|\bON(?: ONLY)?) ([\w.\"]+)")


def prepare_pg(parts_dir: Path, url: str, key: str) -> dict[str, int]:
    """Download a pg_dump plain dump and split it for parallel psql sessions."""
    parts_dir.mkdir(parents=True, exist_ok=True)
    packed = parts_dir / "pg-database.packed"
    download(url, packed)
    split = parts_dir / "pg-split"
    split.mkdir()
    with packed.open("rb") as source:
        proc = subprocess.Popen([*inflater(key), "-"], stdin=source, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        sizes = split_pg_dump(proc.stdout, split)
        assert proc.wait() == 0, "could not inflate the PostgreSQL dump"
    packed.unlink()
    return sizes


def split_pg_dump(dump: IO[bytes], out: Path) -> dict[str, int]:
    """pre.sql, data-0/1.sql and post-0/1.sql from one `pg_dump --format=plain` stream.

    What pg_restore -j does, by hand: the schema before the first COPY in one
    session; the COPY rows (one a line) dealt to the lighter of two sessions,
    each with its own COPY header; after the data, the constraints and indexes
    in two sessions, each table's statements whole in one of them (the biggest
    tables first, each to the lighter session), so they never wait on a lock.
    Every file starts with the dump's own settings (its leading SET lines).
    """
    header: list[bytes] = []
    table_bytes: dict[bytes, int] = {}
    post: list[tuple[bytes | None, bytes]] = []  # (table, statement)
    sizes = [0, 0]
    total = 0
    copy: bytes | None = None  # the COPY header line of the block being read
    opened = [False, False]
    halves: list[IO[bytes]] = []
    statement: list[bytes] = []
    with (out / "pre.sql").open("wb") as pre:
        try:
            for line in dump:
                total += len(line)
                if copy is not None:
                    if line == b"\\.\n":
                        for i in (0, 1):
                            if opened[i]:
                                halves[i].write(line)
                        copy, opened = None, [False, False]
                        continue
                    i = 0 if sizes[0] <= sizes[1] else 1
                    if not opened[i]:
                        halves[i].write(copy)
                        opened[i] = True
                    halves[i].write(line)
                    sizes[i] += len(line)
                    table = copy.split()[1]
                    table_bytes[table] = table_bytes.get(table, 0) + len(line)
                elif line.startswith(b"COPY "):
                    if not halves:
                        halves = [(out / f"data-{i}.sql").open("wb") for i in (0, 1)]
                        for half in halves:
                            half.writelines(header)
                    copy = line
                elif not halves:
                    if line.startswith((b"SET ", b"SELECT pg_catalog.set_config")):
                        header.append(line)
                    pre.write(line)
                elif line.strip() and not line.startswith(b"--"):
                    statement.append(line)
                    if line.rstrip().endswith(b";"):
                        whole = b"".join(statement)
                        found = PG_TABLE.search(whole)
                        post.append((found.group(1) if found else None, whole))
                        statement = []
        finally:
            for half in halves:
                half.close()
    assert halves, "the dump has no COPY blocks to split"
    _write_post(out, header, post, table_bytes)
    return {"dump_bytes": total, "data_0_bytes": sizes[0], "data_1_bytes": sizes[1]}


def _write_post(
    out: Path,
    header: list[bytes],
    post: list[tuple[bytes | None, bytes]],
    table_bytes: dict[bytes, int],
) -> None:
    """post-0.sql and post-1.sql: each table's statements in one session, biggest first."""
    load = [0, 0]
    session: dict[bytes | None, int] = {None: 0}
    for table, size in sorted(table_bytes.items(), key=lambda kv: -kv[1]):
        i = 0 if load[0] <= load[1] else 1
        session[table] = i
        load[i] += size
    files = [(out / f"post-{i}.sql").open("wb") for i in (0, 1)]
    try:
        for handle in files:
            handle.writelines(header)
        for owner, whole in post:
            files[session.get(owner, 0)].write(whole)
    finally:
        for handle in files:
            handle.close()
