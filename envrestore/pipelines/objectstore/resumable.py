"""Upload a local file into the object store so that an interrupted upload resumes.

`envrestore import db SITE.ENV --file PATH` sends a dump of many GiB over a
link that may drop. Unlike `put_stream`, which aborts its multipart upload on
any error, `upload_file` leaves the upload open on purpose: the next call for
the same key finds it, keeps every part whose ETag equals the MD5 of the same
bytes of the local file, and sends only the others. A part is never trusted
by number alone, so a file that changed between two tries cannot end up as a
mix of two versions.

Open uploads that are never resumed cost storage: the bucket should have a
lifecycle rule that aborts incomplete uploads under `staging/uploads/` after
a few days (AbortIncompleteMultipartUpload).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import structlog

from envrestore.pipelines.errors import BadInput, NotFound
from envrestore.pipelines.objectstore.base import PutResult, Sha256Counter
from envrestore.pipelines.objectstore.s3 import MIB, S3ObjectStore, UploadedPart

log = structlog.get_logger(__name__)

#: S3's limits on multipart uploads.
MAX_PARTS = 10_000
MIN_PART_SIZE = 5 * MIB
MAX_PART_SIZE = 5 * 1024 * MIB
#: Where uploads of local files land before an import reads them.
STAGING_UPLOADS_PREFIX = "staging/uploads/"
_MAX_NAME = 100
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_IDENTITY_RE = re.compile(r"^[0-9a-f]{16,64}$")

#: Called with (bytes done, bytes in all) after each part; kept parts count as done.
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class _FileState:
    """What says a local file is still the one whose upload started."""

    size: int
    mtime_ns: int
    inode: int
    device: int

    @classmethod
    def of(cls, result: os.stat_result) -> _FileState:
        return cls(result.st_size, result.st_mtime_ns, result.st_ino, result.st_dev)


async def upload_file(
    store: S3ObjectStore,
    path: Path,
    key: str,
    *,
    part_size: int | None = None,
    on_progress: ProgressCallback | None = None,
) -> PutResult:
    """Upload `path` to `key`, resuming an unfinished multipart upload of that key.

    The part size of a resumed upload is the one it was started with (read
    from its parts); a new upload uses `part_size` (default: the store's),
    doubled as often as a file of this size needs to fit in 10,000 parts, so
    a resume of an upload whose parts are all gone computes the same size.
    The file is read once, part by part (one part in memory while the
    previous one uploads), sha256 and size computed on the way. A file that
    changes during the upload aborts it with `BadInput`; any other failure
    (the store, the network, cancellation) leaves the upload for a resume.
    """
    handle = await asyncio.to_thread(_open_regular, path)
    try:
        before = _FileState.of(await asyncio.to_thread(os.fstat, handle.fileno()))
        if before.size == 0:
            raise BadInput(f"{path} is empty; there is nothing to upload", path=str(path))
        fresh_size = part_size_for_file(
            before.size, store.part_size if part_size is None else part_size
        )
        upload_id, kept, size = await _resumable_upload(store, key, before.size, fresh_size)
        if upload_id is None and before.size <= size:
            return await _put_whole(store, path, key, handle, before, on_progress)
        return await _put_parts(
            store,
            path,
            key,
            handle,
            before,
            upload_id=upload_id,
            kept=kept,
            size=size,
            on_progress=on_progress,
        )
    finally:
        handle.close()


def part_size_for_file(total: int, base: int) -> int:
    """The part size for a new upload of `total` bytes: `base` doubled until ≤ 10,000 parts.

    Deterministic in (total, base), so every try of the same file agrees.
    """
    if base < MIN_PART_SIZE:
        raise BadInput(
            f"part size {base} is below the {MIN_PART_SIZE} bytes S3 allows", part_size=base
        )
    size = base
    while -(-total // size) > MAX_PARTS:
        size *= 2
    if size > MAX_PART_SIZE:
        raise BadInput(
            f"a file of {total} bytes is larger than S3 can store in one object",
            size=total,
        )
    return size


def file_identity(path: Path) -> str:
    """A hex digest of (absolute path, size, mtime): stable while the file is unchanged.

    Re-running an import of the same untouched file gives the same staging
    key and so resumes; touching or replacing the file gives a new key.
    """
    result = _stat_regular(path)
    absolute = os.fsencode(path.resolve())
    digest = hashlib.sha256()
    for field in (absolute, str(result.st_size).encode(), str(result.st_mtime_ns).encode()):
        digest.update(len(field).to_bytes(8, "big"))
        digest.update(field)
    return digest.hexdigest()[:32]


def staging_upload_key(name: str, identity: str) -> str:
    """`staging/uploads/<identity>/<safe name>`; the name is only for people reading keys.

    The base name keeps [A-Za-z0-9._-] (runs of anything else become one
    `_`), loses leading dots and is at most 100 characters, keeping its end
    (the extension); a name with nothing left becomes `upload`.
    """
    if not _IDENTITY_RE.match(identity):
        raise BadInput(
            f"upload identity {identity!r} is not a hex digest (see file_identity)",
            identity=identity,
        )
    return f"{STAGING_UPLOADS_PREFIX}{identity}/{safe_upload_name(name)}"


def safe_upload_name(name: str) -> str:
    """A file's base name reduced to a harmless object-key segment (see `staging_upload_key`)."""
    base = re.split(r"[/\\]", name)[-1]
    cleaned = _UNSAFE_NAME_CHARS.sub("_", base).lstrip(".")
    if len(cleaned) > _MAX_NAME:
        tail = 40
        cleaned = cleaned[: _MAX_NAME - tail] + cleaned[-tail:]
    return cleaned or "upload"


# -- the upload --------------------------------------------------------------


async def _resumable_upload(
    store: S3ObjectStore, key: str, total: int, fresh_size: int
) -> tuple[str | None, dict[int, UploadedPart], int]:
    """(upload id or None, its parts by number, the part size to use)."""
    upload_id = await store.find_multipart_upload(key)
    if upload_id is None:
        return None, {}, fresh_size
    try:
        parts = await store.list_uploaded_parts(key, upload_id)
    except NotFound:  # completed, aborted or expired since it was listed
        return None, {}, fresh_size
    size = fresh_size
    if parts:
        # Every part but the last has the upload's part size, so the largest
        # listed part has it unless only the last survived; then parts fail the
        # MD5 check and are sent again, which is slower but still correct.
        size = max(part.size for part in parts)
        if size < MIN_PART_SIZE or size > MAX_PART_SIZE or -(-total // size) > MAX_PARTS:
            log.info("objectstore.resume_discarded", key=key, part_size=size, size=total)
            size = fresh_size
            parts = []
    if not parts or total <= size:
        # Nothing worth keeping, or a file of one part: a single PUT replaces it.
        await store._abort_multipart(key, upload_id)
        return None, {}, size
    log.info("objectstore.resume_found", key=key, parts=len(parts), part_size=size)
    return upload_id, {part.number: part for part in parts}, size


async def _put_whole(
    store: S3ObjectStore,
    path: Path,
    key: str,
    handle: BinaryIO,
    before: _FileState,
    on_progress: ProgressCallback | None,
) -> PutResult:
    """A file smaller than one part: one PUT, nothing to resume."""
    counter = Sha256Counter()
    data, _ = await asyncio.to_thread(_read_part, path, handle, before.size, counter)
    if not await _unchanged(path, before, counter):
        await _changed(store, key, None, path)
    await store.put_bytes(key, data)
    if on_progress is not None:
        on_progress(before.size, before.size)
    return PutResult(key=key, size=counter.size, sha256=counter.hexdigest())


async def _put_parts(
    store: S3ObjectStore,
    path: Path,
    key: str,
    handle: BinaryIO,
    before: _FileState,
    *,
    upload_id: str | None,
    kept: dict[int, UploadedPart],
    size: int,
    on_progress: ProgressCallback | None,
) -> PutResult:
    """Read each part, keep it if the store has the same bytes, else upload it."""
    total = before.size
    counter = Sha256Counter()
    parts: list[dict[str, Any]] = []
    done = 0
    sent = skipped = 0
    in_flight: asyncio.Task[dict[str, Any]] | None = None
    in_flight_size = 0

    def advance(nbytes: int) -> None:
        nonlocal done
        done += nbytes
        if on_progress is not None:
            on_progress(done, total)

    try:
        for number in range(1, -(-total // size) + 1):
            length = min(size, total - (number - 1) * size)
            data, md5 = await asyncio.to_thread(_read_part, path, handle, length, counter)
            if len(data) != length:
                await _changed(store, key, upload_id, path)
            stored = kept.get(number)
            if stored is not None and stored.size == length and stored.etag == md5:
                parts.append({"PartNumber": number, "ETag": f'"{stored.etag}"'})
                skipped += 1
                advance(length)
                continue
            if upload_id is None:
                upload_id = await store._create_multipart(key, None)
            if in_flight is not None:
                parts.append(await in_flight)
                in_flight = None
                advance(in_flight_size)
            in_flight = asyncio.create_task(store._upload_part(key, upload_id, number, data))
            in_flight_size = length
            sent += 1
            del data  # the task holds the only reference now
        if in_flight is not None:
            parts.append(await in_flight)
            in_flight = None
            advance(in_flight_size)
        assert upload_id is not None  # total > size, so at least two parts were seen
        if not await _unchanged(path, before, counter):
            await _changed(store, key, upload_id, path)
        parts.sort(key=lambda part: int(part["PartNumber"]))
        await store.complete_multipart(key, upload_id, parts)
    finally:
        if in_flight is not None:
            in_flight.cancel()
            with contextlib.suppress(BaseException):
                await in_flight
    log.info("objectstore.file_uploaded", key=key, size=total, parts_sent=sent, parts_kept=skipped)
    return PutResult(key=key, size=counter.size, sha256=counter.hexdigest())


async def _changed(store: S3ObjectStore, key: str, upload_id: str | None, path: Path) -> None:
    """The parts hold bytes of two versions of the file: drop them and say so."""
    if upload_id is not None:
        await store._abort_multipart(key, upload_id)
    raise BadInput(
        f"{path} changed while it was being uploaded; upload it again once nothing writes to it",
        path=str(path),
    )


async def _unchanged(path: Path, before: _FileState, counter: Sha256Counter) -> bool:
    """Same size, mtime and inode as when the upload started, and every byte was read."""
    try:
        after = _FileState.of(await asyncio.to_thread(path.stat))
    except OSError:
        return False
    return after == before and counter.size == before.size


# -- local files (run in a worker thread) -------------------------------------


def _stat_regular(path: Path) -> os.stat_result:
    try:
        result = path.stat()
    except FileNotFoundError as exc:
        raise NotFound(f"{path} does not exist", path=str(path)) from exc
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror}", path=str(path)) from exc
    if not stat.S_ISREG(result.st_mode):
        raise BadInput(f"{path} is not a regular file", path=str(path))
    return result


def _open_regular(path: Path) -> BinaryIO:
    _stat_regular(path)
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror}", path=str(path)) from exc
    if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):  # replaced between stat and open
        handle.close()
        raise BadInput(f"{path} is not a regular file", path=str(path))
    return handle


def _read_part(
    path: Path, handle: BinaryIO, length: int, counter: Sha256Counter
) -> tuple[bytes, str]:
    """The next `length` bytes (fewer at an early end) and their MD5, hashed into counter."""
    try:
        data = handle.read(length)
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror}", path=str(path)) from exc
    counter.update(data)
    return data, hashlib.md5(data, usedforsecurity=False).hexdigest()
