"""Uploads made by a client straight to the object store, through presigned part URLs.

The HTTP API never carries an upload's bytes: `start_upload` opens an S3
multipart upload under `staging/uploads/` and presigns one `UploadPart` URL
per part; the client PUTs each part and hands back the ETags; `finish_upload`
checks the parts (sizes and ETags, as S3 lists them) and completes the
object. The import job then reads it like a CLI `--file` upload, checking the
size and the SHA-256 the client measured. An abandoned upload is aborted by
the orphan sweep (`backup sweep`), as the CLI's are.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import structlog

from envrestore.pipelines.errors import BadInput, Conflict, NotFound
from envrestore.pipelines.jobs.principal import Principal
from envrestore.pipelines.ledger.queries import sql
from envrestore.pipelines.objectstore.resumable import staging_upload_key
from envrestore.pipelines.objectstore.s3 import MIB, S3ObjectStore
from envrestore.pipelines.registry import Environment
from envrestore.pipelines.requests import ELEMENTS, PartInput

log = structlog.get_logger(__name__)

#: S3 allows at most this many parts; a bigger upload gets bigger parts.
MAX_PARTS = 10_000
#: Part URLs presigned for one request (signing is CPU work on the API's event
#: loop): a bigger upload gets bigger parts, so no request signs more than this.
MAX_PRESIGNED_PARTS = 1_000
#: S3's largest part.
MAX_PART_SIZE = 5 * 1024**3
#: S3's largest object (5 TiB): larger promises are refused before anything starts.
MAX_OBJECT = 5 * 1024**4


@dataclass(frozen=True)
class PresignedPart:
    """Where the client PUTs one part (bytes `[start, start + size)` of its file)."""

    number: int
    url: str
    start: int
    size: int


@dataclass(frozen=True)
class UploadStarted:
    """An open upload: its id (for complete), and one URL per part."""

    id: uuid.UUID
    element: str
    key: str
    size: int
    part_size: int
    expires_at: datetime
    parts: list[PresignedPart]

    def public(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "element": self.element,
            "size": self.size,
            "part_size": self.part_size,
            "expires_at": self.expires_at.isoformat(),
            "parts": [
                {"number": p.number, "url": p.url, "start": p.start, "size": p.size}
                for p in self.parts
            ],
        }


@dataclass(frozen=True)
class OpenUpload:
    """An upload as recorded (which environment, which element, which S3 upload)."""

    id: uuid.UUID
    site: str
    env: str
    element: str
    key: str
    s3_upload_id: str
    size: int
    part_size: int
    job_id: uuid.UUID | None
    #: Who started it (a principal's string): only they, or an admin, may complete it.
    requested_by: str | None = None

    @property
    def target(self) -> str:
        return f"{self.site}.{self.env}"


def plan_part_size(size: int, base: int) -> int:
    """`base`, or the smallest whole MiB that keeps the upload within MAX_PRESIGNED_PARTS."""
    needed = math.ceil(size / min(MAX_PARTS, MAX_PRESIGNED_PARTS))
    return max(base, math.ceil(needed / MIB) * MIB)


async def start_upload(
    pool: asyncpg.Pool,
    store: S3ObjectStore,
    environment: Environment,
    *,
    element: str,
    size: int,
    filename: str,
    part_size: int,
    ttl_seconds: int,
    principal: Principal,
) -> UploadStarted:
    """Open a multipart upload and presign each part; recorded so only its site completes it."""
    if element not in ELEMENTS:
        raise BadInput(f"element {element!r}: use database, files or code", element=element)
    if size < 1 or size > MAX_OBJECT:
        raise BadInput(f"size {size}: give the file's size in bytes (1 to 5 TiB)", size=size)
    chosen = plan_part_size(size, part_size)
    if chosen > MAX_PART_SIZE:
        raise BadInput(
            f"size {size}: an API upload has at most {MAX_PRESIGNED_PARTS} parts of at most "
            f"5 GiB; upload a file this large with the CLI (envrestore import --file)",
            size=size,
        )
    upload_id = uuid.uuid4()
    key = staging_upload_key(filename, upload_id.hex)
    s3_upload_id = await store._create_multipart(key, None)
    await pool.execute(
        sql("api_insert_upload"),
        upload_id,
        environment.id,
        element,
        key,
        s3_upload_id,
        size,
        chosen,
        str(principal),
    )
    parts: list[PresignedPart] = []
    count = math.ceil(size / chosen)
    for index in range(count):
        start = index * chosen
        url = await store.presign(
            "upload_part",
            {"Bucket": store.bucket, "Key": key, "UploadId": s3_upload_id, "PartNumber": index + 1},
            ttl_seconds,
        )
        parts.append(PresignedPart(index + 1, url, start, min(chosen, size - start)))
        if index % 100 == 99:
            await asyncio.sleep(0)  # let other requests run between batches of signatures
    log.info("upload.started", upload_id=str(upload_id), target=environment.target, parts=count)
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=ttl_seconds)
    return UploadStarted(upload_id, element, key, size, chosen, expires, parts)


async def get_upload(pool: asyncpg.Pool, upload_id: uuid.UUID) -> OpenUpload:
    row = await pool.fetchrow(sql("api_get_upload"), upload_id)
    if row is None:
        raise NotFound(f"upload {upload_id} does not exist", upload_id=str(upload_id))
    return OpenUpload(
        id=row["id"],
        site=row["site"],
        env=row["env"],
        element=row["element"],
        key=row["key"],
        s3_upload_id=row["s3_upload_id"],
        size=row["size"],
        part_size=row["part_size"],
        job_id=row["job_id"],
        requested_by=row["requested_by"],
    )


def _etag(value: str) -> str:
    return value.strip().strip('"').lower()


async def finish_upload(
    store: S3ObjectStore, upload: OpenUpload, etags: dict[int, str], sha256: str
) -> PartInput:
    """Complete the object from the client's part ETags, once S3's listing agrees with them.

    Completing twice is allowed (a retried request): an object already whole
    with the promised size is accepted as is.
    """
    count = math.ceil(upload.size / upload.part_size)
    if sorted(etags) != list(range(1, count + 1)):
        raise BadInput(
            f"upload {upload.id} has {count} parts: give the ETag of each, numbered 1 to {count}",
            upload_id=str(upload.id),
        )
    part = PartInput(upload.element, upload_key=upload.key, size=upload.size, sha256=sha256)
    try:
        listed = await store.list_uploaded_parts(upload.key, upload.s3_upload_id)
    except NotFound:
        info = await store.head(upload.key)
        if info is not None and info.size == upload.size:
            return part  # completed by an earlier call
        raise Conflict(
            f"upload {upload.id} is no longer open (aborted or expired); start a new one",
            upload_id=str(upload.id),
        ) from None
    by_number = {p.number: p for p in listed}
    for number in range(1, count + 1):
        got = by_number.get(number)
        want = min(upload.part_size, upload.size - (number - 1) * upload.part_size)
        if got is None or got.size != want:
            raise BadInput(
                f"part {number} of upload {upload.id} is "
                f"{'missing' if got is None else f'{got.size} bytes'}; expected {want} bytes",
                upload_id=str(upload.id),
            )
        if got.etag != _etag(etags[number]):
            raise BadInput(
                f"part {number} of upload {upload.id}: the ETag given is not the part's",
                upload_id=str(upload.id),
            )
    await store.complete_multipart(
        upload.key,
        upload.s3_upload_id,
        [{"PartNumber": n, "ETag": f'"{by_number[n].etag}"'} for n in range(1, count + 1)],
    )
    log.info("upload.completed", upload_id=str(upload.id), size=upload.size)
    return part


async def record_job(pool: asyncpg.Pool, upload_id: uuid.UUID, job_id: uuid.UUID) -> None:
    await pool.execute(sql("api_set_upload_job"), upload_id, job_id)
