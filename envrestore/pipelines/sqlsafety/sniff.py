"""What a database part really is, named before anything of it is imported.

A custom-format PostgreSQL dump, a MySQL Shell dump, a zip or a dump for the
other engine is not "an SQL statement the client chokes on": it gets one
permanent error, on the first attempt, that says what was found and what to
give instead. The worker never feeds such bytes to a client.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from envrestore.pipelines.archives.sniff import CODEC_MAGIC, checked_head, describe
from envrestore.pipelines.errors import BadInput
from envrestore.pipelines.streams import gzip_decompress, zstd_decompress

#: Decompressed bytes looked at before the first byte goes on.
HEAD_BYTES = 8192

_ENGINE_NAMES = {"mariadb": "MariaDB", "postgresql": "PostgreSQL"}
_POSTGRES_MARKS = re.compile(
    rb"-- PostgreSQL database dump|^\\restrict |^SET standard_conforming_strings"
    rb"|pg_catalog\.set_config\(|^COPY [^\n]* FROM stdin;",
    re.M,
)
_MARIADB_MARKS = re.compile(
    rb"-- (?:MySQL|MariaDB) dump|^/\*!40\d{3} SET |^/\*M!\d+|^LOCK TABLES `", re.M
)


def _refuse(found: str, advice: str, problem: str) -> BadInput:
    return BadInput(
        f"the database part is not a plain SQL dump: found {found}; {advice}",
        problem=problem,
        found=found,
    )


def check_dump_head(head: bytes, engine: str) -> None:
    """Raise BadInput unless `head` (a dump's first bytes) starts a plain SQL dump
    for `engine`."""
    if head.startswith(b"PGDMP"):
        raise _refuse(
            "a PostgreSQL custom-format dump (pg_dump -Fc)",
            "custom-format dump: restore with pg_restore or give a plain SQL dump (pg_dump -Fp)",
            "pg_custom",
        )
    if len(head) >= 262 and head[257:262] == b"ustar":
        if b"toc.dat" in head:
            raise _refuse(
                "a PostgreSQL tar- or directory-format dump (pg_dump -Ft/-Fd)",
                "restore it with pg_restore, or give a plain SQL dump (pg_dump -Fp)",
                "pg_archive",
            )
        if b"@.json" in head or b"@.done.json" in head:
            raise _refuse(
                "a MySQL Shell dump (util.dumpInstance/dumpSchemas)",
                "load it with MySQL Shell's util.loadDump, or give a mysqldump or "
                "mariadb-dump SQL file",
                "mysql_shell",
            )
        raise _refuse("a tar archive", "give the gzipped SQL dump itself", "archive")
    if b"@.json" in head[:512] and head.lstrip().startswith(b"{"):
        raise _refuse(
            "a MySQL Shell dump's metadata (@.json)",
            "load it with MySQL Shell's util.loadDump, or give a mysqldump or mariadb-dump "
            "SQL file",
            "mysql_shell",
        )
    if not head.strip():
        return  # nothing at all: refused at the end as a dump that creates no table
    what = describe(head)
    # Real dumps carry raw control bytes (ESC, latin1 text) in their literals: only a
    # known magic number or a NUL byte (both dump tools escape NUL) means "not SQL".
    if not what.startswith(("what looks like", "plain text", "unknown binary")) or (
        b"\x00" in head
    ):
        raise _refuse(
            what,
            "the database part must be a plain SQL dump (a backup's is gzipped; an import may "
            "also be zstd, bzip2 or a zip of one .sql)",
            "not_sql",
        )
    mine, other = ("mariadb", "postgresql") if engine != "postgresql" else ("postgresql", "mariadb")
    theirs = _POSTGRES_MARKS if other == "postgresql" else _MARIADB_MARKS
    ours = _MARIADB_MARKS if mine == "mariadb" else _POSTGRES_MARKS
    if theirs.search(head) and not ours.search(head):
        raise BadInput(
            f"this is a {_ENGINE_NAMES[other]} dump; the environment's database is "
            f"{_ENGINE_NAMES[mine]} (restore a backup of a {_ENGINE_NAMES[mine]} site, or "
            "convert the dump)",
            problem="other_engine",
            found=other,
        )


def sniffed(chunks: AsyncIterator[bytes], *, engine: str) -> AsyncIterator[bytes]:
    """The dump unchanged, once its first HEAD_BYTES passed `check_dump_head`."""
    return checked_head(chunks, HEAD_BYTES, lambda head: check_dump_head(head, engine))


def _check_compressed(head: bytes, magic: bytes, codec: str) -> None:
    """Refuse a raw part that is not `codec` data, naming what it is."""
    if not head:
        raise BadInput("the database part is empty: it has no bytes at all", problem="empty")
    if head.startswith(magic):
        return
    what = describe(head)
    if what.startswith("a PostgreSQL custom-format"):
        check_dump_head(head, "postgresql")
    raise BadInput(
        f"the database part is not {codec}-compressed: found {what}; give the "
        f"SQL dump compressed with {codec}",
        problem="not_compressed",
        found=what,
    )


def expect_dump_codec(raw: AsyncIterator[bytes], *, codec: str) -> AsyncIterator[bytes]:
    """The raw database part unchanged once its first bytes show `codec` (gzip, zstd,
    bzip2); otherwise BadInput naming what it is."""
    magic = CODEC_MAGIC[codec]
    return checked_head(raw, 512, lambda head: _check_compressed(head, magic, codec))


def decompress_dump(
    raw: AsyncIterator[bytes], *, key: str, max_output: int, engine: str
) -> AsyncIterator[bytes]:
    """The plain SQL inside a database part stored at `key`, its format checked first."""
    codec = "zstd" if key.endswith(".zst") else "gzip"
    checked = expect_dump_codec(raw, codec=codec)
    decompress = zstd_decompress if codec == "zstd" else gzip_decompress
    plain = decompress(checked, max_output=max_output)
    return sniffed(plain, engine=engine)
