"""Untrusted tar streams: every unsafe kind is refused, by name, before anything escapes."""

from __future__ import annotations

import dataclasses
import gzip
import os
import re
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

from envrestore.pipelines.archives.extract import extract_tar
from envrestore.pipelines.archives.safety import (
    DEFAULT_BOMB_CEILING,
    DEFAULT_BOMB_FLOOR,
    ArchiveRules,
    TarLimits,
    check_tar,
    decompress_archive,
    limits_for,
    printable,
)
from envrestore.pipelines.errors import BadInput, IntegrityError, UnsafeInput
from envrestore.pipelines.streams import gzip_decompress
from tests.support import evil_archives as evil

LIMITS = TarLimits(max_bytes=1 << 20, max_members=20)
KEEP = dataclasses.replace(LIMITS, mode_policy="keep")
FILES_DEV = ArchiveRules(
    label="the files part", top="files_dev", top_reason="this is a backup of dev"
)
#: Characters no error message may carry raw (they act on terminals and logs).
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
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
    member = caught.value.data["member"]  # maybe escaped already by the error itself
    assert printable(member)[:59] in str(caught.value) or member[:59] in str(caught.value)
    assert not CONTROL.search(str(caught.value))


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


async def test_gzip_data_given_as_tar_says_it_is_compressed_twice() -> None:
    tar = evil.build([(evil._info("top/a.bin", size=4000), os.urandom(4000))])
    with pytest.raises(BadInput, match="not a tar archive: found gzip-compressed data") as caught:
        await check_tar(stream([gzip.compress(tar)]), limits=LIMITS)
    assert caught.value.data["problem"] == "not_tar"


async def test_a_damaged_tar_header_is_still_an_integrity_error() -> None:
    """A first header with tar's magic but a bad checksum is damage, not another format."""
    tar = bytearray(evil.build([(evil._info("top/a.txt", size=2), b"hi")]))
    tar[0] ^= 0x01
    with pytest.raises(IntegrityError, match="damaged"):
        await check_tar(stream([bytes(tar)]), limits=LIMITS)


async def test_archive_without_members_is_bad_input() -> None:
    with pytest.raises(BadInput, match="is empty: restoring it would delete every file"):
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


def modes(root: Path) -> dict[str, int]:
    """Relative path → permission bits (with setuid/setgid/sticky), root included as "."."""
    out = {".": root.stat().st_mode & 0o7777}
    for path in root.rglob("*"):
        out[str(path.relative_to(root))] = path.lstat().st_mode & 0o7777
    return out


async def test_setuid_setgid_and_sticky_bits_are_stripped(tmp_path: Path) -> None:
    tar = evil.build(
        [
            (evil._info("top", b"5", mode=0o1777), b""),
            (evil._info("top/run.sh", size=3, mode=0o6755), b"#!\n"),
        ]
    )
    await extract_tar(stream([tar]), tmp_path / "d", limits=LIMITS)
    assert (tmp_path / "d" / "run.sh").stat().st_mode & 0o7777 == 0o755
    assert (tmp_path / "d").stat().st_mode & 0o7777 == 0o755


async def test_normalise_gives_0644_and_0755_owned_by_the_worker(tmp_path: Path) -> None:
    """Exec bit kept, group/other write and setuid/setgid/sticky gone, owner not root."""
    await extract_tar(stream([evil.odd_modes()]), tmp_path / "d", limits=LIMITS)
    assert modes(tmp_path / "d") == {
        ".": 0o755,
        "run.sh": 0o755,
        "world.txt": 0o644,
        "g.sh": 0o755,
        "private.sh": 0o755,
        "secret.txt": 0o644,
        "open": 0o755,
        "open/readonly.txt": 0o644,
    }
    owners = {(p.lstat().st_uid, p.lstat().st_gid) for p in (tmp_path / "d").rglob("*")}
    assert owners == {(os.getuid(), os.getgid())}
    # A user's check: nothing the web server's other users could change or run as root.
    assert not [p for p in (tmp_path / "d").rglob("*") if p.stat().st_mode & 0o7022]


