"""An untrusted zip, spooled to disk: its directory checked, its members inflated by us.

A zip's table of contents sits at its end, so the raw stream is first spooled
to an unnamed temporary file in the caller's `spool_dir` (gone when closed,
even if the worker dies; never memory). Its central directory is read with
`zipfile`, after a look at the end record so a huge directory is refused
before `zipfile` loads it. Member data is not read through `zipfile`: in
Python 3.11.7 it cuts a member's output at the declared size without checking
it, and does not notice entries sharing data (the "overlapped" zip bomb, one
small deflate stream referenced thousands of times). Here each entry's local
header must agree with the directory, data ranges must not overlap, only
unencrypted stored or deflated members are read, and data is inflated in
bounded slices with its real size and CRC-32 checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import struct
import tempfile
import zipfile
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

from envrestore.pipelines.archives.naming import quoted, unsafe
from envrestore.pipelines.errors import BadInput, IntegrityError, UnsafeInput

#: A central directory larger than this is refused before it is loaded (zipfile
#: holds it and one ZipInfo per entry in memory: ~128 MiB is ~1M entries).
MAX_DIRECTORY = 128 << 20
#: A symlink member's content is its target: at most this many bytes.
MAX_LINK_TARGET = 4096
_READ = 256 * 1024
_OUT = 1 << 20
_THREAD_MIN = 64 * 1024
_STORED, _DEFLATED = zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED
_ENCRYPTED = 0x1 | 0x40  # traditional PKWARE, strong encryption
_UTF8_NAME = 0x800
_UNICODE_PATH = 0x7075  # Info-ZIP: the UTF-8 name, with the CRC-32 of the stored one
_METHODS = {
    1: "shrink",
    6: "implode",
    9: "deflate64",
    12: "bzip2",
    14: "lzma",
    93: "zstd",
    95: "xz",
    98: "ppmd",
    99: "AES encryption",
}
_LOCAL = struct.Struct("<4s5H3L2H")  # signature ... name length, extra length
_EOCD = struct.Struct("<4s4H2LH")
_EOCD64 = struct.Struct("<4sQ2H2L4Q")
_LOCATOR_SIZE = 20
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ZipEntry:
    """One central-directory entry whose local header was checked."""

    info: zipfile.ZipInfo
    #: The name as Linux tools write it (see `_fs_name`); NUL kept for the guard to see
    #: (zipfile's `filename` cuts it there).
    name: str
    data_start: int

    @property
    def end(self) -> int:
        return self.data_start + self.info.compress_size


class ZipSpool:
    """A zip in a spool file, its directory checked. Blocking: call it in a thread."""

    def __init__(self, fp: IO[bytes], *, label: str, max_entries: int) -> None:
        self._fp = fp
        self.label = label
        try:
            directory = _directory_size(fp)
            if directory is not None and directory > MAX_DIRECTORY:
                raise UnsafeInput(
                    f"{label} is a zip whose table of contents takes {directory} bytes "
                    f"(over {MAX_DIRECTORY}); give a tar archive for this many files",
                    problem="too_many_members",
                )
            with zipfile.ZipFile(fp) as archive:
                infos = archive.infolist()
                start_dir = archive.start_dir
        except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, ValueError) as exc:
            raise BadInput(
                f"{label} is not a readable zip archive ({exc}); check that the whole file "
                "was uploaded, or give a tar archive",
                problem="bad_zip",
            ) from exc
        except struct.error as exc:
            raise BadInput(f"{label} is not a readable zip archive", problem="bad_zip") from exc
        if len(infos) > max_entries:
            raise UnsafeInput(
                f"{label} has {len(infos)} zip entries, over the cap of {max_entries} members",
                problem="too_many_members",
            )
        self.entries = [self._checked(info) for info in infos]
        _refuse_overlaps(self.entries, start_dir)

    def _checked(self, info: zipfile.ZipInfo) -> ZipEntry:
        utf8 = bool(info.flag_bits & _UTF8_NAME)
        stored = info.orig_filename.encode("utf-8" if utf8 else "cp437")  # the raw bytes
        name = info.orig_filename if utf8 else _fs_name(info.extra, stored)
        if info.flag_bits & _ENCRYPTED:
            raise BadInput(
                f"{self.label}: zip member {quoted(name)} is encrypted; give an unencrypted zip",
                member=name,
                problem="encrypted",
            )
        if info.compress_type not in (_STORED, _DEFLATED):
            method = _METHODS.get(info.compress_type, f"method {info.compress_type}")
            raise BadInput(
                f"{self.label}: zip member {quoted(name)} is compressed with {method}; only "
                "stored and deflated members are read (re-make the zip with plain `zip`, or "
                "give a tar archive)",
                member=name,
                problem="zip_method",
            )
        self._fp.seek(info.header_offset)
        head = self._fp.read(_LOCAL.size)
        if len(head) != _LOCAL.size or not head.startswith(b"PK\x03\x04"):
            raise _damaged(name, "has no local header where the directory says")
        _, _, flags, method, _, _, _, _, _, name_len, extra_len = _LOCAL.unpack(head)
        if self._fp.read(name_len) != stored:
            raise _damaged(name, "has a different name in its local header")
        if flags & _ENCRYPTED:
            raise BadInput(
                f"{self.label}: zip member {quoted(name)} is encrypted; give an unencrypted zip",
                member=name,
                problem="encrypted",
            )
        if method != info.compress_type:
            raise _damaged(name, "has a different compression method in its local header")
        data_start = info.header_offset + _LOCAL.size + name_len + extra_len
        return ZipEntry(info=info, name=name, data_start=data_start)

    def read(self, entry: ZipEntry) -> Iterator[bytes]:
        """The member's bytes in slices of at most 1 MiB, never more than it declares.

        Raises UnsafeInput as soon as it inflates past its declared size, and
        IntegrityError at the end if its size or CRC-32 is not the declared one.
        """
        info = entry.info
        fp = self._fp
        dec = zlib.decompressobj(-zlib.MAX_WBITS) if info.compress_type == _DEFLATED else None
        pos, left = entry.data_start, info.compress_size
        pending = b""
        size = crc = 0
        while dec is None or not dec.eof:
            if not pending and left:
                fp.seek(pos)
                pending = fp.read(min(left, _READ))
                if not pending:
                    raise _damaged(entry.name, "has its data cut short")
                pos += len(pending)
                left -= len(pending)
            if dec is None:
                out, pending = pending, b""
                if not out:
                    break
            else:
                try:
                    out = dec.decompress(pending, _OUT)  # b"" drains what zlib still holds
                except zlib.error as exc:
                    raise _damaged(entry.name, f"has corrupt deflate data ({exc})") from exc
                pending = dec.unconsumed_tail
                if not out and not pending and not left:
                    break
            if out:
                size += len(out)
                if size > info.file_size:
                    raise unsafe(
                        entry.name,
                        "size_mismatch",
                        f"inflates to more than the {info.file_size} bytes it declares "
                        "(a possible decompression bomb)",
                    )
                crc = zlib.crc32(out, crc)
                yield out
        if dec is not None and not dec.eof:
            raise _damaged(entry.name, "has its deflate data cut short")
        if size != info.file_size:
            raise _damaged(entry.name, f"holds {size} bytes but declares {info.file_size}")
        if crc != info.CRC:
            raise _damaged(entry.name, "fails its CRC-32 check")

    def read_small(self, entry: ZipEntry, limit: int, what: str) -> bytes:
        """A member's whole content when it is at most `limit` bytes (a symlink's target)."""
        if entry.info.file_size > limit:
            raise unsafe(entry.name, "name_too_long", f"has a {what} over {limit} bytes")
        return b"".join(self.read(entry))


def _fs_name(extra: bytes, stored: bytes) -> str:
    """A name without the UTF-8 flag, as `unzip` on Linux writes it: Info-ZIP's Unicode
    Path field when it belongs to this name, else the raw bytes (UTF-8 in practice:
    `zip` on Linux does not set the flag), undecodable bytes kept as tar's are."""
    pos = 0
    while pos + 4 <= len(extra):
        tag, size = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4 : pos + 4 + size]
        ours = len(body) > 5 and struct.unpack_from("<L", body, 1)[0] == zlib.crc32(stored)
        if tag == _UNICODE_PATH and ours and body[0] == 1:
            with contextlib.suppress(UnicodeDecodeError):
                return body[5:].decode("utf-8")
        pos += 4 + size
    return stored.decode("utf-8", "surrogateescape")


