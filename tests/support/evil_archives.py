"""Builders of unsafe (and safe) tar archives for tests, in memory.

Each builder returns the bytes of an *uncompressed* tar whose members sit under
`top/` like a real files part; `gzipped()` compresses one. `UNSAFE` maps a case
name to (builder, the `problem` code UnsafeInput must carry). Escapes aim at
`outside`, a path relative to the extraction directory (default "../outside"),
so a test can put a sentinel directory there and check it stays untouched.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator

TOP = "files_dev"


def _info(
    name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, **extra: object
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.mode = 0o644 if kind != tarfile.DIRTYPE else 0o755
    info.mtime = 1_700_000_000
    for key, value in extra.items():
        setattr(info, key, value)
    return info


def build(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    """A pax tar of exactly these members, in this order (no normalisation by tarfile)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


def gzipped(tar: bytes) -> bytes:
    return gzip.compress(tar, 6)


def _dir(name: str) -> tuple[tarfile.TarInfo, bytes]:
    return _info(name, tarfile.DIRTYPE), b""


def _file(name: str, data: bytes = b"payload\n") -> tuple[tarfile.TarInfo, bytes]:
    return _info(name, size=len(data)), data


def _symlink(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    return _info(name, tarfile.SYMTYPE, linkname=target), b""


def _hardlink(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    return _info(name, tarfile.LNKTYPE, linkname=target), b""


def absolute_path(outside: str = "/tmp/envrestore-evil") -> bytes:
    return build([_dir(TOP), _file(f"{outside}/abs.txt")])


def parent_escape(outside: str = "../outside") -> bytes:
    return build([_dir(TOP), _file(f"{TOP}/../{outside}/escaped.txt")])


def symlink_outside(outside: str = "../outside") -> bytes:
    """A symlink whose relative target climbs out of the root, then a write through it."""
    return build([_dir(TOP), _symlink(f"{TOP}/out", outside), _file(f"{TOP}/out/x.txt")])


def symlink_absolute(outside: str = "/tmp") -> bytes:
    return build([_dir(TOP), _symlink(f"{TOP}/a", outside), _file(f"{TOP}/a/x.txt")])


def symlink_chain_escape() -> bytes:
    """Each link looks inside on its own; together `l` reaches the root's parent."""
    return build(
        [
            _dir(TOP),
            _dir(f"{TOP}/d"),
            _symlink(f"{TOP}/l", "d/x/../.."),
            _symlink(f"{TOP}/d/x", ".."),
        ]
    )


def write_through_symlink() -> bytes:
    """`a -> sub` is harmless alone; `a/x` would be written through it."""
    return build(
        [_dir(TOP), _dir(f"{TOP}/sub"), _symlink(f"{TOP}/a", "sub"), _file(f"{TOP}/a/x.txt")]
    )


def hardlink_outside(outside: str = "../outside/target.txt") -> bytes:
    return build([_dir(TOP), _hardlink(f"{TOP}/hl", outside), _file(f"{TOP}/ok.txt")])


def hardlink_absolute(target: str = "/etc/passwd") -> bytes:
    return build([_dir(TOP), _hardlink(f"{TOP}/hl", target)])


def hardlink_to_symlink() -> bytes:
    """A hardlink to an inner symlink would move its relative target elsewhere."""
    return build(
        [
            _dir(TOP),
            _dir(f"{TOP}/d"),
            _dir(f"{TOP}/d/e"),
            _symlink(f"{TOP}/d/e/l", "../.."),
            _hardlink(f"{TOP}/h", f"{TOP}/d/e/l"),
        ]
    )


def char_device() -> bytes:
    return build([_dir(TOP), (_info(f"{TOP}/null", tarfile.CHRTYPE, devmajor=1, devminor=3), b"")])


def block_device() -> bytes:
    return build([_dir(TOP), (_info(f"{TOP}/sda", tarfile.BLKTYPE, devmajor=8, devminor=0), b"")])


def fifo() -> bytes:
    return build([_dir(TOP), (_info(f"{TOP}/pipe", tarfile.FIFOTYPE), b"")])


def two_top_folders() -> bytes:
    return build([_dir(TOP), _file(f"{TOP}/a.txt"), _dir("other"), _file("other/b.txt")])


def top_is_file() -> bytes:
    return build([_file("just-a-file.txt")])


def nul_in_name() -> bytes:
    """A pax `path` with a NUL (a ustar name field just ends at the NUL)."""
    info, data = _file(f"{TOP}/a.txt")
    info.pax_headers = {"path": f"{TOP}/a\0b.txt"}
    return build([_dir(TOP), (info, data)])


def long_name(length: int = 5000) -> bytes:
    return build([_dir(TOP), _file(f"{TOP}/{'n' * length}")])


def too_big(size: int = 2 * 1024 * 1024) -> bytes:
    """A plain file of `size` zero bytes: over a test's small byte cap."""
    return build([_dir(TOP), _file(f"{TOP}/big.bin", b"\0" * size)])


def many_members(count: int = 50) -> bytes:
    return build([_dir(TOP)] + [_file(f"{TOP}/f{i}.txt") for i in range(count)])


def bomb_tar_gz(inflated: int, top: str = TOP) -> bytes:
    """A gzip of a tar holding one file of `inflated` zero bytes (~1000:1), built streaming."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [comp.compress(_info(top, tarfile.DIRTYPE).tobuf(tarfile.PAX_FORMAT))]
    head = _info(f"{top}/bomb.bin", size=inflated)
    out.append(comp.compress(head.tobuf(tarfile.PAX_FORMAT)))
    zeros = b"\0" * (1 << 20)
    left = inflated + (-inflated % 512)
    while left:
        piece = zeros[: min(left, len(zeros))]
        out.append(comp.compress(piece))
        left -= len(piece)
    out.append(comp.compress(b"\0" * 1024))
    out.append(comp.flush())
    return b"".join(out)


def odd_modes(top: str = TOP) -> bytes:
    """Modes a restore must not keep: setuid/setgid/sticky, world-writable, foreign owners.

    `run.sh` 04755 (setuid root), `world.txt` 0666, `g.sh` 02750, `private.sh`
    0750, `secret.txt` 0600, `open/` 01777 (sticky, world-writable) and the
    files owned by uid/gid 0 ("root").
    """
    root = {"uid": 0, "gid": 0, "uname": "root", "gname": "root"}
    return build(
        [
            (_info(top, tarfile.DIRTYPE, mode=0o777, **root), b""),
            (_info(f"{top}/run.sh", size=3, mode=0o4755, **root), b"#!\n"),
            (_info(f"{top}/world.txt", size=2, mode=0o666, **root), b"w\n"),
            (_info(f"{top}/g.sh", size=2, mode=0o2750, **root), b"g\n"),
            (_info(f"{top}/private.sh", size=2, mode=0o750, **root), b"p\n"),
            (_info(f"{top}/secret.txt", size=2, mode=0o600, **root), b"s\n"),
            (_info(f"{top}/open", tarfile.DIRTYPE, mode=0o1777, **root), b""),
            (_info(f"{top}/open/readonly.txt", size=2, mode=0o444, **root), b"r\n"),
        ]
    )


def only_top(top: str = TOP) -> bytes:
    """An archive holding its top folder and nothing in it."""
    return build([_dir(top)])


def no_top_folder() -> bytes:
    """Members at the archive's root, as `tar -czf x.tgz -C files .` without a folder."""
    return build([_dir("."), _file("./a.txt"), _dir("./2026"), _file("./2026/b.jpg")])


def wrong_top(top: str = "files_live") -> bytes:
    """A well-formed files part of another environment."""
    return build([_dir(top), _file(f"{top}/a.txt")])


def zip_bytes() -> bytes:
    """A real zip of one file."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("files_dev/a.txt", "hello\n" * 200)
    return buf.getvalue()


#: Things that are not a tar, as they would be after the part's gzip is removed:
#: case → (bytes, a phrase the error must contain).
NOT_TAR: dict[str, tuple[Callable[[], bytes], str]] = {
    "zip": (zip_bytes, "zip archive"),
    "gzip_in_gzip": (lambda: gzip.compress(build([_dir(TOP), _file(f"{TOP}/a.txt")])), "gzip"),
    "bzip2": (lambda: bz2.compress(b"x" * 2000), "bzip2"),
    "xz": (lambda: lzma.compress(b"x" * 2000), "xz"),
    "zstd": (lambda: b"\x28\xb5\x2f\xfd" + bytes(range(256)) * 3, "zstd"),
    "7z": (lambda: b"7z\xbc\xaf\x27\x1c\x00\x04" + bytes(600), "7z archive"),
    "rar": (lambda: b"Rar!\x1a\x07\x01\x00" + bytes(600), "rar archive"),
    "pg_custom_dump": (lambda: b"PGDMP\x01\x0e\x00\x04\x08\x01\x01" + bytes(600), "PostgreSQL"),
    "sql_dump": (
        lambda: b"-- MySQL dump 10.13\n\nCREATE TABLE wp_posts (ID int);\n" * 20,
        "SQL dump",
    ),
    "small_sql": (lambda: b"INSERT INTO t VALUES (1);\n", "SQL dump"),
    "text": (lambda: b"hello, this is a note about the site\n" * 30, "plain text"),
    "binary": (lambda: bytes([0x13, 0x37, 0xC0, 0xDE]) + bytes(range(256)) * 4, "unknown binary"),
}


#: case → (builder of the uncompressed tar, the UnsafeInput `problem` it must raise)
UNSAFE: dict[str, tuple[Callable[[], bytes], str]] = {
    "absolute_path": (absolute_path, "absolute_path"),
    "parent_escape": (parent_escape, "parent_reference"),
    "symlink_outside": (symlink_outside, "link_escapes"),
    "symlink_absolute": (symlink_absolute, "absolute_link"),
    "symlink_chain_escape": (symlink_chain_escape, "link_escapes"),
    "write_through_symlink": (write_through_symlink, "through_symlink"),
    "hardlink_outside": (hardlink_outside, "link_escapes"),
    "hardlink_absolute": (hardlink_absolute, "absolute_link"),
    "hardlink_to_symlink": (hardlink_to_symlink, "link_escapes"),
    "char_device": (char_device, "device"),
    "block_device": (block_device, "device"),
    "fifo": (fifo, "fifo"),
    "two_top_folders": (two_top_folders, "outside_top"),
    "top_is_file": (top_is_file, "top_not_folder"),
    "nul_in_name": (nul_in_name, "nul_in_name"),
    "long_name": (long_name, "name_too_long"),
    "too_big": (too_big, "too_large"),
    "many_members": (many_members, "too_many_members"),
}


def chunked(data: bytes, size: int = 7919) -> Iterator[bytes]:
    """Odd-sized slices, so headers straddle chunk boundaries."""
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]
