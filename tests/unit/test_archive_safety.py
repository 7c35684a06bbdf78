"""Untrusted tar streams: every unsafe kind is refused, by name, before anything escapes."""

from __future__ import annotations

import gzip
import os
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

from pipelines.archives.extract import extract_tar
from pipelines.archives.safety import (
    DEFAULT_BOMB_CEILING,
    DEFAULT_BOMB_FLOOR,
    TarLimits,
    check_tar,
    limits_for,
)
from pipelines.errors import BadInput, IntegrityError, UnsafeInput
from pipelines.streams import gzip_decompress
from tests.support import evil_archives as evil

LIMITS = TarLimits(max_bytes=1 << 20, max_members=20)
#: Where evil.absolute_path() aims by default.
ABSOLUTE_TARGET = Path("/tmp/envrestore-evil")


async def stream(pieces: Iterable[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


def snapshot(root: Path, skip: Path) -> set[str]:
    """Every path under `root` except inside `skip`, symlinks not followed."""
    found: set[str] = set()
    for folder, dirs, files in os.walk(root):
        if Path(folder) == skip or skip in Path(folder).parents:
            continue
        for name in dirs + files:
            if Path(folder, name) != skip:
                found.add(str(Path(folder, name).relative_to(root)))
    return found


def exists(path: Path) -> bool:
    return os.path.lexists(path)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """tmp/work/{outside/sentinel.txt}: escapes aimed at ../outside land in a watched place."""
    work = tmp_path / "work"
    (work / "outside").mkdir(parents=True)
    (work / "outside" / "sentinel.txt").write_text("untouched")
    return work


@pytest.mark.parametrize("case", sorted(evil.UNSAFE))
async def test_check_tar_refuses_each_unsafe_kind_naming_member_and_problem(case: str) -> None:
    build, problem = evil.UNSAFE[case]
    with pytest.raises(UnsafeInput) as caught:
        await check_tar(stream(evil.chunked(build())), limits=LIMITS)
    assert caught.value.data["problem"] == problem
    assert repr(caught.value.data["member"])[1:60] in str(caught.value)


@pytest.mark.parametrize("case", sorted(evil.UNSAFE))
async def test_extract_tar_refuses_each_unsafe_kind_and_writes_nothing_outside_dest(
    case: str, workdir: Path
) -> None:
    build, problem = evil.UNSAFE[case]
    dest = workdir / "dest"
    before = snapshot(workdir, dest)
    with pytest.raises(UnsafeInput) as caught:
        await extract_tar(stream(evil.chunked(build())), dest, limits=LIMITS)
    assert caught.value.data["problem"] == problem
    assert snapshot(workdir, dest) == before
    assert (workdir / "outside" / "sentinel.txt").read_text() == "untouched"
    assert not exists(ABSOLUTE_TARGET)
    # A refused archive leaves no symlink behind (the caller discards dest anyway).
    assert not [p for p in dest.rglob("*") if p.is_symlink()]


async def test_unsafe_member_is_refused_before_its_data_is_written(workdir: Path) -> None:
    """The bomb's file is refused at its header: not even a partial file appears."""
    dest = workdir / "dest"
    with pytest.raises(UnsafeInput):
        await extract_tar(stream([evil.too_big()]), dest, limits=LIMITS)
    assert not (dest / "big.bin").exists()


async def test_gzip_bomb_is_refused_by_the_byte_cap_while_streaming(tmp_path: Path) -> None:
    bomb = evil.bomb_tar_gz(64 << 20)
    assert len(bomb) < 200_000
    limits = TarLimits(max_bytes=8 << 20)
    with pytest.raises(UnsafeInput) as caught:
        await extract_tar(
            gzip_decompress(stream([bomb]), max_output=limits.max_stream_bytes),
            tmp_path / "dest",
            limits=limits,
        )
    assert caught.value.data["problem"] == "too_large"
    assert "bomb" in str(caught.value)


async def test_truncated_tar_is_an_integrity_error() -> None:
    good = evil.build([(evil._info("top/a.txt", size=5000), b"x" * 5000)])
    with pytest.raises(IntegrityError, match="truncated"):
        await check_tar(stream([good[:3000]]), limits=LIMITS)


async def test_gzip_data_given_as_tar_says_to_decompress_first() -> None:
    tar = evil.build([(evil._info("top/a.bin", size=4000), os.urandom(4000))])
    with pytest.raises(IntegrityError, match="decompress it first"):
        await check_tar(stream([gzip.compress(tar)]), limits=LIMITS)


async def test_archive_without_members_is_bad_input() -> None:
    with pytest.raises(BadInput, match="no members"):
        await check_tar(stream([b"\0" * 1024]), limits=LIMITS)


async def test_extract_refuses_a_non_empty_destination(tmp_path: Path) -> None:
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "old.txt").write_text("x")
    tar = evil.build([(evil._info("top/a.txt", size=1), b"x")])
    with pytest.raises(BadInput, match="not empty"):
        await extract_tar(stream([tar]), tmp_path / "dest", limits=LIMITS)


async def test_leading_dot_slash_and_any_top_folder_name_are_accepted(tmp_path: Path) -> None:
    """Archives made with `tar -C dir .` and other tools' top folders work too."""
    tar = evil.build(
        [
            (evil._info("./", b"5"), b""),
            (evil._info("./site_backup/", b"5"), b""),
            (evil._info("./site_backup/a.txt", size=2), b"hi"),
        ]
    )
    report = await extract_tar(stream(evil.chunked(tar, 100)), tmp_path / "d", limits=LIMITS)
    assert report.top == "site_backup"
    assert (tmp_path / "d" / "a.txt").read_bytes() == b"hi"


async def test_setuid_setgid_and_sticky_bits_are_stripped(tmp_path: Path) -> None:
    tar = evil.build(
        [
            (evil._info("top", b"5", mode=0o1777), b""),
            (evil._info("top/run.sh", size=3, mode=0o6755), b"#!\n"),
        ]
    )
    await extract_tar(stream([tar]), tmp_path / "d", limits=LIMITS)
    assert (tmp_path / "d" / "run.sh").stat().st_mode & 0o7777 == 0o755
    assert (tmp_path / "d").stat().st_mode & 0o7777 == 0o777


async def test_a_later_member_replaces_an_earlier_file_of_the_same_name(tmp_path: Path) -> None:
    tar = evil.build(
        [
            (evil._info("top/a.txt", size=3), b"old"),
            (evil._info("top/a.txt", size=3), b"new"),
        ]
    )
    report = await extract_tar(stream([tar]), tmp_path / "d", limits=LIMITS)
    assert (tmp_path / "d" / "a.txt").read_bytes() == b"new"
    assert report.files == 2


def test_limits_for_scales_with_the_declared_size_between_floor_and_ceiling() -> None:
    assert limits_for(1 << 30).max_bytes == 20 << 30
    assert limits_for(1000).max_bytes == DEFAULT_BOMB_FLOOR
    assert limits_for(1 << 40).max_bytes == DEFAULT_BOMB_CEILING
    assert limits_for(1 << 30, ratio=5).max_bytes == 5 << 30

    class Tuned:
        archive_bomb_ratio = 2
        archive_bomb_ceiling_bytes = 3 << 30

    assert limits_for(1 << 30, Tuned()).max_bytes == 2 << 30
    assert limits_for(10 << 30, Tuned()).max_bytes == 3 << 30
