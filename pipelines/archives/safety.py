"""Reading untrusted tar streams safely: a push parser and the rules each member must pass.

A restore's files and code parts are untrusted input. Every member is checked
*before* anything is written for it (no absolute paths, no `..`, no links out of
the tree, no devices or fifos, one top folder, size and count caps), so one
streaming pass can both verify and extract (see `extract.py`). The parser is our
own rather than `tarfile`'s stream mode: tarfile re-copies its whole read buffer
on every read (slow for many small members) and keeps every TarInfo in memory.
Header decoding (checksums, base-256 numbers, ustar prefix) is still tarfile's.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import tarfile
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Protocol

from pipelines.errors import BadInput, IntegrityError, UnsafeInput

#: Default decompression-bomb cap: this many times the declared compressed size...
DEFAULT_BOMB_RATIO = 20
#: ...never above this...
DEFAULT_BOMB_CEILING = 512 * 1024**3
#: ...and never below this (a tiny archive of text files may legitimately inflate 100x).
DEFAULT_BOMB_FLOOR = 64 * 1024**2

BLOCK = 512
#: A pax or GNU long-name header is metadata; more than this is an attack, not a name.
_MAX_EXTENDED = 1 << 20
#: Linux follows at most 40 symlinks per lookup; a longer chain is refused.
_MAX_LINK_HOPS = 40
#: Chunks handed to the parser's thread at once (bounded memory: ~4 MiB in flight).
_QUEUE_CHUNKS = 4

_FILE_TYPES = frozenset({tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE})
_SKIPPED_TYPES = frozenset({b"V"})  # GNU volume label: not a file, tar -x ignores it too


@dataclass(frozen=True)
class TarLimits:
    """Caps on what one archive may unpack to."""

    max_bytes: int
    max_members: int = 2_000_000
    max_name: int = 4096

    @property
    def max_stream_bytes(self) -> int:
        """A cap for the decompressor in front: file bytes plus headers and padding."""
        return self.max_bytes + self.max_members * 3 * BLOCK + 20 * BLOCK


@dataclass(frozen=True)
class TarReport:
    """What an archive held: its top folder, members, regular files and their bytes."""

    top: str
    members: int
    files: int
    bytes: int


def limits_for(
    declared_size: int,
    settings: object | None = None,
    *,
    ratio: int | None = None,
    ceiling: int | None = None,
    max_members: int | None = None,
) -> TarLimits:
    """Caps for an archive whose compressed size is `declared_size` (from the manifest).

    Settings may carry `archive_bomb_ratio`, `archive_bomb_ceiling_bytes` and
    `archive_max_members`; explicit arguments win over settings, settings over defaults.
    """
    ratio = ratio or getattr(settings, "archive_bomb_ratio", None) or DEFAULT_BOMB_RATIO
    ceiling = (
        ceiling or getattr(settings, "archive_bomb_ceiling_bytes", None) or (DEFAULT_BOMB_CEILING)
    )
    members = max_members or getattr(settings, "archive_max_members", None) or 2_000_000
    cap = min(max(max(declared_size, 0) * ratio, DEFAULT_BOMB_FLOOR), ceiling)
    return TarLimits(max_bytes=int(cap), max_members=int(members))


class MemberKind(enum.StrEnum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"


@dataclass(frozen=True, slots=True)
class Member:
    """One admitted member: `path` is relative to the stripped top folder (() is the top)."""

    name: str
    path: tuple[str, ...]
    kind: MemberKind
    size: int
    mode: int
    mtime_ns: int
    #: Symlink: the target as stored. Hardlink: "/".join(link_path).
    link: str = ""
    link_path: tuple[str, ...] = ()


def unsafe(name: str, problem: str, what: str) -> UnsafeInput:
    """The one error shape for a refused member: names the member and the problem."""
    shown = name if len(name) <= 200 else f"{name[:200]}…"
    return UnsafeInput(
        f"archive member {shown!r} {what}; refusing the archive (it is unsafe or damaged: "
        "check where it came from)",
        member=name,
        problem=problem,
    )


@dataclass
class TarGuard:
    """The rules every member must pass, in archive order; keeps what later rules need."""

    limits: TarLimits
    top: str | None = None
    members: int = 0
    files: int = 0
    bytes: int = 0
    #: Symlinks admitted so far (path → target), to check chains and writes through them.
    links: dict[tuple[str, ...], str] = field(default_factory=dict)
    link_names: dict[tuple[str, ...], str] = field(default_factory=dict)

    def admit(self, info: Header) -> Member | None:
        """Check one header; return the member to write, or None for one to skip."""
        name = info.name
        kind_code = info.type
        self._check_name(name, name)
        if kind_code in (tarfile.CHRTYPE, tarfile.BLKTYPE):
            raise unsafe(name, "device", "is a device node")
        if kind_code == tarfile.FIFOTYPE:
            raise unsafe(name, "fifo", "is a fifo (named pipe)")
        if kind_code == tarfile.GNUTYPE_SPARSE or info.sparse:
            raise unsafe(name, "sparse", "is a GNU sparse file, which is not supported")
        kind = _kind_of(kind_code)
        if kind is None:
            if kind_code in _SKIPPED_TYPES:
                return None
            raise unsafe(name, "unsupported_type", f"has unsupported type {kind_code!r}")
        if name.startswith("/"):
            raise unsafe(name, "absolute_path", "has an absolute path")
        parts = _parts(name)
        if ".." in parts:
            raise unsafe(name, "parent_reference", "has a '..' component")
        if not parts:
            if kind is MemberKind.DIR:  # "./": the archive's own root
                return None
            raise unsafe(name, "outside_top", "is not under the archive's top folder")
        if self.top is None:
            self.top = parts[0]
        elif parts[0] != self.top:
            raise unsafe(
                name,
                "outside_top",
                f"is not under the top folder {self.top!r} (an archive must hold exactly "
                "one top-level folder)",
            )
        path = parts[1:]
        if not path and kind is not MemberKind.DIR:
            raise unsafe(name, "top_not_folder", "is the top-level entry but not a folder")
        self.members += 1
        if self.members > self.limits.max_members:
            raise unsafe(
                name,
                "too_many_members",
                f"exceeds the cap of {self.limits.max_members} members",
            )
        self._check_not_through_link(name, path)
        link = ""
        link_path: tuple[str, ...] = ()
        size = 0
        if kind is MemberKind.FILE:
            size = info.size
            self.files += 1
            self.bytes += size
            if self.bytes > self.limits.max_bytes:
                raise unsafe(
                    name,
                    "too_large",
                    f"takes the extracted size over the cap of {self.limits.max_bytes} bytes "
                    "(a possible decompression bomb; raise the cap if the archive is genuine)",
                )
        elif kind is MemberKind.SYMLINK:
            link = info.linkname
            self._check_symlink(name, path, link)
        elif kind is MemberKind.HARDLINK:
            link_path = self._check_hardlink(name, info.linkname)
            link = "/".join(link_path)
        if path in self.links and kind is not MemberKind.SYMLINK:
            del self.links[path]  # a later member replaces the symlink
            del self.link_names[path]
        return Member(
            name=name,
            path=path,
            kind=kind,
            size=size,
            mode=info.mode & 0o777,  # no setuid, setgid or sticky bit from an archive
            mtime_ns=info.mtime_ns,
            link=link,
            link_path=link_path,
        )

    def finish(self) -> TarReport:
        """Final checks once the whole archive is known; the report."""
        # A symlink admitted early may escape through one admitted later
        # (`l -> d/x/../..` before `d/x -> ..`): resolve all of them again.
        for path, target in self.links.items():
            if _escapes(path, target, self.links):
                raise unsafe(
                    self.link_names[path],
                    "link_escapes",
                    f"is a symlink to {target!r}, which resolves outside the archive root "
                    "through other symlinks",
                )
        if self.top is None:
            raise BadInput(
                "the archive holds no members (no top folder); check that the right part "
                "was uploaded",
                problem="empty",
            )
        return TarReport(top=self.top, members=self.members, files=self.files, bytes=self.bytes)

    def _check_name(self, name: str, shown: str, what: str = "name") -> None:
        if "\0" in name:
            raise unsafe(shown, "nul_in_name", f"has a NUL byte in its {what}")
        if len(name.encode("utf-8", "surrogateescape")) > self.limits.max_name:
            raise unsafe(
                shown,
                "name_too_long",
                f"has a {what} longer than {self.limits.max_name} bytes",
            )

    def _check_not_through_link(self, name: str, path: tuple[str, ...]) -> None:
        if not self.links:
            return
        for depth in range(1, len(path)):
            if path[:depth] in self.links:
                raise unsafe(
                    name,
                    "through_symlink",
                    f"would be written through the symlink {'/'.join(path[:depth])!r} "
                    "created earlier in the archive",
                )

    def _check_symlink(self, name: str, path: tuple[str, ...], target: str) -> None:
        self._check_name(target, name, "link target")
        if not target:
            raise unsafe(name, "link_escapes", "is a symlink with an empty target")
        if target.startswith("/"):
            raise unsafe(name, "absolute_link", f"is a symlink to the absolute path {target!r}")
        if _escapes(path, target, self.links):
            raise unsafe(
                name,
                "link_escapes",
                f"is a symlink to {target!r}, which resolves outside the archive root",
            )
        self.links[path] = target
        self.link_names[path] = name

    def _check_hardlink(self, name: str, target: str) -> tuple[str, ...]:
        self._check_name(target, name, "link target")
        if target.startswith("/"):
            raise unsafe(name, "absolute_link", f"is a hardlink to the absolute path {target!r}")
        parts = _parts(target)
        if ".." in parts or not parts or parts[0] != self.top or len(parts) < 2:
            raise unsafe(
                name,
                "link_escapes",
                f"is a hardlink to {target!r}, which is outside the archive's top folder",
            )
        link_path = parts[1:]
        if link_path in self.links:
            raise unsafe(name, "link_escapes", f"is a hardlink to the symlink {target!r}")
        self._check_not_through_link(name, link_path)
        return link_path


def _kind_of(code: bytes) -> MemberKind | None:
    if code in _FILE_TYPES:
        return MemberKind.FILE
    if code in (tarfile.DIRTYPE, b"D"):  # "D": a GNU dumpdir, a directory with a listing
        return MemberKind.DIR
    if code == tarfile.SYMTYPE:
        return MemberKind.SYMLINK
    if code == tarfile.LNKTYPE:
        return MemberKind.HARDLINK
    return None


def _parts(name: str) -> tuple[str, ...]:
    return tuple(part for part in name.split("/") if part not in ("", "."))


def _escapes(path: tuple[str, ...], target: str, links: dict[tuple[str, ...], str]) -> bool:
    """Would the symlink at `path` → `target` resolve outside the root, given `links`?

    The kernel's walk, on the tree the archive describes: `..` climbs from the
    directory a symlink lives in, not from where its name lexically points.
    """
    current = list(path[:-1])
    pending = list(reversed(target.split("/")))
    hops = 0
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if not current:
                return True
            current.pop()
            continue
        current.append(part)
        nested = links.get(tuple(current))
        if nested is not None:
            hops += 1
            if hops > _MAX_LINK_HOPS or nested.startswith("/"):
                return True  # a loop or an absolute hop: refuse rather than guess
            current.pop()
            pending.extend(reversed(nested.split("/")))
    return False


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


def _number(field: bytes) -> int:
    if field[:1] in (b"\x80", b"\xff"):  # base-256 (GNU), for sizes over 8 GiB
        value = int.from_bytes(field[1:], "big")
        return value - (256 ** (len(field) - 1)) if field[:1] == b"\xff" else value
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _signed_checksum(block: bytes) -> int:
    """Some old tars summed signed chars; accepted as tarfile and GNU tar do."""
    return sum(byte - 256 if byte > 127 else byte for byte in block[:148] + block[156:]) + _SPACES


def decode_header(block: bytes) -> Header:
    """Decode one 512-byte header; raise tarfile.HeaderError if it is not one."""
    try:
        checksum = _number(block[148:156])
        mode = _number(block[100:108])
        size = _number(block[124:136])
        mtime = _number(block[136:148])
    except ValueError as exc:
        raise tarfile.HeaderError("bad number field") from exc
    if checksum != sum(block) - sum(block[148:156]) + _SPACES and checksum != _signed_checksum(
        block
    ):
        raise tarfile.HeaderError("bad checksum")
    kind = block[156:157]
    name = block[0:100].split(b"\0", 1)[0]
    if block[257:263] == _POSIX_MAGIC:
        prefix = block[345:500].split(b"\0", 1)[0]
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
        linkname=block[157:257].split(b"\0", 1)[0].decode("utf-8", "surrogateescape"),
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
            hint = (
                " (the data is gzip-compressed: decompress it first)"
                if self.offset == BLOCK and block[:2] == b"\x1f\x8b"
                else ""
            )
            raise IntegrityError(
                f"tar header at offset {self.offset - BLOCK} is invalid ({exc}){hint}; "
                "the archive is damaged or not a tar",
                offset=self.offset - BLOCK,
            ) from exc
        code = info.type
        if code in (
            tarfile.XHDTYPE,
            tarfile.XGLTYPE,
            tarfile.SOLARIS_XHDTYPE,
            tarfile.GNUTYPE_LONGNAME,
            tarfile.GNUTYPE_LONGLINK,
        ):
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

    def _end_member(self) -> None:
        if self._in_member:
            self._in_member = False
            self.sink.close_member()
        self._remaining += self._after_data
        self._after_data = 0
        if self._remaining:
            self._state = _State.SKIP
        else:
            self._state = _State.HEADER
            self._need = BLOCK

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
        if self._remaining:
            self._state = _State.SKIP
        else:
            self._state = _State.HEADER
            self._need = BLOCK

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
                        f"pax size {pax['size']!r} of {info.name!r} is not a number",
                        member=info.name,
                    ) from exc
            if "mtime" in pax:
                with contextlib.suppress(InvalidOperation, ValueError):
                    info.mtime_ns = int(Decimal(pax["mtime"]) * 1_000_000_000)
        if info.type == tarfile.DIRTYPE:
            info.name = info.name.rstrip("/")
        self._pax = {}
        self._long_name = self._long_link = None


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
            raise IntegrityError(f"pax record {key!r} has no value", offset=offset)
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


async def check_tar(chunks: AsyncIterator[bytes], *, limits: TarLimits) -> TarReport:
    """Read a (decompressed) tar stream without writing anything; raise UnsafeInput if unsafe."""
    return await run_parser(chunks, TarParser(TarGuard(limits), CheckOnly()))
