"""Resumable uploads of local files, against the real SeaweedFS S3 gateway.

The `object_store` fixture (tests/support/seaweed.py) gives an S3ObjectStore
on a fresh bucket. Interruptions are made by wrapping the store's real
`_upload_part`, so every count below is of parts that really reached S3.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from envrestore.pipelines.errors import BadInput, NotFound
from envrestore.pipelines.objectstore.resumable import (
    MAX_PARTS,
    file_identity,
    part_size_for_file,
    safe_upload_name,
    staging_upload_key,
    upload_file,
)
from envrestore.pipelines.objectstore.s3 import MIB, S3ObjectStore

pytestmark = pytest.mark.integration

PART = 5 * MIB
KEY = "staging/uploads/test/dump.sql.gz"


class Boom(Exception):
    """The failure an interrupted upload dies of."""


def write_random(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def count_parts(
    store: S3ObjectStore, monkeypatch: pytest.MonkeyPatch, *, fail_on: int | None = None
) -> list[int]:
    """Wrap the store's real `_upload_part`: record part numbers, optionally fail one.

    The real method is taken from the class, so a second wrapper replaces the first.
    """
    calls: list[int] = []

    async def counted(key: str, upload_id: str, part_number: int, body: bytes) -> dict[str, Any]:
        calls.append(part_number)
        if part_number == fail_on:
            raise Boom(f"part {part_number} failed")
        return await S3ObjectStore._upload_part(store, key, upload_id, part_number, body)

    monkeypatch.setattr(store, "_upload_part", counted)
    return calls


async def stored(store: S3ObjectStore, key: str) -> bytes:
    return b"".join([chunk async for chunk in store.get_stream(key)])


async def test_a_three_part_file_uploads_whole(
    object_store: S3ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """~12 MiB in 5 MiB parts: three parts sent, object and sha256 equal the file."""
    path = tmp_path / "dump.sql.gz"
    data = write_random(path, 12 * MIB + 12_345)
    calls = count_parts(object_store, monkeypatch)
    progress: list[tuple[int, int]] = []

    result = await upload_file(
        object_store, path, KEY, part_size=PART, on_progress=lambda d, t: progress.append((d, t))
    )

    assert calls == [1, 2, 3]
    assert result.key == KEY
    assert result.size == len(data)
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert await stored(object_store, KEY) == data
    assert await object_store.pending_multipart_uploads("staging/") == []
    assert progress[-1] == (len(data), len(data))
    assert [done for done, _ in progress] == sorted(done for done, _ in progress)


async def test_b_an_interrupted_upload_resumes_with_the_missing_parts_only(
    object_store: S3ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Part 2 fails: the upload stays open; the next call sends parts 2 and 3, not 1."""
    path = tmp_path / "dump.sql.gz"
    data = write_random(path, 12 * MIB + 1)
    count_parts(object_store, monkeypatch, fail_on=2)
    with pytest.raises(Boom):
        await upload_file(object_store, path, KEY, part_size=PART)
    assert await object_store.pending_multipart_uploads("staging/") == [KEY]
    assert await object_store.head(KEY) is None

    calls = count_parts(object_store, monkeypatch)
    progress: list[tuple[int, int]] = []
    result = await upload_file(
        object_store, path, KEY, part_size=PART, on_progress=lambda d, t: progress.append((d, t))
    )

    assert calls == [2, 3]
    assert progress[0] == (PART, len(data))  # the kept part counts as done at once
    assert progress[-1] == (len(data), len(data))
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert result.size == len(data)
    assert await stored(object_store, KEY) == data
    assert await object_store.pending_multipart_uploads("staging/") == []