def _damaged(name: str, what: str) -> IntegrityError:
    return IntegrityError(
        f"zip member {quoted(name)} {what}; the archive is damaged (re-fetch or re-make it)",
        member=name,
        problem="damaged",
    )


def _refuse_overlaps(entries: list[ZipEntry], start_dir: int) -> None:
    """No two entries may share bytes, and none may reach into the directory."""
    ordered = sorted(entries, key=lambda e: (e.info.header_offset, e.end))
    for previous, entry in itertools.pairwise(ordered):
        if entry.info.header_offset < previous.end:
            raise unsafe(
                entry.name,
                "overlapping_entries",
                f"shares its data with {quoted(previous.name)} (overlapping zip entries: a "
                "known decompression-bomb trick)",
            )
    for entry in ordered:
        if entry.end > start_dir:
            raise _damaged(entry.name, "has data running into the zip's table of contents")


def _directory_size(fp: IO[bytes]) -> int | None:
    """The central directory's size from the end record zipfile will use (its search)."""
    fp.seek(0, 2)
    size = fp.tell()
    tail_start = max(size - (1 << 16) - _EOCD.size, 0)
    fp.seek(tail_start)
    tail = fp.read()
    at = len(tail) - _EOCD.size
    if not (at >= 0 and tail.startswith(b"PK\x05\x06", at) and tail.endswith(b"\0\0")):
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < _EOCD.size:
            return None
    directory: int = _EOCD.unpack_from(tail, at)[5]
    end_record = tail_start + at
    if end_record >= _LOCATOR_SIZE + _EOCD64.size:
        fp.seek(end_record - _LOCATOR_SIZE)
        if fp.read(4) == b"PK\x06\x07":
            fp.seek(end_record - _LOCATOR_SIZE - _EOCD64.size)
            record = fp.read(_EOCD64.size)
            if record.startswith(b"PK\x06\x06"):
                directory = _EOCD64.unpack(record)[8]
    return directory


async def in_thread(work: Callable[[], T]) -> T:
    """Run `work` in a thread; if cancelled, let it finish before the caller cleans up
    (closes the spool it reads, discards the tree it writes), then re-raise."""
    future = asyncio.get_running_loop().run_in_executor(None, work)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await future
        raise


@contextlib.asynccontextmanager
async def spooled_zip(
    raw: AsyncIterator[bytes], spool_dir: Path, *, label: str, max_entries: int
) -> AsyncIterator[ZipSpool]:
    """Spool `raw` into `spool_dir` and open it as a checked zip; the file goes on exit.

    The spool holds the whole raw zip on disk: its size is bounded by what the
    caller's stream allows (the part's verified size).
    """
    fp = tempfile.TemporaryFile(dir=spool_dir, prefix=".envrestore-zip-")  # noqa: SIM115
    try:
        async for chunk in raw:
            if len(chunk) >= _THREAD_MIN:
                await in_thread(functools.partial(fp.write, chunk))
            else:
                fp.write(chunk)
        await in_thread(fp.flush)
        yield await in_thread(lambda: ZipSpool(fp, label=label, max_entries=max_entries))
    finally:
        fp.close()
