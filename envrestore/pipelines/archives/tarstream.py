"""A streaming tar parser: headers in, admitted members out to a sink.

The parser is our own rather than `tarfile`'s stream mode: tarfile re-copies its
whole read buffer on every read (slow for many small members) and keeps every
TarInfo in memory. Header decoding (checksums, base-256 numbers, ustar prefix)
follows tarfile's. Each member passes `tarpolicy.TarGuard` before the sink
sees it. Data that is not a tar at all (a zip, an SQL dump) is named by
`sniff.describe` on the first block.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import struct
import tarfile
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Protocol

from envrestore.pipelines.archives.naming import quoted, unsafe
from envrestore.pipelines.archives.sniff import not_a_tar
from envrestore.pipelines.archives.tarpolicy import (
    BLOCK,
    ArchiveRules,
    Member,
    TarGuard,
    TarLimits,
    TarReport,
)
from envrestore.pipelines.errors import BadInput, IntegrityError

#: A pax or GNU long-name header is metadata; more than this is an attack, not a name.
_MAX_EXTENDED = 1 << 20
#: Chunks handed to the parser's thread at once (bounded memory: ~4 MiB in flight).
_QUEUE_CHUNKS = 4


@dataclass(slots=True)
class Header:
    """The fields of one tar header we use (tarfile's TarInfo costs 3x more to build)."""

    name: str
    type: bytes
    mode: int
    size: int
    mtime_ns: int
    linkname: str
    sparse: bool = False


_POSIX_MAGIC = b"ustar\x00"
_SPACES = 8 * 0x20
#: name, mode, (uid, gid), size, mtime, checksum, type, linkname, magic, (...), prefix.
_FIELDS = struct.Struct("100s8s16x12s12s8sc100s6s82x155s")
#: Headers that carry metadata for the next member: only their size matters.
_EXTENDED = frozenset(
    {
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.SOLARIS_XHDTYPE,
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_LONGLINK,
    }
)


def _number(field: bytes) -> int:
    if field[0] & 0x80:  # base-256 (GNU, 0x80 or 0xff first), for sizes over 8 GiB
        value = int.from_bytes(field[1:], "big")
        if field[0] == 0xFF:
            return value - (1 << (8 * (len(field) - 1)))
        if field[0] != 0x80:
            raise ValueError("bad base-256 marker")
        return value
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _signed_checksum(block: bytes) -> int:
    """Some old tars summed signed chars; accepted as tarfile and GNU tar do."""
    return sum(byte - 256 if byte > 127 else byte for byte in block[:148] + block[156:]) + _SPACES


def decode_header(block: bytes) -> Header:
    """Decode one 512-byte header; raise tarfile.HeaderError if it is not one.

    One `struct` unpack for every field; an extended header (pax, GNU long
    name) decodes only its type and size, which is all the parser uses of it.
    """
    name, mode_f, size_f, mtime_f, sum_f, kind, link, magic, prefix = _FIELDS.unpack_from(block)
    try:
        checksum = _number(sum_f)
        size = _number(size_f)
        extended = kind in _EXTENDED
        mode = 0 if extended else _number(mode_f)
        mtime = 0 if extended else _number(mtime_f)
    except ValueError as exc:
        raise tarfile.HeaderError("bad number field") from exc
    if checksum != sum(block) - sum(sum_f) + _SPACES and checksum != _signed_checksum(block):
        raise tarfile.HeaderError("bad checksum")
    name = name.split(b"\0", 1)[0]
    if extended:
        return Header(
            name=name.decode("utf-8", "surrogateescape"),
            type=kind,
            mode=0,
            size=size,
            mtime_ns=0,
            linkname="",
        )
    if magic == _POSIX_MAGIC:
        prefix = prefix.split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    text = name.decode("utf-8", "surrogateescape")
    if kind == tarfile.AREGTYPE and text.endswith("/"):
        kind = tarfile.DIRTYPE  # V7: a directory is a file whose name ends in "/"
    return Header(
        name=text,
        type=kind,
        mode=mode,
        size=size,
        mtime_ns=mtime * 1_000_000_000,
        linkname=link.split(b"\0", 1)[0].decode("utf-8", "surrogateescape"),
    )


# ---------------------------------------------------------------- the stream parser


class MemberSink(Protocol):
    """Where admitted members go: nowhere (a check) or a directory (an extraction)."""

    def open_member(self, member: Member) -> bool:
        """Start a member; True if its data should be passed to `write`."""
        ...

    def write(self, data: memoryview) -> None: ...

    def close_member(self) -> None: ...

    def finish(self) -> None: ...

    def abort(self, symlinks: Iterable[tuple[str, ...]]) -> None:
        """Stop after a failure; remove `symlinks` (admitted so far) if they were made."""
        ...


class CheckOnly:
    """A sink that writes nothing: `check_tar`."""

    def open_member(self, member: Member) -> bool:
        return False

    def write(self, data: memoryview) -> None:  # pragma: no cover - never asked for data
        return

    def close_member(self) -> None:
        return

    def finish(self) -> None:
        return

    def abort(self, symlinks: Iterable[tuple[str, ...]]) -> None:
        return


class _State(enum.Enum):
    HEADER = 1
    EXTENDED = 2
    DATA = 3
    SKIP = 4
    END = 5


class TarParser:
    """A push parser: `feed` bytes in any slicing, members reach the guard, then the sink."""

    def __init__(self, guard: TarGuard, sink: MemberSink) -> None:
        self.guard = guard
        self.sink = sink
        self.offset = 0  # bytes of tar consumed
        self._state = _State.HEADER
        self._pending = bytearray()
        self._need = BLOCK
        self._remaining = 0  # DATA or SKIP bytes left
        self._after_data = 0  # padding to skip after DATA
        self._in_member = False
        self._ext_kind = b""
        self._pax: dict[str, str] = {}
        self._global_pax: dict[str, str] = {}
        self._long_name: str | None = None
        self._long_link: str | None = None

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        pos = 0
        size = len(view)
        while pos < size:
            state = self._state
            if state is _State.DATA:
                take = min(self._remaining, size - pos)
                self.sink.write(view[pos : pos + take])
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._end_member()
            elif state is _State.SKIP:
                take = min(self._remaining, size - pos)
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._state = _State.HEADER
                    self._need = BLOCK
            elif state is _State.END:
                # Padding to the record size, or trailing data tar ignores too.
                self.offset += size - pos
                pos = size
                continue
            else:
                need = self._need - len(self._pending)
                if not self._pending and size - pos >= self._need:
                    block = bytes(view[pos : pos + self._need])
                    pos += self._need
                else:
                    take = min(need, size - pos)
                    self._pending += view[pos : pos + take]
                    pos += take
                    if len(self._pending) < self._need:
                        continue
                    block = bytes(self._pending)
                    self._pending.clear()
                self.offset += self._need
                if state is _State.HEADER:
                    self._header(block)
                else:
                    self._extended(block)
                continue
            self.offset += take

    def close(self) -> TarReport:
        """End of input: the archive must be complete."""
        if self.offset == 0 and self._state is _State.HEADER:
            if not self._pending:
                raise BadInput(
                    f"{self.guard.rules.label} is empty: restoring it would delete every file "
                    "(it holds no bytes at all); check that the right part was uploaded",
                    problem="empty",
                )
            raise not_a_tar(self.guard.rules.label, bytes(self._pending))
        if self._state is not _State.END:
            raise IntegrityError(
                f"tar stream ends after {self.offset} bytes without its end-of-archive "
                "marker; the archive is truncated (re-fetch it)",
                offset=self.offset,
            )
        report = self.guard.finish()
        self.sink.finish()
        return report

    def abort(self) -> None:
        self.sink.abort(self.guard.links)

    def _header(self, block: bytes) -> None:
        if block == b"\0" * BLOCK:
            self._state = _State.END
            return
        try:
            info = decode_header(block)
        except tarfile.HeaderError as exc:
            if self.offset == BLOCK and block[257:262] != b"ustar":
                # The very first block, and no tar magic: not a damaged tar but something else.
                raise not_a_tar(self.guard.rules.label, block) from exc
            raise IntegrityError(
                f"tar header at offset {self.offset - BLOCK} is invalid ({exc}); "
                "the archive is damaged or not a tar",
                offset=self.offset - BLOCK,
            ) from exc
        code = info.type
        if code in _EXTENDED:
            if info.size > _MAX_EXTENDED:
                raise unsafe(
                    info.name, "name_too_long", f"has an extended header of {info.size} bytes"
                )
            self._ext_kind = code
            self._state = _State.EXTENDED
            self._need = info.size
            self._after_data = -info.size % BLOCK
            if not info.size:
                self._extended(b"")
            return
        self._apply_extensions(info)
        member = self.guard.admit(info)
        data_size = info.size  # only regular files' data is written; any other is skipped
        self._after_data = -data_size % BLOCK
        wants = member is not None and self.sink.open_member(member)
        self._in_member = member is not None
        if wants and data_size:
            self._state = _State.DATA
            self._remaining = data_size
        else:
            self._remaining = data_size
            self._end_member()

    def _next_header(self) -> None:
        """Skip what is left of the member's blocks, then read the next header."""
        if self._remaining:
            self._state = _State.SKIP
        else:
            self._state = _State.HEADER
            self._need = BLOCK

    def _end_member(self) -> None:
        if self._in_member:
            self._in_member = False
            self.sink.close_member()
        self._remaining += self._after_data
        self._after_data = 0
        self._next_header()

    def _extended(self, data: bytes) -> None:
        kind = self._ext_kind
        if kind in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
            value = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            if kind == tarfile.GNUTYPE_LONGNAME:
                self._long_name = value
            else:
                self._long_link = value
        else:
            records = _pax_records(data, self.offset)
            (self._global_pax if kind == tarfile.XGLTYPE else self._pax).update(records)
        self._remaining = self._after_data
        self._after_data = 0
        self._next_header()

    def _apply_extensions(self, info: Header) -> None:
        pax = {**self._global_pax, **self._pax} if self._global_pax else self._pax
        if self._long_name is not None:
            info.name = self._long_name
        if self._long_link is not None:
            info.linkname = self._long_link
        if pax:
            if any(key.startswith("GNU.sparse.") for key in pax):
                info.sparse = True
            if "path" in pax:
                info.name = pax["path"]
            if "linkpath" in pax:
                info.linkname = pax["linkpath"]
            if "size" in pax:
                try:
                    info.size = int(pax["size"])
                except ValueError as exc:
                    raise IntegrityError(
                        f"pax size {quoted(pax['size'])} of {quoted(info.name)} is not a number",
                        member=info.name,
                    ) from exc
            if "mtime" in pax:
                info.mtime_ns = _pax_mtime(pax["mtime"], info.mtime_ns)
        if info.type == tarfile.DIRTYPE:
            info.name = info.name.rstrip("/")
        self._pax = {}
        self._long_name = self._long_link = None


def _pax_mtime(value: str, default: int) -> int:
    """A pax mtime ("1796205034.541165353") in ns; Decimal only for unusual forms."""
    seconds, _, fraction = value.partition(".")
    if seconds.isascii() and seconds.isdigit() and (not fraction or fraction.isdigit()):
        return int(seconds) * 1_000_000_000 + int(fraction[:9].ljust(9, "0"))
    try:
        return int(Decimal(value) * 1_000_000_000)
    except (InvalidOperation, ValueError):
        return default


def _pax_records(data: bytes, offset: int) -> dict[str, str]:
    """Parse `<len> <key>=<value>\\n` records; values may hold NUL (checked by the guard)."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0:
            break
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError:
            length = 0
        record = data[pos : pos + length]
        if space < 0 or length <= 0 or len(record) != length or not record.endswith(b"\n"):
            raise IntegrityError(
                f"pax header before offset {offset} is malformed; the archive is damaged",
                offset=offset,
            )
        key, sep, value = record[space - pos + 1 : -1].partition(b"=")
        if not sep:
            raise IntegrityError(
                f"pax record {quoted(key.decode('utf-8', 'surrogateescape'))} has no value",
                offset=offset,
            )
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


# ---------------------------------------------------------------- async driver


async def run_parser(
    chunks: AsyncIterator[bytes],
    parser: TarParser,
    on_progress: Callable[[int], None] | None = None,
) -> TarReport:
    """Feed an async stream to `parser` in a worker thread, overlapping the upstream.

    A pump task reads upstream (download, gunzip) while the previous chunks are
    parsed and written off the event loop; the queue between them is bounded, so
    memory is too. If anything fails, the sink's open file is closed, the pump is
    cancelled and the error propagates.
    """
    queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(_QUEUE_CHUNKS)

    async def pump() -> None:
        try:
            async for chunk in chunks:
                if chunk:
                    await queue.put(chunk)
        except Exception as exc:  # noqa: BLE001 - re-raised by the consumer, in order
            await queue.put(exc)
            return
        await queue.put(None)

    def feed_all(batch: list[bytes]) -> None:
        for chunk in batch:
            parser.feed(chunk)

    loop = asyncio.get_running_loop()
    pump_task = asyncio.create_task(pump())
    done = False
    try:
        while not done:
            batch: list[bytes] = []
            item = await queue.get()
            while True:  # take whatever else is ready: one thread hop for all of it
                if item is None:
                    done = True
                    break
                if isinstance(item, BaseException):
                    raise item
                batch.append(item)
                try:
                    item = queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
            if batch:
                work = loop.run_in_executor(None, feed_all, batch)
                try:
                    await asyncio.shield(work)
                except asyncio.CancelledError:
                    # The thread cannot be interrupted: let it finish its batch before
                    # the caller discards the directory it writes into.
                    with contextlib.suppress(Exception):
                        await work
                    raise
                if on_progress is not None:
                    on_progress(parser.offset)
        return await loop.run_in_executor(None, parser.close)
    except BaseException:
        parser.abort()
        raise
    finally:
        if not pump_task.done():
            pump_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pump_task
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()


async def check_tar(
    chunks: AsyncIterator[bytes], *, limits: TarLimits, rules: ArchiveRules | None = None
) -> TarReport:
    """Read a (decompressed) tar stream without writing anything; raise UnsafeInput if unsafe.

    The same checks as `extract_tar`, `rules` included (BadInput if the archive is
    empty, not a tar, or has another top folder than `rules.top`).
    """
    guard = TarGuard(limits, rules or ArchiveRules())
    return await run_parser(chunks, TarParser(guard, CheckOnly()))
