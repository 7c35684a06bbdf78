"""Formats found from the bytes: every database and archive format reads the same,
names mean nothing, what cannot be read is named, and backups keep their strict rule."""

from __future__ import annotations

import bz2
import io
import lzma
import os
import tarfile
import zipfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from envrestore.pipelines.archives.formats import (
    CODECS,
    check_archive,
    codec_for_key,
    detect_codec,
    extract_archive,
    open_dump,
)
from envrestore.pipelines.archives.sniff import decompress_archive
from envrestore.pipelines.archives.tarpolicy import ArchiveRules, TarLimits
from envrestore.pipelines.archives.tarstream import check_tar
from envrestore.pipelines.errors import BadInput, IntegrityError, UnsafeInput
from envrestore.pipelines.sqlsafety.sniff import decompress_dump
from tests.support import archive_formats as af

SQL = (
    b"-- MySQL dump 10.13  Distrib 8.0.36, for Linux (x86_64)\n"
    b"/*!40101 SET NAMES utf8mb4 */;\n"
    b"CREATE TABLE `wp_posts` (`ID` bigint NOT NULL);\n"
    + b"INSERT INTO `wp_posts` VALUES (1),(2),(3);\n" * 3000
    + b"-- Dump completed on 2026-11-30 10:00:00\n"
)
LIMITS = TarLimits(max_bytes=1 << 20, max_members=50)
RULES = ArchiveRules(label="the imported files part")
#: Names that say nothing, or say something wrong.
KEYS = ["staging/job/database", "upload.tar.gz", "dump.sql.zst", "x.zip"]


