"""Hostile zips: each is refused by name, nothing lands outside the destination,
and a good zip extracts exactly like the tar of the same tree."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import struct
import subprocess
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from envrestore.pipelines.archives.formats import check_archive, extract_archive
from envrestore.pipelines.archives.tarpolicy import ArchiveRules, TarLimits
from envrestore.pipelines.errors import BadInput, IntegrityError, UnsafeInput
from tests.support import archive_formats as af

TOP = "files_dev"
LIMITS = TarLimits(max_bytes=1 << 20, max_members=20)
RULES = ArchiveRules(label="the imported files part")
ABSOLUTE = Path("/tmp/envrestore-zip-evil")


def z(*entries: af.Entry, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    return af.zip_of(entries, compression)


def raw_zip(name: str, data: bytes, unix_mode: int) -> bytes:
    """One entry with any unix mode (a socket...) that `af.zip_of` would not make."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        info = zipfile.ZipInfo(name)
        info.create_system = 3
        info.external_attr = unix_mode << 16
        archive.writestr(info, data)
    return buf.getvalue()


def nul_in_name() -> bytes:
    data = z(af.folder(TOP), af.file(f"{TOP}/aXb.txt"))
    return data.replace(b"aXb", b"a\0b")  # local header and directory alike


def overlapped(copies: int = 50) -> bytes:
    """One deflated MiB of zeros listed `copies` times in the directory, every entry
    pointing at the same local header: 50 MiB out of ~1 KiB, no entry looks wrong."""
    one = z(af.file(f"{TOP}/zeros.bin", b"\0" * (1 << 20)))
    ((cd_pos, _),) = af.cd_entries(one)
    entry = one[cd_pos : one.rindex(b"PK\x05\x06")]
    directory = entry * copies
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, copies, copies, len(directory), cd_pos, 0)
    return one[:cd_pos] + directory + end


def overlapped_by_size() -> bytes:
    """Two honest entries; the first's compressed size is stretched over the second."""
    data = z(af.file(f"{TOP}/a.txt", b"a" * 100), af.file(f"{TOP}/b.txt", b"b" * 100))
    return af.patch_both(data, 0, cd=20, local=18, fmt="<L", value=400)


def size_lie() -> bytes:
    """Declares 10 bytes, inflates to 50 MiB (its CRC is the real one)."""
    data = z(af.folder(TOP), af.file(f"{TOP}/bomb.bin", b"\0" * (50 << 20)))
    cd, local = af.SIZE
    return af.patch_both(data, 1, cd=cd, local=local, fmt="<L", value=10)


def encrypted() -> bytes:
    cd, local = af.FLAGS
    data = z(af.folder(TOP), af.file(f"{TOP}/secret.txt"))
    return af.patch_both(data, 1, cd=cd, local=local, fmt="<H", value=0x1)


def bad_crc() -> bytes:
    cd, local = af.CRC
    data = z(af.file(f"{TOP}/a.txt", b"hello\n" * 100))
    return af.patch_both(data, 0, cd=cd, local=local, fmt="<L", value=zlib.crc32(b"other"))


def flipped_data() -> bytes:
    data = bytearray(z(af.file(f"{TOP}/a.txt", b"hello\n" * 100), compression=zipfile.ZIP_STORED))
    at = data.index(b"hello\n" * 10)
    data[at] ^= 0x20
    return bytes(data)


def local_name_differs() -> bytes:
    data = bytearray(z(af.file(f"{TOP}/a.txt")))
    data[30 + len(TOP) + 1] = ord("b")  # the first local header's name only
    return bytes(data)


