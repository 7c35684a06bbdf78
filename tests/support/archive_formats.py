"""The same tree as tar, tar.gz, tar.zst, tar.bz2 or zip, built in memory for tests.

`Entry` describes one member; `pack(fmt, entries)` makes the archive with the
real modules (tarfile, zipfile, gzip, bz2, zstandard). Zip members get the unix
mode `zip -y` would store (`S_IFLNK` for a symlink, whose content is its
target). `cd_entries` and `patch` rewrite a zip's bytes for hostile cases.
"""

from __future__ import annotations

import bz2
import gzip
import io
import stat
import struct
import tarfile
import zipfile
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import zstandard

TAR_FORMATS = ("tar", "tar.gz", "tar.zst", "tar.bz2")
FORMATS = (*TAR_FORMATS, "zip")
_TYPES = {
    "file": (tarfile.REGTYPE, stat.S_IFREG),
    "dir": (tarfile.DIRTYPE, stat.S_IFDIR),
    "symlink": (tarfile.SYMTYPE, stat.S_IFLNK),
    "hardlink": (tarfile.LNKTYPE, 0),
    "fifo": (tarfile.FIFOTYPE, stat.S_IFIFO),
    "chr": (tarfile.CHRTYPE, stat.S_IFCHR),
}


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str = "file"
    data: bytes = b"payload\n"
    target: str = ""
    mode: int | None = None

    @property
    def bits(self) -> int:
        if self.mode is not None:
            return self.mode
        return 0o755 if self.kind == "dir" else 0o777 if self.kind == "symlink" else 0o644


def file(name: str, data: bytes = b"payload\n", mode: int | None = None) -> Entry:
    return Entry(name, "file", data, mode=mode)


def folder(name: str) -> Entry:
    return Entry(name, "dir", b"")


def symlink(name: str, target: str) -> Entry:
    return Entry(name, "symlink", b"", target)


def hardlink(name: str, target: str) -> Entry:
    return Entry(name, "hardlink", b"", target)


def tar_of(entries: Iterable[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.type = _TYPES[entry.kind][0]
            info.mode = entry.bits
            info.mtime = 1_700_000_000
            info.linkname = entry.target
            data = entry.data if entry.kind == "file" else b""
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


def zip_of(entries: Iterable[Entry], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as archive:
        for entry in entries:
            if entry.kind == "hardlink":
                raise ValueError("zip has no hardlinks")
            name = entry.name + (
                "/" if entry.kind == "dir" and not entry.name.endswith("/") else ""
            )
            info = zipfile.ZipInfo(name, (2023, 11, 14, 22, 13, 20))
            info.create_system = 3
            info.external_attr = (_TYPES[entry.kind][1] | entry.bits) << 16
            info.compress_type = zipfile.ZIP_STORED if entry.kind == "dir" else compression
            content = entry.target.encode() if entry.kind == "symlink" else entry.data
            archive.writestr(info, content if entry.kind != "dir" else b"")
    return buf.getvalue()


def compress(codec: str, data: bytes) -> bytes:
    if codec in ("plain", "tar"):
        return data
    if codec in ("gzip", "gz", "tar.gz"):
        return gzip.compress(data, 6)
    if codec in ("zstd", "zst", "tar.zst"):
        return zstandard.ZstdCompressor().compress(data)
    if codec in ("bzip2", "bz2", "tar.bz2"):
        return bz2.compress(data, 9)
    raise ValueError(codec)


def pack(fmt: str, entries: Iterable[Entry]) -> bytes:
    entries = list(entries)
    return zip_of(entries) if fmt == "zip" else compress(fmt, tar_of(entries))


async def stream(data: bytes, size: int = 7919) -> AsyncIterator[bytes]:
    """Odd-sized slices, so every header straddles chunk boundaries somewhere."""
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]


# ---------------------------------------------------------------- zip surgery

_CD = struct.Struct("<4s6H3L5H2L")


def cd_entries(data: bytes) -> list[tuple[int, int]]:
    """(position of the central-directory entry, its local header offset), in order."""
    eocd = data.rindex(b"PK\x05\x06")
    count, _size, start = struct.unpack_from("<HLL", data, eocd + 10)
    out: list[tuple[int, int]] = []
    pos = start
    for _ in range(count):
        fields = _CD.unpack_from(data, pos)
        out.append((pos, fields[16]))
        pos += _CD.size + fields[10] + fields[11] + fields[12]
    return out


def patch(data: bytes, offset: int, fmt: str, *values: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


def patch_both(data: bytes, index: int, *, cd: int, local: int, fmt: str, value: int) -> bytes:
    """Set one field in entry `index`'s directory entry (at `cd`) and local header (`local`)."""
    cd_pos, local_pos = cd_entries(data)[index]
    return patch(patch(data, cd_pos + cd, fmt, value), local_pos + local, fmt, value)


#: Field offsets: (in the central-directory entry, in the local header).
FLAGS = (8, 6)
CRC = (16, 14)
COMPRESSED_SIZE = (20, 18)
SIZE = (24, 22)
