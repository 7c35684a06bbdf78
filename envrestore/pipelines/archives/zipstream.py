"""Zip archives through the tar rules: one guard, one writer, whatever the format.

Each zip entry becomes the same `Header` a tar member would, and passes the
same `TarGuard` (paths, links, types, counts, sizes, top folder or unwrap)
before the same sink sees it: `TreeWriter` to extract, `CheckOnly` to verify.
A zip has no file types of its own: the unix mode in `external_attr >> 16`
says symlink (its target is the member's content), device, fifo...; without
one, a name ending in "/" is a folder and anything else a file. Member data is
read by `zipread` (sizes and CRC checked, never trusting what is declared).
"""

from __future__ import annotations

import asyncio
import stat
import struct
import tarfile
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from pathlib import Path

import structlog

from envrestore.pipelines.archives.extract import TreeWriter, prepare_dest
from envrestore.pipelines.archives.naming import quoted, unsafe
from envrestore.pipelines.archives.tarpolicy import (
    ArchiveRules,
    MemberKind,
    TarGuard,
    TarLimits,
    TarReport,
)
from envrestore.pipelines.archives.tarstream import CheckOnly, Header, MemberSink
from envrestore.pipelines.archives.zipread import (
    MAX_LINK_TARGET,
    ZipEntry,
    ZipSpool,
    in_thread,
    spooled_zip,
)
from envrestore.pipelines.errors import BadInput, UnsafeInput

log = structlog.get_logger(__name__)

#: Entries a zip holding one dump may list (the error names what else it held).
DUMP_MAX_ENTRIES = 100_000
#: Output bytes one thread hop works through before the event loop gets a look in.
_STEP_BYTES = 4 << 20
#: What one entry without data counts for in a step's budget.
_ENTRY_COST = 4096
_UNIX_TYPES = {
    stat.S_IFREG: tarfile.REGTYPE,
    stat.S_IFDIR: tarfile.DIRTYPE,
    stat.S_IFLNK: tarfile.SYMTYPE,
    stat.S_IFCHR: tarfile.CHRTYPE,
    stat.S_IFBLK: tarfile.BLKTYPE,
    stat.S_IFIFO: tarfile.FIFOTYPE,
}
_EXTENDED_TIME = 0x5455  # Info-ZIP "UT": a unix mtime, UTC


def entry_type(entry: ZipEntry) -> bytes:
    """The tar type an entry stands for (tarfile.REGTYPE, DIRTYPE, SYMTYPE, ...)."""
    name = entry.name
    fmt = stat.S_IFMT(entry.info.external_attr >> 16)
    if not fmt:
        return tarfile.DIRTYPE if name.endswith("/") else tarfile.REGTYPE
    kind = _UNIX_TYPES.get(fmt)
    if kind is None:
        raise unsafe(name, "unsupported_type", f"has unix file type {fmt:#o} (a socket?)")
    if name.endswith("/") and kind != tarfile.DIRTYPE:
        raise unsafe(name, "unsupported_type", "ends with '/' but is not a folder")
    return kind


def header_of(entry: ZipEntry, kind: bytes, linkname: str = "") -> Header:
    """The tar header the guard judges for this zip entry."""
    mode = entry.info.external_attr >> 16 & 0o7777
    if not mode:
        mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    name = entry.name.rstrip("/") if kind == tarfile.DIRTYPE else entry.name
    return Header(
        name=name,
        type=kind,
        mode=mode,
        size=entry.info.file_size,
        mtime_ns=_mtime_ns(entry),
        linkname=linkname,
    )


def _mtime_ns(entry: ZipEntry) -> int:
    """The "UT" extra field's unix time if any, else the DOS time (local time)."""
    extra = entry.info.extra
    pos = 0
    while pos + 4 <= len(extra):
        tag, size = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4 : pos + 4 + size]
        if tag == _EXTENDED_TIME and len(body) >= 5 and body[0] & 1:
            return int(struct.unpack_from("<i", body, 1)[0]) * 1_000_000_000
        pos += 4 + size
    try:
        return int(time.mktime((*entry.info.date_time, 0, 0, -1))) * 1_000_000_000
    except (OverflowError, ValueError):
        return 0