def truncated() -> bytes:
    data = z(af.file(f"{TOP}/a.bin", os.urandom(5000)))
    return data[: len(data) // 2]


#: case → (builder, error class, `problem` it must carry)
CASES: dict[str, tuple[Callable[[], bytes], type[Exception], str]] = {
    "parent": (
        lambda: z(af.folder(TOP), af.file("../outside/evil.txt")),
        UnsafeInput,
        "parent_reference",
    ),
    "inner_parent": (
        lambda: z(af.file(f"{TOP}/a/../../outside/x")),
        UnsafeInput,
        "parent_reference",
    ),
    "absolute": (lambda: z(af.file(f"{ABSOLUTE}/abs.txt")), UnsafeInput, "absolute_path"),
    "symlink_outside": (
        lambda: z(af.folder(TOP), af.symlink(f"{TOP}/out", "../outside")),
        UnsafeInput,
        "link_escapes",
    ),
    "symlink_etc_passwd": (
        lambda: z(af.folder(TOP), af.symlink(f"{TOP}/pw", "/etc/passwd")),
        UnsafeInput,
        "absolute_link",
    ),
    "symlink_out_then_file": (
        lambda: z(
            af.folder(TOP), af.symlink(f"{TOP}/out", "../outside"), af.file(f"{TOP}/out/x.txt")
        ),
        UnsafeInput,
        "link_escapes",
    ),
    "symlink_then_file_through_it": (
        lambda: z(
            af.folder(TOP),
            af.folder(f"{TOP}/sub"),
            af.symlink(f"{TOP}/a", "sub"),
            af.file(f"{TOP}/a/x.txt"),
        ),
        UnsafeInput,
        "through_symlink",
    ),
    "symlink_target_too_long": (
        lambda: z(af.folder(TOP), af.symlink(f"{TOP}/l", "a/" * 2500)),
        UnsafeInput,
        "name_too_long",
    ),
    "char_device": (
        lambda: z(af.folder(TOP), af.Entry(f"{TOP}/null", "chr", b"")),
        UnsafeInput,
        "device",
    ),
    "fifo": (lambda: z(af.folder(TOP), af.Entry(f"{TOP}/pipe", "fifo", b"")), UnsafeInput, "fifo"),
    "socket": (
        lambda: raw_zip(f"{TOP}/sock", b"", stat.S_IFSOCK | 0o777),
        UnsafeInput,
        "unsupported_type",
    ),
    "file_named_like_a_folder": (
        lambda: raw_zip(f"{TOP}/x/", b"", stat.S_IFREG | 0o644),
        UnsafeInput,
        "unsupported_type",
    ),
    "nul_in_name": (nul_in_name, UnsafeInput, "nul_in_name"),
    "too_many_members": (
        lambda: z(*[af.file(f"{TOP}/f{i}") for i in range(30)]),
        UnsafeInput,
        "too_many_members",
    ),
    "too_large": (
        lambda: z(af.file(f"{TOP}/big.bin", b"\0" * (2 << 20))),
        UnsafeInput,
        "too_large",
    ),
    "overlapped_entries": (overlapped, UnsafeInput, "overlapping_entries"),
    "overlapped_by_size": (overlapped_by_size, UnsafeInput, "overlapping_entries"),
    "declared_size_lies": (size_lie, UnsafeInput, "size_mismatch"),
    "encrypted": (encrypted, BadInput, "encrypted"),
    "lzma_member": (
        lambda: z(af.folder(TOP), af.file(f"{TOP}/a.txt"), compression=zipfile.ZIP_LZMA),
        BadInput,
        "zip_method",
    ),
    "bzip2_member": (
        lambda: z(af.file(f"{TOP}/a.txt"), compression=zipfile.ZIP_BZIP2),
        BadInput,
        "zip_method",
    ),
    "crc_mismatch": (bad_crc, IntegrityError, "damaged"),
    "data_flipped": (flipped_data, IntegrityError, "damaged"),
    "local_name_differs": (local_name_differs, IntegrityError, "damaged"),
    "not_a_zip": (lambda: b"PK\x03\x04" + os.urandom(3000), BadInput, "bad_zip"),
    "truncated": (truncated, BadInput, "bad_zip"),
}
#: Limits that let a case reach the check it is about.
BIG = TarLimits(max_bytes=64 << 20, max_members=100)
CASE_LIMITS = {"declared_size_lies": BIG, "overlapped_entries": BIG}


def snapshot(root: Path, skip: Path) -> set[str]:
    found: set[str] = set()
    for folder, dirs, files in os.walk(root):
        if Path(folder) == skip or skip in Path(folder).parents:
            continue
        for name in dirs + files:
            if Path(folder, name) != skip:
                found.add(str(Path(folder, name).relative_to(root)))
    return found


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """work/{outside/sentinel.txt, spool/}: a canary beside the destination."""
    work = tmp_path / "work"
    (work / "outside").mkdir(parents=True)
    (work / "outside" / "sentinel.txt").write_text("untouched")
    (work / "spool").mkdir()
    return work


@pytest.mark.parametrize("case", sorted(CASES))
async def test_each_hostile_zip_is_refused_and_nothing_escapes(case: str, workdir: Path) -> None:
    build, error, problem = CASES[case]
    limits = CASE_LIMITS.get(case, LIMITS)
    data = build()
    dest = workdir / "dest"
    before = snapshot(workdir, dest)
    with pytest.raises(error) as caught:
        await extract_archive(
            af.stream(data, 65536),
            dest,
            codec="auto",
            key="upload",
            limits=limits,
            rules=RULES,
            spool_dir=workdir / "spool",
        )
    assert caught.value.data["problem"] == problem, str(caught.value)
    assert snapshot(workdir, dest) == before
    assert (workdir / "outside" / "sentinel.txt").read_text() == "untouched"
    assert not ABSOLUTE.exists()
    assert not [p for p in dest.rglob("*") if p.is_symlink()]
    assert sum(p.stat().st_size for p in dest.rglob("*") if p.is_file()) <= 2 << 20
    assert not list((workdir / "spool").iterdir())
    with pytest.raises(error) as checked:  # the pre-wipe check refuses it the same way
        await check_archive(
            af.stream(data, 65536),
            codec="auto",
            key="upload",
            limits=limits,
            rules=RULES,
            spool_dir=workdir / "spool",
        )
    assert checked.value.data["problem"] == problem


async def test_a_lying_size_is_stopped_before_its_bytes_are_written(workdir: Path) -> None:
    dest = workdir / "dest"
    with pytest.raises(UnsafeInput, match="inflates to more than the 10 bytes it declares"):
        await extract_archive(
            af.stream(size_lie()),
            dest,
            codec="zip",
            key="k",
            limits=BIG,
            rules=RULES,
            spool_dir=workdir / "spool",
        )
    # Small files are written whole by the writer threads: refused, it is never created.
    bomb = dest / "bomb.bin"
    assert not bomb.exists() or bomb.stat().st_size <= 10


async def test_messages_name_the_method_and_escape_names(workdir: Path) -> None:
    build, _, _ = CASES["lzma_member"]
    with pytest.raises(BadInput, match=r"'files_dev/a\.txt' is compressed with lzma"):
        await check_archive(
            af.stream(build()),
            codec="auto",
            key="k",
            limits=LIMITS,
            rules=RULES,
            spool_dir=workdir / "spool",
        )
    evil = z(af.file(f"{TOP}/../\x1b[31mred.txt"))
    with pytest.raises(UnsafeInput) as caught:
        await check_archive(
            af.stream(evil),
            codec="auto",
            key="k",
            limits=LIMITS,
            rules=RULES,
            spool_dir=workdir / "spool",
        )
    assert "\\x1b[31m" in str(caught.value) and "\x1b" not in str(caught.value)


# ---------------------------------------------------------------- a good zip


def make_tree(root: Path) -> None:
    site = root / "site"
    (site / "a" / "b").mkdir(parents=True)
    (site / "a" / "b" / "c.txt").write_text("deep\n")
    (site / "ünïcødé").mkdir()
    (site / "ünïcødé" / "ファイル.txt").write_text("名前\n")
    (site / "empty").mkdir()
    (site / "bin").mkdir()
    (site / "bin" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (site / "bin" / "run.sh").chmod(0o750)
    (site / "docs").mkdir()
    (site / "docs" / "secret.txt").write_bytes(os.urandom(200_000))
    (site / "docs" / "secret.txt").chmod(0o600)
    (site / "latest").symlink_to("a/b/c.txt")


def zip_tree(root: Path) -> tuple[bytes, bool]:
    """The `zip` CLI's archive when it is installed (UT times, raw UTF-8 names), else zipfile's."""
    if shutil.which("zip"):
        subprocess.run(["zip", "-r", "-y", "-q", "t.zip", "site"], cwd=root, check=True)
        return (root / "t.zip").read_bytes(), True
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in [root / "site", *sorted((root / "site").rglob("*"))]:
            name = str(path.relative_to(root))
            if path.is_symlink():
                info = zipfile.ZipInfo(name)
                info.create_system = 3
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                archive.writestr(info, str(path.readlink()))
            else:
                archive.write(path, name)
    return buf.getvalue(), False


def tar_tree(root: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(root / "site", "site")
    return buf.getvalue()


def described(root: Path) -> dict[str, tuple[str, int, int]]:
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if path.is_symlink():
            what = "-> " + str(path.readlink())
        elif path.is_dir():
            what = "dir"
        else:
            what = hashlib.sha256(path.read_bytes()).hexdigest()
        out[str(path.relative_to(root))] = (what, st.st_mode & 0o7777, int(st.st_mtime))
    return out


async def test_a_good_zip_extracts_exactly_like_the_tar_of_the_same_tree(
    tmp_path: Path, workdir: Path
) -> None:
    make_tree(tmp_path)
    zipped, exact_times = zip_tree(tmp_path)
    results = {}
    for name, data in (("zip", zipped), ("tar", tar_tree(tmp_path))):
        dest = tmp_path / f"out-{name}"
        report = await extract_archive(
            af.stream(data),
            dest,
            codec="auto",
            key="k",
            limits=LIMITS,
            rules=RULES,
            spool_dir=workdir / "spool",
        )
        results[name] = (report, described(dest))
    (zip_report, from_zip), (tar_report, from_tar) = results["zip"], results["tar"]
    assert (zip_report.top, zip_report.files, zip_report.bytes) == (
        tar_report.top,
        tar_report.files,
        tar_report.bytes,
    )
    if not exact_times:  # zipfile keeps DOS times only (2 s, local): compare the rest
        from_zip = {k: v[:2] for k, v in from_zip.items()}
        from_tar = {k: v[:2] for k, v in from_tar.items()}
    assert from_zip == from_tar
    assert from_zip["ünïcødé/ファイル.txt"][1] == 0o644
    assert from_zip["bin/run.sh"][1] == 0o755  # exec bit kept, group bits normalised
    assert from_zip["docs/secret.txt"][1] == 0o644
    assert from_zip["empty"][:2] == ("dir", 0o755)
    assert from_zip["latest"][0] == "-> a/b/c.txt"


async def test_cancelling_an_extraction_leaves_no_thread_writing_and_no_spool(
    workdir: Path,
) -> None:
    import asyncio

    data = z(*[af.file(f"{TOP}/f{i}.bin", os.urandom(1 << 20)) for i in range(40)])
    dest = workdir / "dest"
    task = asyncio.create_task(
        extract_archive(
            af.stream(data, 1 << 20),
            dest,
            codec="auto",
            key="k",
            limits=TarLimits(max_bytes=1 << 30, max_members=100),
            rules=RULES,
            spool_dir=workdir / "spool",
        )
    )
    # Nothing signals "some members written": poll for the first one.
    while not dest.exists() or not any(dest.iterdir()):  # noqa: ASYNC110
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    sizes = {p: p.stat().st_size for p in dest.rglob("*")}
    await asyncio.sleep(0.05)
    assert {p: p.stat().st_size for p in dest.rglob("*")} == sizes  # nothing still writing
    assert len(sizes) < 40
    assert not open_files_under(workdir / "spool")


def open_files_under(folder: Path) -> list[str]:
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = str(fd.readlink())
        except OSError:  # closed meanwhile (the listing's own fd)
            continue
        if target.startswith(str(folder)):
            found.append(target)
    return found
