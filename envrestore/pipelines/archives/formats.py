"""What a part is packed in, found from its bytes for imports, from our names for backups.

An imported database or archive comes from a URL or an upload whose name
means nothing, so its codec is found from its first bytes ("auto"). Our own
backups keep the strict rule: their codec is fixed by how we named them
(`codec_for_key`), and a part that is not what its name says is refused.

Databases: .sql, .sql.gz, .sql.zst, .sql.bz2, or a zip holding one .sql file.
Archives: .tar, .tar.gz/.tgz, .tar.zst, .tar.bz2, or a zip. Every path ends
in the same checks: `sqlsafety.sniff.sniffed` for SQL, `TarGuard` and the same
writer for tar and zip members alike. A zip is spooled to `spool_dir` first
(its table of contents is at its end); nothing is ever held whole in memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Literal, get_args

import structlog

from envrestore.pipelines.archives.extract import DEFAULT_THREADS, extract_tar
from envrestore.pipelines.archives.sniff import (
    HEAD_BYTES,
    checked_head,
    describe,
    expect_compressed,
)
from envrestore.pipelines.archives.tarpolicy import ArchiveRules, TarLimits, TarReport
from envrestore.pipelines.archives.tarstream import check_tar
from envrestore.pipelines.archives.zipstream import check_zip, extract_zip, zipped_sql
from envrestore.pipelines.errors import BadInput
from envrestore.pipelines.readahead import STAGE_READAHEAD, read_ahead
from envrestore.pipelines.sqlsafety.sniff import check_dump_head, expect_dump_codec, sniffed
from envrestore.pipelines.streams import bzip2_decompress, gzip_decompress, zstd_decompress

log = structlog.get_logger(__name__)

Codec = Literal["plain", "gzip", "zstd", "bzip2", "zip"]
#: A codec, or "auto": found from the first bytes (anything from outside).
CodecChoice = Codec | Literal["auto"]
CODECS: tuple[Codec, ...] = get_args(Codec)
DATABASE_LABEL = "the database part"

_DECOMPRESS: dict[str, Callable[..., AsyncIterator[bytes]]] = {
    "gzip": gzip_decompress,
    "zstd": zstd_decompress,
    "bzip2": bzip2_decompress,
}


def _inflated(codec: str, raw: AsyncIterator[bytes], max_output: int) -> AsyncIterator[bytes]:
    """Decompressed a few MiB ahead of the reader (the SQL filter, the tar reader):
    inflating runs in a worker thread while the reader works on the event loop."""
    return read_ahead(_DECOMPRESS[codec](raw, max_output=max_output), STAGE_READAHEAD)


#: describe() phrases for data that may still be what we want (checked further on).
_MAYBE_PLAIN = ("a tar archive", "what looks like", "plain text", "unknown binary", "no data")


def detect_codec(head: bytes) -> Codec | None:
    """The codec of data starting with `head` (at least 512 bytes, unless it is shorter).

    "plain" is anything that may be a tar or SQL text (checked later, by the tar
    parser or the SQL sniffer); None is a format we recognise and never read
    (xz, 7z, rar, a custom-format pg_dump, a PDF...): `sniff.describe` names it.
    """
    if head[257:262] == b"ustar":  # a tar whose first name starts like a magic number
        return "plain"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    if head.startswith(b"BZh"):  # then a block size 1-9; without one, the decompressor
        return "bzip2"  # says "corrupt bzip2", which is what such data is
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")):
        return "zip"  # an empty zip (PK\x05\x06) is refused as empty by the zip reader
    if describe(head).startswith(_MAYBE_PLAIN):
        return "plain"
    return None


def codec_for_key(key: str) -> Codec:
    """The codec of a part we stored ourselves: our names say it (`.zst`, else gzip)."""
    return "zstd" if key.endswith(".zst") else "gzip"


async def _detected(
    raw: AsyncIterator[bytes], refuse: Callable[[bytes], BadInput]
) -> tuple[Codec, AsyncIterator[bytes]]:
    """Find the codec from the first bytes; the stream comes back whole."""
    found: list[Codec] = []

    def check(head: bytes) -> None:
        codec = detect_codec(head)
        if codec is None:
            raise refuse(head)
        found.append(codec)

    stream = checked_head(raw, HEAD_BYTES, check)
    first = await anext(stream, None)  # runs `check`, or raises its refusal
    return found[0], _prefixed(first, stream)


async def _prefixed(first: bytes | None, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first is not None:
        yield first
    async for chunk in rest:
        yield chunk


def _not_empty(head: bytes) -> None:
    if not head:
        raise BadInput(f"{DATABASE_LABEL} is empty: it has no bytes at all", problem="empty")


def _refuse_dump(engine: str) -> Callable[[bytes], BadInput]:
    def refuse(head: bytes) -> BadInput:
        if head.startswith(b"PGDMP"):
            check_dump_head(head, engine)  # a custom-format pg_dump gets its own advice
        what = describe(head)
        return BadInput(
            f"{DATABASE_LABEL} is not in a format that can be imported: found {what}; give a "
            "plain SQL dump (.sql), one compressed with gzip, zstd or bzip2 (.sql.gz, "
            ".sql.zst, .sql.bz2), or a zip holding one .sql file",
            problem="not_sql",
            found=what,
        )

    return refuse


def _refuse_archive(label: str) -> Callable[[bytes], BadInput]:
    def refuse(head: bytes) -> BadInput:
        what = describe(head)
        return BadInput(
            f"{label} is not an archive that can be imported: found {what}; give a tar "
            "archive (.tar, .tar.gz or .tgz, .tar.zst, .tar.bz2) or a zip",
            problem="not_tar",
            found=what,
        )

    return refuse


async def open_dump(
    raw: AsyncIterator[bytes],
    *,
    codec: CodecChoice,
    key: str,
    max_output: int,
    engine: str,
    spool_dir: Path,
) -> AsyncIterator[bytes]:
    """The plain SQL of a database part, its head checked as `sqlsafety.sniff.sniffed` does.

    `codec` "auto" finds the format from the bytes; a named codec must match them
    (backups: `codec_for_key(key)`, refused as before when it does not). A zip
    must hold exactly one .sql file; it is spooled to `spool_dir`, and the spool
    is removed when this stream ends, fails or is closed (`aclose`; a consumer
    that stops early should close it). Raises BadInput (format,
    contents), UnsafeInput (over `max_output`: a bomb), IntegrityError (damage).
    """
    if codec == "auto":
        codec, raw = await _detected(raw, _refuse_dump(engine))
        log.info("part.format", part="database", codec=codec, key=key)
        if codec == "plain":
            raw = checked_head(raw, 1, _not_empty)
        elif codec != "zip":
            raw = _inflated(codec, raw, max_output)
    elif codec == "plain":
        raw = checked_head(raw, 1, _not_empty)
    elif codec != "zip":
        raw = _inflated(codec, expect_dump_codec(raw, codec=codec), max_output)
    if codec != "zip":
        async for chunk in sniffed(raw, engine=engine):
            yield chunk
        return
    zipped = zipped_sql(raw, spool_dir=spool_dir, max_output=max_output, label=DATABASE_LABEL)
    async with contextlib.aclosing(zipped):  # the spool goes even when the sniffer refuses
        async for chunk in sniffed(zipped, engine=engine):
            yield chunk


async def _tar_stream(
    raw: AsyncIterator[bytes], *, codec: CodecChoice, key: str, limits: TarLimits, label: str
) -> tuple[Codec, AsyncIterator[bytes]]:
    """The codec, and for a tar codec the decompressed tar stream (raw for a zip)."""
    if codec == "auto":
        codec, raw = await _detected(raw, _refuse_archive(label))
        log.info("part.format", part=label, codec=codec, key=key)
    elif codec in _DECOMPRESS:
        raw = expect_compressed(raw, codec=codec, label=label)
    if codec in _DECOMPRESS:
        raw = _inflated(codec, raw, limits.max_stream_bytes)
    return codec, raw


async def extract_archive(
    raw: AsyncIterator[bytes],
    dest: Path,
    *,
    codec: CodecChoice,
    key: str,
    limits: TarLimits,
    rules: ArchiveRules,
    spool_dir: Path,
    threads: int = DEFAULT_THREADS,
) -> TarReport:
    """Extract a files or code part (tar in any codec, or zip) into `dest`, safely.

    `dest` must be missing or empty. "plain" is an uncompressed tar. The rules,
    caps and modes are `extract_tar`'s for every format; `rules.unwrap` allows
    any layout and unwraps a matching sole folder (`report.top` names it).
    On error `dest` holds a partial tree: the caller discards it. `threads`
    write a tar's small files (`settings.extract_threads`).
    """
    codec, stream = await _tar_stream(raw, codec=codec, key=key, limits=limits, label=rules.label)
    if codec == "zip":
        return await extract_zip(stream, dest, limits=limits, rules=rules, spool_dir=spool_dir)
    return await extract_tar(stream, dest, limits=limits, rules=rules, threads=threads)


async def check_archive(
    raw: AsyncIterator[bytes],
    *,
    codec: CodecChoice,
    key: str,
    limits: TarLimits,
    rules: ArchiveRules,
    spool_dir: Path,
) -> TarReport:
    """Every check `extract_archive` makes, writing nothing (the in-place pre-wipe verify)."""
    codec, stream = await _tar_stream(raw, codec=codec, key=key, limits=limits, label=rules.label)
    if codec == "zip":
        return await check_zip(stream, limits=limits, rules=rules, spool_dir=spool_dir)
    return await check_tar(stream, limits=limits, rules=rules)