class ZipWalker:
    """Entries in directory order through the guard into the sink, a bounded step at a time."""

    def __init__(self, spool: ZipSpool, guard: TarGuard, sink: MemberSink) -> None:
        self.guard = guard
        self.sink = sink
        self._spool = spool
        self._entries = iter(spool.entries)
        self._data: Iterator[bytes] | None = None
        self._wants = False
        self._open = False

    def step(self) -> bool:
        """Work through about _STEP_BYTES; True once every entry is done."""
        spent = 0
        while spent < _STEP_BYTES:
            if self._data is not None:
                chunk = next(self._data, None)
                if chunk is None:
                    self._data = None
                    self._close_member()
                elif self._wants:
                    self.sink.write(memoryview(chunk))
                spent += len(chunk or b"")
                continue
            entry = next(self._entries, None)
            if entry is None:
                return True
            self._start(entry)
            spent += _ENTRY_COST
        return False

    def _start(self, entry: ZipEntry) -> None:
        kind = entry_type(entry)
        link = ""
        if kind == tarfile.SYMTYPE:
            target = self._spool.read_small(entry, MAX_LINK_TARGET, "symlink target")
            link = target.decode("utf-8", "surrogateescape")
        member = self.guard.admit(header_of(entry, kind, link))
        if member is None:
            return
        self._wants = self.sink.open_member(member)
        self._open = True
        if member.kind is MemberKind.FILE:
            self._data = self._spool.read(entry)  # read even when not written: CRC, sizes
        else:
            self._close_member()

    def _close_member(self) -> None:
        if self._open:
            self._open = False
            self.sink.close_member()

    def close(self) -> TarReport:
        report = self.guard.finish()
        self.sink.finish()
        return report

    def abort(self) -> None:
        self._data = None
        self.sink.abort(self.guard.links)


async def _walk(walker: ZipWalker) -> TarReport:
    """Run `walker` in threads, one bounded step per hop, so a cancel is heard between steps."""
    try:
        while not await in_thread(walker.step):
            pass
        return await in_thread(walker.close)
    except BaseException:
        walker.abort()
        raise


async def extract_zip(
    raw: AsyncIterator[bytes],
    dest: Path,
    *,
    limits: TarLimits,
    rules: ArchiveRules,
    spool_dir: Path,
) -> TarReport:
    """Extract a raw zip into `dest` under exactly `extract_tar`'s rules and modes."""
    prepare_dest(dest)
    writer = TreeWriter(dest)
    async with spooled_zip(
        raw, spool_dir, label=rules.label, max_entries=limits.max_members
    ) as spool:
        report = await _walk(ZipWalker(spool, TarGuard(limits, rules), writer))
    if rules.unwrap is not None and report.top:
        await asyncio.to_thread(writer.unwrap, report.top)
    log.info(
        "archive.extracted",
        format="zip",
        dest=str(dest),
        top=report.top,
        members=report.members,
        files=report.files,
        bytes=report.bytes,
    )
    return report


async def check_zip(
    raw: AsyncIterator[bytes], *, limits: TarLimits, rules: ArchiveRules, spool_dir: Path
) -> TarReport:
    """Every check `extract_zip` makes (data inflated and CRC-checked), nothing written."""
    async with spooled_zip(
        raw, spool_dir, label=rules.label, max_entries=limits.max_members
    ) as spool:
        return await _walk(ZipWalker(spool, TarGuard(limits, rules), CheckOnly()))


def _names(entries: list[ZipEntry], limit: int = 5) -> str:
    shown = ", ".join(quoted(e.name) for e in entries[:limit])
    return shown + (f" and {len(entries) - limit} more" if len(entries) > limit else "")


def only_sql(entries: list[ZipEntry], label: str) -> ZipEntry:
    """The one `.sql` file of a zipped dump; folders and macOS `__MACOSX/` metadata aside."""
    sql: list[ZipEntry] = []
    other: list[ZipEntry] = []
    for entry in entries:
        if entry.name.startswith("__MACOSX/"):
            continue
        kind = entry_type(entry)
        if kind == tarfile.DIRTYPE:
            continue
        is_sql = kind == tarfile.REGTYPE and entry.name.lower().endswith(".sql")
        (sql if is_sql else other).append(entry)
    if len(sql) == 1 and not other:
        return sql[0]
    if not sql and not other:
        found = "no file at all" if not entries else "only folders"
        raise BadInput(
            f"{label} is a zip archive with {found}; give a zip holding one .sql dump",
            problem="empty",
        )
    if not sql:
        problem = f"no .sql file (found {_names(other)})"
    elif len(sql) > 1:
        problem = f"{len(sql)} .sql files ({_names(sql)}); which one to import is not clear"
    else:
        problem = f"other files beside {quoted(sql[0].name)} (found {_names(other)})"
    raise BadInput(
        f"{label} is a zip archive with {problem}; it must hold exactly one .sql dump "
        "and nothing else",
        problem="zip_contents",
    )


async def zipped_sql(
    raw: AsyncIterator[bytes], *, spool_dir: Path, max_output: int, label: str
) -> AsyncGenerator[bytes, None]:
    """The bytes of the one `.sql` file in a raw zip, read in slices off the event loop.

    The spool file is removed when the stream ends, fails or is closed (aclose).
    """
    async with spooled_zip(raw, spool_dir, label=label, max_entries=DUMP_MAX_ENTRIES) as spool:
        entry = only_sql(spool.entries, label)
        if entry.info.file_size > max_output:
            raise UnsafeInput(
                f"{label}: {quoted(entry.name)} declares {entry.info.file_size} bytes, beyond "
                f"the cap of {max_output} bytes; refusing it as a possible decompression bomb",
                max_output=max_output,
            )
        data = spool.read(entry)
        while (chunk := await in_thread(lambda: next(data, None))) is not None:
            yield chunk