async def test_keep_policy_keeps_modes_but_never_setuid_setgid_or_sticky(tmp_path: Path) -> None:
    await extract_tar(stream([evil.odd_modes()]), tmp_path / "d", limits=KEEP)
    assert modes(tmp_path / "d") == {
        ".": 0o777,
        "run.sh": 0o755,
        "world.txt": 0o666,
        "g.sh": 0o750,
        "private.sh": 0o750,
        "secret.txt": 0o600,
        "open": 0o777,
        "open/readonly.txt": 0o444,
    }
    assert all(p.lstat().st_uid == os.getuid() for p in (tmp_path / "d").rglob("*"))


async def test_keep_policy_leaves_the_owner_able_to_read_files_and_enter_folders(
    tmp_path: Path,
) -> None:
    """An archive's 0000 must not make a tree the worker cannot read (git) nor discard."""
    tar = evil.build(
        [
            (evil._info("top", b"5", mode=0o755), b""),
            (evil._info("top/locked", b"5", mode=0o000), b""),
            (evil._info("top/locked/obj", size=2, mode=0o000), b"ob"),
        ]
    )
    await extract_tar(stream([tar]), tmp_path / "d", limits=KEEP)
    assert modes(tmp_path / "d")["locked"] == 0o700
    assert (tmp_path / "d" / "locked" / "obj").read_bytes() == b"ob"
    assert modes(tmp_path / "d")["locked/obj"] == 0o400


def test_limits_for_takes_the_mode_policy_from_settings() -> None:
    class Keep:
        files_mode_policy = "keep"

    class Normalise:
        files_mode_policy = "normalise"

    assert limits_for(1000).mode_policy == "normalise"
    assert limits_for(1000, Normalise()).mode_policy == "normalise"
    assert limits_for(1000, Keep()).mode_policy == "keep"


async def test_an_archive_with_only_its_top_folder_is_refused_as_empty(tmp_path: Path) -> None:
    with pytest.raises(
        BadInput, match=r"^the files part is empty: restoring it would delete every"
    ):
        await extract_tar(stream([evil.only_top()]), tmp_path / "d", limits=LIMITS, rules=FILES_DEV)


@pytest.mark.parametrize(
    "data",
    [b"", b"\0" * 10240, evil.only_top(), evil.build([evil._symlink("files_dev/l", "x")])],
    ids=["no-bytes", "end-marker-only", "top-folder-only", "symlink-only"],
)
async def test_empty_archives_are_refused_before_anything_is_used(data: bytes) -> None:
    with pytest.raises(BadInput) as caught:
        await check_tar(stream([data] if data else []), limits=LIMITS, rules=FILES_DEV)
    assert caught.value.data["problem"] == "empty"
    assert str(caught.value).startswith("the files part is empty")


async def test_one_file_is_not_empty(tmp_path: Path) -> None:
    tar = evil.build([evil._file("files_dev/only.txt")])  # no entry for the top folder itself
    report = await extract_tar(stream([tar]), tmp_path / "d", limits=LIMITS, rules=FILES_DEV)
    assert (report.top, report.files) == ("files_dev", 1)
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
    # A folder alone is content too: restoring it is a tree with one empty folder.
    report = await check_tar(
        stream([evil.build([evil._dir("files_dev"), evil._dir("files_dev/2026")])]),
        limits=LIMITS,
        rules=FILES_DEV,
    )
    assert report.members == 2


async def test_another_environments_top_folder_is_refused_naming_both(tmp_path: Path) -> None:
    dest = tmp_path / "d"
    with pytest.raises(BadInput) as caught:
        await extract_tar(stream([evil.wrong_top()]), dest, limits=LIMITS, rules=FILES_DEV)
    assert str(caught.value) == (
        "the files part's top folder is files_live/, but this is a backup of dev: expected "
        "files_dev/ (check that the right backup or part was uploaded)"
    )
    assert caught.value.data["problem"] == "wrong_top"
    assert not (dest / "a.txt").exists()  # refused at the first member, before any write