def zipped(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buf.getvalue()


DUMPS: dict[str, Callable[[], bytes]] = {
    "sql": lambda: SQL,
    "sql.gz": lambda: af.compress("gzip", SQL),
    "sql.zst": lambda: af.compress("zstd", SQL),
    "sql.bz2": lambda: af.compress("bzip2", SQL),
    "zip": lambda: zipped({"site.sql": SQL}),
    "zip-stored": lambda: zipped({"site.sql": SQL}, zipfile.ZIP_STORED),
    "zip-in-folder": lambda: zipped(
        {"backup/": b"", "backup/site.SQL": SQL, "__MACOSX/backup/._site.SQL": b"\0\5\26\7"}
    ),
}


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    path = tmp_path / "spool"
    path.mkdir()
    return path


async def read_dump(
    data: bytes,
    spool: Path,
    *,
    codec: str = "auto",
    key: str = "upload",
    max_output: int = 1 << 24,
    engine: str = "mariadb",
) -> bytes:
    chunks = open_dump(
        af.stream(data, 1000),
        codec=codec,  # type: ignore[arg-type]
        key=key,
        max_output=max_output,
        engine=engine,
        spool_dir=spool,
    )
    return b"".join([chunk async for chunk in chunks])


def open_spool_files(spool: Path) -> list[str]:
    """Files of this process still open inside `spool` (the spool is unnamed on disk)."""
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = str(fd.readlink())
        except OSError:
            continue
        if target.startswith(str(spool)):
            found.append(target)
    return found


# ---------------------------------------------------------------- databases


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("fmt", sorted(DUMPS))
async def test_every_database_format_yields_the_same_sql_whatever_its_name(
    fmt: str, key: str, spool: Path
) -> None:
    assert await read_dump(DUMPS[fmt](), spool, key=key) == SQL
    assert not open_spool_files(spool)
    assert not list(spool.iterdir())


async def test_concatenated_bzip2_streams_are_one_dump(spool: Path) -> None:
    half = len(SQL) // 2
    data = bz2.compress(SQL[:half]) + bz2.compress(SQL[half:])
    assert await read_dump(data, spool) == SQL


@pytest.mark.parametrize("fmt", ["sql.gz", "sql.zst", "sql.bz2", "zip"])
async def test_a_bomb_is_stopped_at_the_cap_in_every_format(fmt: str, spool: Path) -> None:
    bomb = b"-- MySQL dump\n" + b" " * (24 << 20)
    data = zipped({"d.sql": bomb}) if fmt == "zip" else af.compress(fmt.split(".")[1], bomb)
    with pytest.raises(UnsafeInput, match="decompression bomb"):
        await read_dump(data, spool, max_output=2 << 20)
    assert not open_spool_files(spool)


@pytest.mark.parametrize(
    ("members", "phrase"),
    [
        ({"a.sql": SQL, "b.sql": SQL}, "2 .sql files ('a.sql', 'b.sql')"),
        ({"readme.txt": b"hi"}, "no .sql file (found 'readme.txt')"),
        ({"site.sql": SQL, "uploads/x.jpg": b"jpg"}, "other files beside 'site.sql'"),
        ({"site.sql.gz": af.compress("gzip", SQL)}, "no .sql file (found 'site.sql.gz')"),
        ({"dumps/": b""}, "with only folders"),
        ({}, "with no file at all"),
    ],
    ids=["two-sql", "no-sql", "sql-and-more", "gz-inside", "folder-only", "empty-zip"],
)
async def test_a_zip_must_hold_exactly_one_sql_file(
    members: dict[str, bytes], phrase: str, spool: Path
) -> None:
    with pytest.raises(BadInput) as caught:
        await read_dump(zipped(members), spool)
    message = str(caught.value)
    assert message.startswith("the database part is a zip archive with ")
    assert phrase in message
    assert not open_spool_files(spool)


async def test_a_symlink_named_like_a_dump_is_not_the_dump(spool: Path) -> None:
    data = af.zip_of([af.symlink("site.sql", "/etc/passwd")])
    with pytest.raises(BadInput, match=r"no \.sql file"):
        await read_dump(data, spool)


NOT_READABLE: dict[str, tuple[bytes, str]] = {
    "xz": (lzma.compress(SQL[:5000]), "an xz-compressed file"),
    "7z": (b"7z\xbc\xaf\x27\x1c\x00\x04" + bytes(600), "a 7z archive"),
    "rar": (b"Rar!\x1a\x07\x01\x00" + bytes(600), "a rar archive"),
    "pdf": (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + bytes(600), "a PDF document"),
    "sqlite": (b"SQLite format 3\x00" + bytes(600), "an SQLite database"),
}


@pytest.mark.parametrize("case", sorted(NOT_READABLE))
async def test_formats_that_are_never_read_are_named(case: str, spool: Path) -> None:
    data, what = NOT_READABLE[case]
    assert detect_codec(data[:512]) is None
    with pytest.raises(BadInput) as caught:
        await read_dump(data, spool)
    assert str(caught.value).startswith(
        f"the database part is not in a format that can be imported: found {what}; give a "
        "plain SQL dump (.sql)"
    )
    assert caught.value.data["problem"] == "not_sql"
    with pytest.raises(BadInput) as caught:
        await check_archive(
            af.stream(data), codec="auto", key="x", limits=LIMITS, rules=RULES, spool_dir=spool
        )
    assert str(caught.value).startswith(
        f"the imported files part is not an archive that can be imported: found {what}"
    )


async def test_a_custom_format_pg_dump_gets_its_own_advice(spool: Path) -> None:
    with pytest.raises(BadInput, match="restore with pg_restore"):
        await read_dump(b"PGDMP\x01\x0e\x00" + bytes(600), spool, engine="postgresql")


async def test_the_sql_inside_is_sniffed_whatever_wraps_it(spool: Path) -> None:
    """A tar or a PostgreSQL dump inside a gzip or a zip is named as today."""
    tar = af.tar_of([af.file("site.sql", SQL)])
    with pytest.raises(BadInput, match="found a tar archive"):
        await read_dump(af.compress("bzip2", tar), spool)
    pg = b"--\n-- PostgreSQL database dump\n--\nSET standard_conforming_strings = on;\n"
    with pytest.raises(BadInput, match="this is a PostgreSQL dump"):
        await read_dump(zipped({"pg.sql": pg * 10}), spool)


async def test_an_empty_upload_is_refused_as_empty(spool: Path) -> None:
    with pytest.raises(BadInput, match="the database part is empty"):
        await read_dump(b"", spool)


async def test_a_corrupt_zip_is_bad_input_and_leaves_no_spool(spool: Path) -> None:
    data = zipped({"site.sql": SQL})
    with pytest.raises(BadInput, match="not a readable zip archive"):
        await read_dump(data[: len(data) // 2], spool)
    assert not open_spool_files(spool)


async def test_closing_a_zipped_dump_early_removes_its_spool(spool: Path) -> None:
    data = zipped({"site.sql": os.urandom(3 << 20)})
    chunks = open_dump(
        af.stream(data), codec="auto", key="k", max_output=1 << 30, engine="x", spool_dir=spool
    )
    assert isinstance(chunks, AsyncIterator)
    with pytest.raises(BadInput):  # random bytes are no SQL: refused at the head
        await anext(chunks)
    assert not open_spool_files(spool)
    chunks = open_dump(
        af.stream(zipped({"site.sql": SQL * 20})),
        codec="auto",
        key="k",
        max_output=1 << 30,
        engine="mariadb",
        spool_dir=spool,
    )
    await anext(chunks)
    assert open_spool_files(spool)  # held while the dump is read...
    await chunks.aclose()  # type: ignore[attr-defined]
    assert not open_spool_files(spool)  # ...and gone once the reader stops


# ---------------------------------------------------------------- backups: strict


def test_backups_take_their_codec_from_our_names() -> None:
    assert codec_for_key("backups/s/e/i/s_e_2026_database.sql.gz") == "gzip"
    assert codec_for_key("backups/s/e/i/s_e_2026_files.tar.zst") == "zstd"
    assert codec_for_key("anything") == "gzip"
    assert set(CODECS) == {"plain", "gzip", "zstd", "bzip2", "zip"}


async def test_a_named_codec_refuses_other_data_as_today(spool: Path) -> None:
    """A backup named .sql.gz holding bzip2 is refused exactly like decompress_dump does."""
    data = af.compress("bzip2", SQL)
    with pytest.raises(BadInput) as new:
        await read_dump(data, spool, codec=codec_for_key("x.sql.gz"))
    with pytest.raises(BadInput) as old:
        async for _ in decompress_dump(
            af.stream(data), key="x.sql.gz", max_output=1 << 24, engine="mariadb"
        ):
            pass
    assert str(new.value) == str(old.value)
    assert "not gzip-compressed: found a bzip2-compressed file" in str(new.value)
    assert await read_dump(af.compress("zstd", SQL), spool, codec="zstd") == SQL


async def test_a_backup_archive_that_is_a_zip_is_refused_as_today(spool: Path) -> None:
    data = af.zip_of([af.file("files_dev/a.txt")])
    rules = ArchiveRules(label="the files part", top="files_dev")
    with pytest.raises(BadInput) as new:
        await check_archive(
            af.stream(data),
            codec=codec_for_key("x_files.tar.gz"),
            key="x_files.tar.gz",
            limits=LIMITS,
            rules=rules,
            spool_dir=spool,
        )
    chunks = decompress_archive(
        af.stream(data), key="x_files.tar.gz", max_output=1 << 20, label="the files part"
    )
    with pytest.raises(BadInput) as old:
        await check_tar(chunks, limits=LIMITS, rules=rules)
    assert str(new.value) == str(old.value)
    assert "found a zip archive" in str(new.value)


# ---------------------------------------------------------------- archives

TREE = [
    af.folder("site"),
    af.folder("site/a"),
    af.file("site/a/b.txt", b"bee\n" * 1000),
    af.file("site/run.sh", b"#!/bin/sh\n", mode=0o755),
    af.folder("site/empty"),
    af.symlink("site/latest", "a/b.txt"),
]


def listing(root: Path) -> dict[str, tuple[str, int]]:
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if path.is_symlink():
            what = f"-> {path.readlink()}"
        elif path.is_dir():
            what = "dir"
        else:
            what = path.read_bytes().decode()[:20]
        out[str(path.relative_to(root))] = (what, st.st_mode & 0o7777)
    return out


@pytest.mark.parametrize("key", ["upload", "files.zip", "files.tar.gz"])
@pytest.mark.parametrize("fmt", af.FORMATS)
async def test_every_archive_format_extracts_the_same_tree(
    fmt: str, key: str, tmp_path: Path, spool: Path
) -> None:
    data = af.pack(fmt, TREE)
    report = await extract_archive(
        af.stream(data),
        tmp_path / "d",
        codec="auto",
        key=key,
        limits=LIMITS,
        rules=RULES,
        spool_dir=spool,
    )
    assert (report.top, report.files, report.members) == ("site", 2, 6)
    assert listing(tmp_path / "d") == {
        "a": ("dir", 0o755),
        "a/b.txt": ("bee\nbee\nbee\nbee\nbee\n", 0o644),
        "empty": ("dir", 0o755),
        "latest": ("-> a/b.txt", 0o777),
        "run.sh": ("#!/bin/sh\n", 0o755),
    }
    checked = await check_archive(
        af.stream(data), codec="auto", key=key, limits=LIMITS, rules=RULES, spool_dir=spool
    )
    assert checked == report
    assert not open_spool_files(spool)


async def test_plain_data_that_is_not_a_tar_is_named(spool: Path) -> None:
    with pytest.raises(BadInput) as caught:
        await check_archive(
            af.stream(SQL), codec="auto", key="x", limits=LIMITS, rules=RULES, spool_dir=spool
        )
    assert str(caught.value).startswith("the imported files part is not a tar archive: found ")
    assert "SQL dump" in str(caught.value)


async def test_an_empty_zip_is_an_empty_archive(spool: Path) -> None:
    with pytest.raises(BadInput, match="is empty: restoring it would delete every file"):
        await check_archive(
            af.stream(zipped({})),
            codec="auto",
            key="x",
            limits=LIMITS,
            rules=RULES,
            spool_dir=spool,
        )


def test_detection_reads_magic_numbers_not_names() -> None:
    assert detect_codec(af.compress("gzip", b"x")) == "gzip"
    assert detect_codec(af.compress("zstd", b"x")) == "zstd"
    assert detect_codec(af.compress("bzip2", b"x")) == "bzip2"
    assert detect_codec(zipped({"a": b"x"})) == "zip"
    assert detect_codec(zipped({})) == "zip"  # PK\x05\x06: refused later as empty
    assert detect_codec(SQL[:512]) == "plain"
    assert detect_codec(b"") == "plain"
    # A plain tar whose first member's name starts like a bzip2 or zip header.
    for name in ("BZh91AY&SY.txt", "PK\x03\x04.txt", "\x1f\x8bx"):
        tar = io.BytesIO()
        with tarfile.open(fileobj=tar, mode="w", format=tarfile.USTAR_FORMAT) as t:
            t.addfile(tarfile.TarInfo(name))
        assert detect_codec(tar.getvalue()[:512]) == "plain", name
    assert detect_codec(b"BZh0rest") == "bzip2"  # a damaged one: said so when read


async def test_bzip2_without_its_block_size_is_reported_as_corrupt(spool: Path) -> None:
    with pytest.raises(IntegrityError, match="bzip2 stream is corrupt"):
        await read_dump(b"BZh0" + bytes(100), spool)
