"""The threaded writer gives the same tree as writing in one thread, in archive order."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from envrestore.pipelines.archives.extract import POOLED_MIN_BYTES, extract_tar
from envrestore.pipelines.archives.safety import ArchiveRules, TarLimits
from envrestore.pipelines.errors import UnsafeInput

LIMITS = TarLimits(max_bytes=64 << 20, max_members=10_000)
RULES = ArchiveRules(top="files_dev")


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"", **kw: object) -> None:
    info = tarfile.TarInfo(f"files_dev/{name}")
    info.size = len(data)
    info.mtime = 1_700_000_000 + len(name)
    info.mode = 0o644
    for key, value in kw.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data) if data else None)


def busy_archive() -> bytes:
    """Files in folders, most of them big enough for the writer threads, small ones
    between them, then members that depend on files probably still queued."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for folder in range(4):
            _add(tar, f"d{folder}", type=tarfile.DIRTYPE, mode=0o755)
            for index in range(40):
                size = 100 + index if index % 4 == 0 else POOLED_MIN_BYTES + index * 37
                _add(tar, f"d{folder}/f{index}.bin", os.urandom(size))
        _add(tar, "deep/er/still/x.txt", b"implicit folders")
        _add(tar, "d0/f1.bin", b"the later copy wins")  # a duplicate, just written
        _add(tar, "d1/f2.bin", type=tarfile.DIRTYPE, mode=0o755)  # a folder replaces a file
        _add(tar, "d1/f2.bin/inside", b"in the new folder")
        _add(tar, "link", type=tarfile.LNKTYPE, linkname="files_dev/d3/f39.bin")
        _add(tar, "sym", type=tarfile.SYMTYPE, linkname="d2/f3.bin")
        _add(tar, "big.bin", os.urandom(3 << 20))  # streamed by the parser's thread
        _add(tar, "empty")
    return out.getvalue()


async def chunks(data: bytes, size: int = 65_536) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def tree(root: Path) -> dict[str, tuple[int, int | None, bytes]]:
    """Mode, mtime and content (a link's target) of every path; folders the archive
    does not list (deep/...) get the time they were made, so theirs is left out."""
    found: dict[str, tuple[int, int | None, bytes]] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            relative = str(path.relative_to(root))
            st = path.lstat()
            body = str(path.readlink()).encode() if path.is_symlink() else b""
            if path.is_file() and not path.is_symlink():
                body = path.read_bytes()
            unlisted = relative.startswith("deep") and path.is_dir()
            found[relative] = (st.st_mode, None if unlisted else st.st_mtime_ns, body)
    return found


@pytest.mark.parametrize("threads", [1, 4])
async def test_threads_give_the_tree_one_thread_gives(tmp_path: Path, threads: int) -> None:
    data = busy_archive()
    await extract_tar(chunks(data), tmp_path / "one", limits=LIMITS, rules=RULES, threads=0)
    await extract_tar(chunks(data), tmp_path / "many", limits=LIMITS, rules=RULES, threads=threads)
    one, many = tree(tmp_path / "one"), tree(tmp_path / "many")
    assert many == one
    assert (tmp_path / "many/d0/f1.bin").read_bytes() == b"the later copy wins"
    assert (tmp_path / "many/d1/f2.bin/inside").read_bytes() == b"in the new folder"
    assert (tmp_path / "many/link").stat().st_ino == (tmp_path / "many/d3/f39.bin").stat().st_ino
    assert len(many) == 4 * 40 + 4 + 4 + 1 + 4


@pytest.mark.parametrize("threads", [0, 4])
async def test_a_file_under_a_file_still_being_written_is_refused(
    tmp_path: Path, threads: int
) -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for index in range(20):
            _add(tar, f"f{index}", b"x" * POOLED_MIN_BYTES)
        _add(tar, "f19/child", b"through a file")
    with pytest.raises(UnsafeInput) as refused:
        await extract_tar(
            chunks(out.getvalue()), tmp_path / "d", limits=LIMITS, rules=RULES, threads=threads
        )
    assert refused.value.data["problem"] == "through_file"
    assert not (tmp_path / "d/f19").is_dir()


def _member(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(f"files_dev/{name}")
    info.size, info.mode, info.mtime = size, 0o644, 1_700_000_000
    return info.tobuf(format=tarfile.PAX_FORMAT)


async def big_chunks(count: int, pooled: int, big: int) -> AsyncIterator[bytes]:
    """Each chunk: a file for the writer threads, then a big one (as a zstd part's
    inflater may hand over tens of MiB at once), made one chunk at a time."""
    for index in range(count):
        body = os.urandom(pooled)
        pad = b"\0" * (-pooled % 512)
        yield (
            _member(f"p{index}.bin", pooled)
            + body
            + pad
            + _member(f"z{index}.bin", big)
            + bytes(big)
        )
    yield b"\0" * 1024


async def _peak(dest: Path, threads: int, count: int, big: int) -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        await extract_tar(
            big_chunks(count, POOLED_MIN_BYTES + 1000, big),
            dest,
            limits=TarLimits(max_bytes=1 << 30, max_members=1000),
            rules=RULES,
            threads=threads,
        )
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


async def test_queued_files_do_not_keep_the_chunks_they_came_in_alive(tmp_path: Path) -> None:
    """The writer threads add their bounded queue to memory, not the inflater's chunks:
    a queued file must not pin the whole decompressed chunk it was read from (a zstd
    part's inflater hands over tens of MiB at once)."""
    count, big = 24, 4 << 20
    inline = await _peak(tmp_path / "inline", 0, count, big)
    pooled = await _peak(tmp_path / "pooled", 4, count, big)
    assert (tmp_path / "pooled" / f"p{count - 1}.bin").stat().st_size == POOLED_MIN_BYTES + 1000
    assert pooled < inline + (16 << 20), f"{pooled >> 20} MiB with threads, {inline >> 20} without"