async def test_members_at_the_root_are_refused_as_having_no_top_folder(tmp_path: Path) -> None:
    with pytest.raises(BadInput) as caught:
        await check_tar(stream([evil.no_top_folder()]), limits=LIMITS, rules=FILES_DEV)
    message = str(caught.value)
    assert message.startswith("the files part has no top folder")
    assert "'./a.txt'" in message and "files_dev/" in message
    assert caught.value.data["problem"] == "no_top"


async def test_a_single_folder_at_the_root_is_not_taken_for_the_top_folder() -> None:
    """`tar -C files .` of a tree with one folder: `2026/` must not pass as the top."""
    tar = evil.build([evil._dir("2026"), evil._file("2026/11/photo.jpg")])
    with pytest.raises(BadInput, match="top folder is 2026/, but this is a backup of dev"):
        await check_tar(stream([tar]), limits=LIMITS, rules=FILES_DEV)
    # Without an expected top folder (an upload of unknown origin), any single one will do.
    assert (await check_tar(stream([tar]), limits=LIMITS)).top == "2026"


async def test_top_folder_names_in_errors_are_escaped_and_cut() -> None:
    evil_top = "files_\x1b[31mlive\x00" + "x" * 500
    tar = evil.build([evil._file(f"{evil_top}/a.txt")])
    with pytest.raises((BadInput, UnsafeInput)) as caught:
        await check_tar(stream([tar]), limits=LIMITS, rules=FILES_DEV)
    message = str(caught.value)
    assert not CONTROL.search(message)
    assert "\\x1b[31m" in message
    assert len(message) < 600


@pytest.mark.parametrize("case", sorted(evil.NOT_TAR))
async def test_data_that_is_not_a_tar_is_named(case: str) -> None:
    build, phrase = evil.NOT_TAR[case]
    with pytest.raises(BadInput) as caught:
        await check_tar(stream(evil.chunked(build(), 100)), limits=LIMITS, rules=FILES_DEV)
    message = str(caught.value)
    assert message.startswith("the files part is not a tar archive: found ")
    assert phrase in message and "tar -czf" in message
    assert not CONTROL.search(message)


@pytest.mark.parametrize("case", ["zip", "sql_dump", "small_sql", "binary", "7z"])
async def test_a_part_that_is_not_gzip_at_all_is_named_not_called_corrupt(case: str) -> None:
    """A raw zip (or dump) stored as the files part: found out from its first bytes."""
    build, phrase = evil.NOT_TAR[case]
    chunks = decompress_archive(
        stream(evil.chunked(build(), 100)),
        key="x_files.tar.gz",
        max_output=1 << 20,
        label="the files part",
    )
    with pytest.raises(BadInput) as caught:
        await check_tar(chunks, limits=LIMITS, rules=FILES_DEV)
    assert str(caught.value).startswith("the files part is not a tar archive: found ")
    assert phrase in str(caught.value)


async def test_an_uncompressed_tar_stored_as_a_gz_part_says_so() -> None:
    chunks = decompress_archive(
        stream([evil.wrong_top("files_dev")]), key="x.tar.gz", max_output=1 << 20, label="the part"
    )
    with pytest.raises(BadInput, match=r"^the part is not gzip-compressed: found an uncompressed"):
        await check_tar(chunks, limits=LIMITS)


async def test_a_gzipped_tar_passes_the_format_check_unchanged(tmp_path: Path) -> None:
    data = evil.gzipped(evil.odd_modes())
    chunks = decompress_archive(
        stream(evil.chunked(data, 3)), key="x.tar.gz", max_output=1 << 20, label="the files part"
    )
    report = await extract_tar(chunks, tmp_path / "d", limits=LIMITS, rules=FILES_DEV)
    assert report.files == 6


def test_printable_escapes_control_characters_and_cuts() -> None:
    assert printable("a\x00b\x1b[0m\x7f\\") == "a\\x00b\\x1b[0m\\x7f\\\\"
    assert printable("n" * 300) == "n" * 200 + "…"
    assert printable("caf\udce9") == "caf\\xe9"  # an undecodable byte


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