async def test_b_a_progress_callback_that_raises_interrupts_and_the_resume_skips_part_1(
    object_store: S3ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI dying in its progress bar after part 1 is an interruption like any other."""
    path = tmp_path / "dump.sql.gz"
    data = write_random(path, 12 * MIB)

    def stop_after_first_part(done: int, _total: int) -> None:
        if done >= PART:
            raise Boom("the progress bar died")

    with pytest.raises(Boom):
        await upload_file(
            object_store, path, KEY, part_size=PART, on_progress=stop_after_first_part
        )

    calls = count_parts(object_store, monkeypatch)
    result = await upload_file(object_store, path, KEY, part_size=PART)
    assert calls == [2, 3]
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert await stored(object_store, KEY) == data


async def test_c_a_part_whose_bytes_changed_since_the_interruption_is_sent_again(
    object_store: S3ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parts 1-2 stored, then part 1's bytes change (same size): resume sends 1 and 3."""
    path = tmp_path / "dump.sql.gz"
    write_random(path, 12 * MIB + 7)
    count_parts(object_store, monkeypatch, fail_on=3)
    with pytest.raises(Boom):
        await upload_file(object_store, path, KEY, part_size=PART)

    with path.open("r+b") as handle:
        handle.seek(1000)
        handle.write(os.urandom(4096))
    new = path.read_bytes()

    calls = count_parts(object_store, monkeypatch)
    result = await upload_file(object_store, path, KEY, part_size=PART)
    assert calls == [1, 3]
    assert result.sha256 == hashlib.sha256(new).hexdigest()
    assert await stored(object_store, KEY) == new


async def test_a_resume_keeps_the_part_size_the_upload_started_with(
    object_store: S3ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Started with 5 MiB parts, resumed asking for 6 MiB: still 5 MiB, part 1 still kept."""
    path = tmp_path / "dump.sql.gz"
    data = write_random(path, 12 * MIB)
    count_parts(object_store, monkeypatch, fail_on=2)
    with pytest.raises(Boom):
        await upload_file(object_store, path, KEY, part_size=PART)

    calls = count_parts(object_store, monkeypatch)
    await upload_file(object_store, path, KEY, part_size=6 * MIB)
    assert calls == [2, 3]
    assert await stored(object_store, KEY) == data


async def test_a_file_changed_during_the_upload_is_refused_and_nothing_is_left(
    object_store: S3ObjectStore, tmp_path: Path
) -> None:
    """A write while parts go up: BadInput, the multipart upload aborted, no object."""
    path = tmp_path / "dump.sql.gz"
    write_random(path, 12 * MIB)

    def append_once(done: int, _total: int) -> None:
        if done == PART:
            with path.open("ab") as handle:
                handle.write(b"more")

    with pytest.raises(BadInput, match="changed while it was being uploaded"):
        await upload_file(object_store, path, KEY, part_size=PART, on_progress=append_once)
    assert await object_store.pending_multipart_uploads("staging/") == []
    assert await object_store.head(KEY) is None


async def test_a_file_smaller_than_a_part_is_one_put(
    object_store: S3ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "small.sql"
    data = write_random(path, 300_000)
    calls = count_parts(object_store, monkeypatch)
    result = await upload_file(object_store, path, KEY, part_size=PART)
    assert calls == []
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert result.size == len(data)
    assert await stored(object_store, KEY) == data


async def test_d_an_empty_file_is_refused(object_store: S3ObjectStore, tmp_path: Path) -> None:
    path = tmp_path / "empty.sql"
    path.write_bytes(b"")
    with pytest.raises(BadInput, match="is empty"):
        await upload_file(object_store, path, KEY)
    assert await object_store.head(KEY) is None


async def test_a_missing_or_special_file_is_refused(
    object_store: S3ObjectStore, tmp_path: Path
) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        await upload_file(object_store, tmp_path / "nope.sql", KEY)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(BadInput, match="not a regular file"):
        await upload_file(object_store, fifo, KEY)


async def test_only_an_upload_of_exactly_the_key_is_resumed(object_store: S3ObjectStore) -> None:
    """A prefix listing also returns `KEY.more`; that upload is not this one."""
    other = await object_store._create_multipart(KEY + ".more", None)
    assert await object_store.find_multipart_upload(KEY) is None
    first = await object_store._create_multipart(KEY, None)
    assert await object_store.find_multipart_upload(KEY) == first
    await object_store._abort_multipart(KEY, first)
    await object_store._abort_multipart(KEY + ".more", other)


def test_part_size_grows_with_the_file_and_is_the_same_every_time() -> None:
    assert part_size_for_file(12 * MIB, PART) == PART
    assert part_size_for_file(MAX_PARTS * PART, PART) == PART
    assert part_size_for_file(MAX_PARTS * PART + 1, PART) == 2 * PART
    assert part_size_for_file(MAX_PARTS * PART + 1, PART) == part_size_for_file(
        MAX_PARTS * PART + 1, PART
    )
    with pytest.raises(BadInput, match="below"):
        part_size_for_file(10, MIB)


def test_e_the_same_unchanged_file_gets_the_same_key_and_a_touched_one_a_new_key(
    tmp_path: Path,
) -> None:
    path = tmp_path / "site dump.sql.gz"
    path.write_bytes(b"-- dump\n")
    first = staging_upload_key(path.name, file_identity(path))
    assert first == staging_upload_key(path.name, file_identity(path))
    assert first.startswith("staging/uploads/")
    assert first.endswith("/site_dump.sql.gz")

    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert staging_upload_key(path.name, file_identity(path)) != first

    with pytest.raises(NotFound):
        file_identity(tmp_path / "gone.sql")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("../../x", "x"),
        (".bashrc", "bashrc"),
        ("..", "upload"),
        ("", "upload"),
        ("a\nb\r\nc.sql", "a_b_c.sql"),
        ("C:\\Users\\me\\dump.sql", "dump.sql"),
        ("dump;rm -rf ~.sql", "dump_rm_-rf_.sql"),
        ("ünïcödé.sql.gz", "_n_c_d_.sql.gz"),
    ],
)
def test_e_hostile_names_become_one_safe_key_segment(name: str, expected: str) -> None:
    assert safe_upload_name(name) == expected
    key = staging_upload_key(name, "ab" * 16)
    assert key == f"staging/uploads/{'ab' * 16}/{expected}"


def test_e_long_names_are_cut_keeping_their_extension() -> None:
    name = "x" * 300 + ".sql.gz"
    safe = safe_upload_name(name)
    assert len(safe) == 100
    assert safe.endswith(".sql.gz")


def test_e_an_identity_that_is_not_a_digest_is_refused() -> None:
    with pytest.raises(BadInput):
        staging_upload_key("dump.sql", "../../etc")
