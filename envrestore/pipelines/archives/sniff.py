"""Naming what a part holds when it is not what it should be (a zip, an SQL dump...).

A files or code part must be a gzip (or zstd) of a tar. When it is not, the
error names what was found from its first bytes, so the user knows what to
redo: "the files part is not a tar archive: found a zip archive; make it with
`tar -czf`". Such an error is permanent: the same bytes fail the same way.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable

from envrestore.pipelines.errors import BadInput
from envrestore.pipelines.streams import gzip_decompress, zstd_decompress

#: Bytes of the raw part looked at before it reaches the decompressor.
HEAD_BYTES = 512

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", "a zip archive"),
    (b"PK\x05\x06", "an empty zip archive"),
    (b"PK\x07\x08", "a zip archive"),
    (b"\x1f\x8b", "gzip-compressed data (the part is compressed twice)"),
    (b"BZh", "a bzip2-compressed file"),
    (b"\xfd7zXZ\x00", "an xz-compressed file"),
    (b"\x28\xb5\x2f\xfd", "a zstd-compressed file"),
    (b"7z\xbc\xaf\x27\x1c", "a 7z archive"),
    (b"Rar!\x1a\x07", "a rar archive"),
    (b"\x04\x22\x4d\x18", "an lz4-compressed file"),
    (b"\x1f\x9d", "a compress (.Z) file"),
    (b"PGDMP", "a PostgreSQL custom-format dump (pg_dump -Fc)"),
    (b"SQLite format 3\x00", "an SQLite database"),
    (b"%PDF", "a PDF document"),
)
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
BZIP2_MAGIC = b"BZh"
#: The first bytes of each compressed format a part may be given in.
CODEC_MAGIC = {"gzip": GZIP_MAGIC, "zstd": ZSTD_MAGIC, "bzip2": BZIP2_MAGIC}
_SQL = re.compile(
    rb"^\s*(--|/\*|#|CREATE\b|INSERT\b|DROP\b|SET\b|USE\b|BEGIN\b|LOCK\b|ALTER\b|COPY\b"
    rb"|SELECT\b|START TRANSACTION\b|\\connect\b|\\restrict\b)",
    re.IGNORECASE,
)
_SQL_ANYWHERE = re.compile(
    rb"(MySQL dump|MariaDB dump|PostgreSQL database dump|CREATE TABLE|INSERT INTO)", re.IGNORECASE
)


def _is_tar(head: bytes) -> bool:
    return len(head) >= 262 and head[257:262] == b"ustar"


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # only a character cut at the end is allowed
            return False
        text = head[: exc.start].decode("utf-8")
    if not text:
        return False
    control = sum(1 for c in text if ord(c) < 0x20 and c not in "\t\n\r\f")
    return control == 0


def describe(head: bytes) -> str:
    """What the first bytes of some data are, as a phrase: "a zip archive"."""
    if not head:
        return "no data at all"
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    if _is_tar(head):
        return "a tar archive"
    if _looks_like_text(head):
        if _SQL.match(head) or _SQL_ANYWHERE.search(head):
            return "what looks like an SQL dump (is it the database part?)"
        return "plain text"
    shown = head[:8].hex(" ")
    return f"unknown binary data (starting {shown})"


def not_a_tar(label: str, head: bytes) -> BadInput:
    """The error for `label` (e.g. "the files part") whose decompressed data is not a tar."""
    what = describe(head)
    return BadInput(
        f"{label} is not a tar archive: found {what}; make it with `tar -czf` (an import "
        "also takes .tar, .tar.zst, .tar.bz2 or .zip)",
        problem="not_tar",
        found=what,
    )


async def checked_head(
    chunks: AsyncIterator[bytes], size: int, check: Callable[[bytes], None]
) -> AsyncIterator[bytes]:
    """Pass `chunks` through once `check` accepted their first `size` bytes (or all
    of them, when the stream is shorter); `check` raises to refuse."""
    head = b""
    checked = False
    async for chunk in chunks:
        if checked:
            yield chunk
            continue
        head += chunk
        if len(head) < size:
            continue
        checked = True
        check(head)
        yield head
    if not checked:
        check(head)
        if head:
            yield head


def expect_compressed(
    chunks: AsyncIterator[bytes], *, codec: str, label: str
) -> AsyncIterator[bytes]:
    """Pass `chunks` through once their first bytes show the `codec` (a CODEC_MAGIC key).

    Otherwise raise BadInput naming what the data is, before a decompressor
    reports it as corruption ("incorrect header check").
    """
    magic = CODEC_MAGIC[codec]
    return checked_head(chunks, HEAD_BYTES, lambda head: _check_head(head, magic, codec, label))


def _check_head(head: bytes, magic: bytes, codec: str, label: str) -> None:
    if head.startswith(magic):
        return
    if not head:
        raise BadInput(
            f"{label} is empty: it has no bytes at all (restoring it would delete every file); "
            "check that the right part was uploaded",
            problem="empty",
        )
    what = describe(head)
    if _is_tar(head):
        raise BadInput(
            f"{label} is not {codec}-compressed: found an uncompressed tar archive; "
            "make it with `tar -czf`",
            problem="not_compressed",
            found=what,
        )
    raise BadInput(
        f"{label} is not a tar archive: found {what}, not {codec}-compressed data; "
        "make it with `tar -czf`",
        problem="not_tar",
        found=what,
    )


def decompress_archive(
    raw: AsyncIterator[bytes], *, key: str, max_output: int, label: str
) -> AsyncIterator[bytes]:
    """The tar inside a part stored at `key` (.zst: zstd, otherwise gzip), its format checked."""
    if key.endswith(".zst"):
        return zstd_decompress(
            expect_compressed(raw, codec="zstd", label=label), max_output=max_output
        )
    return gzip_decompress(expect_compressed(raw, codec="gzip", label=label), max_output=max_output)
