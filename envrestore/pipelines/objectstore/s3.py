"""`ObjectStore` on S3 (aioboto3): streaming multipart uploads and streaming or ranged downloads.

Works against AWS S3 and SeaweedFS's S3 gateway (path-style addressing,
checksums only where the API requires them).
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import contextlib
import hashlib
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import aioboto3
import structlog
from botocore.config import Config

from envrestore.pipelines.errors import (
    BadInput,
    NotFound,
    Refused,
    TransientError,
)
from envrestore.pipelines.objectstore.base import (
    DEFAULT_CHUNK_SIZE,
    ObjectInfo,
    PendingUpload,
    PutResult,
    Sha256Counter,
    check_range,
)
from envrestore.pipelines.objectstore.s3_errors import translated

if TYPE_CHECKING:
    from envrestore.config.settings import Settings

log = structlog.get_logger(__name__)

MIB = 1 << 20
#: S3 allows at most 10,000 parts; the part size doubles every this many parts
#: so a stream of any size fits while memory stays ~2 parts.
_PARTS_PER_DOUBLING = 1000


@dataclass(frozen=True)
class UploadedPart:
    """A part already stored in an unfinished multipart upload (what a resumed upload may keep)."""

    number: int
    size: int
    #: Without the quotes S3 puts around it; the part's MD5 on S3 and SeaweedFS
    #: unless the bucket encrypts with SSE-KMS or SSE-C.
    etag: str


class S3ObjectStore:
    """One bucket through one aioboto3 client; build it with `open_object_store`."""

    def __init__(
        self,
        client: Any,
        *,
        bucket: str,
        endpoint_url: str | None,
        part_size: int = 16 * MIB,
        download_concurrency: int = 1,
        presigner: Any = None,
    ) -> None:
        if part_size < 5 * MIB:
            raise BadInput(f"S3 part size {part_size} is below the 5 MiB S3 minimum")
        self.client = client
        self.bucket = bucket
        self.endpoint_url = endpoint_url or "AWS S3"
        self.part_size = part_size
        self.download_concurrency = max(1, download_concurrency)
        # Presigned URLs name their host in the signature: a client signs them for
        # ENVRESTORE_S3_PUBLIC_ENDPOINT_URL (what browsers reach), when that differs.
        self.presigner = client if presigner is None else presigner

    # -- writes -------------------------------------------------------------

    async def put_stream(
        self, key: str, chunks: AsyncIterable[bytes], *, content_type: str | None = None
    ) -> PutResult:
        """One PUT below the part size, else multipart with one part uploading while the next fills.

        Any error, cancellation included, aborts the multipart upload so no
        part is left behind (S3 would bill and keep orphaned parts forever).
        """
        counter = Sha256Counter()
        buffer = bytearray()
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        in_flight: asyncio.Task[dict[str, Any]] | None = None
        part_number = 0
        try:
            async for chunk in chunks:
                counter.update(chunk)
                buffer += chunk
                while len(buffer) >= (size := self._part_size_for(part_number + 1)):
                    if upload_id is None:
                        upload_id = await self._create_multipart(key, content_type)
                    body = bytes(buffer[:size])
                    del buffer[:size]
                    if in_flight is not None:
                        parts.append(await in_flight)
                        in_flight = None
                    part_number += 1
                    in_flight = asyncio.create_task(
                        self._upload_part(key, upload_id, part_number, body)
                    )
                    del body  # the task holds the only reference now
            if upload_id is None:
                with self._translated(key=key):
                    await self.client.put_object(
                        Bucket=self.bucket, Key=key, Body=bytes(buffer), **_type(content_type)
                    )
                return PutResult(key=key, size=counter.size, sha256=counter.hexdigest())
            if in_flight is not None:
                parts.append(await in_flight)
                in_flight = None
            if buffer:
                part_number += 1
                parts.append(await self._upload_part(key, upload_id, part_number, bytes(buffer)))
                buffer.clear()
            with self._translated(key=key):
                await self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
            upload_id = None
            log.debug("objectstore.multipart_done", key=key, parts=len(parts), size=counter.size)
            return PutResult(key=key, size=counter.size, sha256=counter.hexdigest())
        except BaseException:
            if in_flight is not None:
                in_flight.cancel()
                with contextlib.suppress(BaseException):
                    await in_flight
            if upload_id is not None:
                await self._abort_multipart(key, upload_id)
            raise

    async def put_bytes(
        self, key: str, data: bytes, *, content_type: str | None = None
    ) -> PutResult:
        with self._translated(key=key):
            await self.client.put_object(
                Bucket=self.bucket, Key=key, Body=bytes(data), **_type(content_type)
            )
        return PutResult(key=key, size=len(data), sha256=hashlib.sha256(data).hexdigest())

    async def delete(self, key: str) -> None:
        with self._translated(key=key):
            await self.client.delete_object(Bucket=self.bucket, Key=key)

    async def delete_prefix(self, prefix: str) -> int:
        """Delete page by page (≤1000 keys a request, the DeleteObjects limit)."""
        deleted = 0
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        with self._translated():
            async for page in pages:
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if not keys:
                    continue
                response = await self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True}
                )
                errors = response.get("Errors", [])
                if errors:
                    first = errors[0]
                    raise TransientError(
                        f"could not delete {len(errors)} objects under {prefix!r} in bucket "
                        f"{self.bucket!r} (first: {first.get('Key')!r}, {first.get('Code')}); "
                        "retry the deletion",
                        prefix=prefix,
                        failed=len(errors),
                    )
                deleted += len(keys)
        return deleted

    # -- reads --------------------------------------------------------------

    async def get_stream(
        self,
        key: str,
        *,
        start: int = 0,
        end: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> AsyncIterator[bytes]:
        """One streamed GET, or `download_concurrency` ranged GETs in flight, yielded in order."""
        check_range(key, start, end)
        if self.download_concurrency > 1 or end == start:
            async for chunk in self._get_ranged(key, start, end, chunk_size):
                yield chunk
            return
        request: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if start or end is not None:
            request["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            with self._translated(key=key):
                response = await self.client.get_object(**request)
        except BadInput:
            if await self._starts_past_end(key, start):
                return
            raise
        body = response["Body"]
        # aiobotocore's Body.read(n) returns whatever aiohttp has buffered (often
        # ~64 KiB), so pieces are gathered into chunks of chunk_size. Leaving the
        # `async with` releases (or closes, when unread) the connection.
        async with body:
            pending = bytearray()
            while True:
                with self._translated(key=key):
                    piece = await body.read(chunk_size)
                if not piece:
                    break
                if not pending and len(piece) == chunk_size:
                    yield piece
                    continue
                pending += piece
                if len(pending) >= chunk_size:
                    yield bytes(pending[:chunk_size])
                    del pending[:chunk_size]
            if pending:
                yield bytes(pending)

    async def get_bytes(self, key: str, *, max_size: int) -> bytes:
        with self._translated(key=key):
            response = await self.client.get_object(Bucket=self.bucket, Key=key)
        body = response["Body"]
        async with body:
            size = int(response.get("ContentLength", 0))
            if size > max_size:
                raise Refused(
                    f"object {key!r} is {size} bytes, more than the {max_size} allowed here",
                    key=key,
                    size=size,
                    max_size=max_size,
                )
            with self._translated(key=key):
                data: bytes = await body.read()
        return data

    async def head(self, key: str) -> ObjectInfo | None:
        try:
            with self._translated(key=key):
                response = await self.client.head_object(Bucket=self.bucket, Key=key)
        except NotFound:
            return None
        return ObjectInfo(
            key=key,
            size=int(response["ContentLength"]),
            etag=str(response.get("ETag", "")).strip('"'),
            last_modified=response["LastModified"],
        )

    async def list(self, prefix: str, *, page_size: int = 1000) -> AsyncIterator[ObjectInfo]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix, PaginationConfig={"PageSize": page_size}
        )
        with self._translated():
            async for page in pages:
                for item in page.get("Contents", []):
                    yield ObjectInfo(
                        key=item["Key"],
                        size=int(item["Size"]),
                        etag=str(item.get("ETag", "")).strip('"'),
                        last_modified=item["LastModified"],
                    )

    async def presign_get(self, key: str, ttl_seconds: int) -> str:
        return await self.presign("get_object", {"Bucket": self.bucket, "Key": key}, ttl_seconds)

    async def presign(self, operation: str, params: dict[str, Any], ttl_seconds: int) -> str:
        """A presigned URL on the public endpoint (signing is local: no request is made)."""
        with self._translated(key=params.get("Key")):
            url: str = await self.presigner.generate_presigned_url(
                operation, Params=params, ExpiresIn=ttl_seconds
            )
        return url

    async def check(self) -> None:
        with self._translated():
            await self.client.head_bucket(Bucket=self.bucket)

    async def pending_multipart_uploads(self, prefix: str = "") -> builtins.list[str]:
        """Keys with an unfinished multipart upload (what an aborted upload must not leave)."""
        with self._translated():
            response = await self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix)
        return [upload["Key"] for upload in response.get("Uploads", [])]

    async def find_multipart_upload(self, key: str) -> str | None:
        """The id of the newest unfinished multipart upload of exactly `key`, or None.

        Listing by prefix also returns longer keys (`a.sql` finds `a.sql.gz`):
        only an equal key counts. Newest by `Initiated` (SeaweedFS does not list
        a key's uploads oldest first, as S3 does); a tie goes to the one listed last.
        """
        newest: tuple[Any, str] | None = None
        pages = self.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=key
        )
        with self._translated(key=key):
            async for page in pages:
                for upload in page.get("Uploads", []):
                    if upload.get("Key") != key:
                        continue
                    initiated = upload.get("Initiated")
                    if newest is None or None in (initiated, newest[0]) or initiated >= newest[0]:
                        newest = (initiated, str(upload["UploadId"]))
        return None if newest is None else newest[1]

    async def list_pending_uploads(
        self, prefix: str, *, page_size: int = 1000
    ) -> AsyncIterator[PendingUpload]:
        """Paginated by key and upload id markers; no order is assumed (SeaweedFS differs)."""
        pages = self.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=prefix, PaginationConfig={"PageSize": page_size}
        )
        with self._translated():
            async for page in pages:
                for upload in page.get("Uploads", []):
                    yield PendingUpload(
                        key=str(upload["Key"]),
                        upload_id=str(upload["UploadId"]),
                        initiated=upload.get("Initiated"),
                    )

    async def abort_upload(self, key: str, upload_id: str) -> None:
        try:
            with self._translated(key=key):
                await self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id
                )
        except NotFound:
            return  # aborted, completed or expired meanwhile
        log.info("objectstore.multipart_aborted", key=key, bucket=self.bucket)

    async def list_uploaded_parts(self, key: str, upload_id: str) -> builtins.list[UploadedPart]:
        """Every part of an unfinished multipart upload, across pages, by part number.

        `NotFound` when the upload no longer exists (completed, aborted or expired).
        """
        parts: builtins.list[UploadedPart] = []
        pages = self.client.get_paginator("list_parts").paginate(
            Bucket=self.bucket, Key=key, UploadId=upload_id
        )
        with self._translated(key=key):
            async for page in pages:
                parts.extend(
                    UploadedPart(
                        number=int(part["PartNumber"]),
                        size=int(part["Size"]),
                        etag=str(part.get("ETag", "")).strip('"').lower(),
                    )
                    for part in page.get("Parts", [])
                )
        return sorted(parts, key=lambda part: part.number)

    async def complete_multipart(
        self, key: str, upload_id: str, parts: builtins.list[dict[str, Any]]
    ) -> None:
        """Join the parts (each ``{"PartNumber", "ETag"}``, in ascending order) into the object."""
        with self._translated(key=key):
            await self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )

    # -- internals ----------------------------------------------------------

    def _part_size_for(self, part_number: int) -> int:
        return int(self.part_size * 2 ** ((part_number - 1) // _PARTS_PER_DOUBLING))

    async def _create_multipart(self, key: str, content_type: str | None) -> str:
        with self._translated(key=key):
            response = await self.client.create_multipart_upload(
                Bucket=self.bucket, Key=key, **_type(content_type)
            )
        upload_id: str = response["UploadId"]
        log.debug("objectstore.multipart_started", key=key, bucket=self.bucket)
        return upload_id

    async def _upload_part(
        self, key: str, upload_id: str, part_number: int, body: bytes
    ) -> dict[str, Any]:
        with self._translated(key=key):
            response = await self.client.upload_part(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=part_number,
                Body=body,
            )
        return {"PartNumber": part_number, "ETag": response["ETag"]}

    async def _abort_multipart(self, key: str, upload_id: str) -> None:
        # Shielded: a second cancellation must not leave the parts behind.
        try:
            await asyncio.shield(
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            )
            log.info("objectstore.multipart_aborted", key=key, bucket=self.bucket)
        except Exception as exc:  # noqa: BLE001 - the original error matters more
            log.warning(
                "objectstore.multipart_abort_failed",
                key=key,
                bucket=self.bucket,
                error=type(exc).__name__,
            )

    async def _get_ranged(
        self, key: str, start: int, end: int | None, chunk_size: int
    ) -> AsyncIterator[bytes]:
        """Ranges of one part size each; at most `download_concurrency` held in memory."""
        info = await self.head(key)
        if info is None:
            self._raise_missing_key(key)
        stop = info.size if end is None else min(end, info.size)
        ranges = collections.deque(
            (offset, min(offset + self.part_size, stop))
            for offset in range(start, stop, self.part_size)
        )
        in_flight: collections.deque[asyncio.Task[bytes]] = collections.deque()
        try:
            while ranges or in_flight:
                while ranges and len(in_flight) < self.download_concurrency:
                    first, last = ranges.popleft()
                    in_flight.append(
                        asyncio.create_task(self._read_range(key, first, last, info.etag))
                    )
                data = await in_flight.popleft()
                for offset in range(0, len(data), chunk_size):
                    yield data[offset : offset + chunk_size]
                del data
        finally:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)

    async def _read_range(self, key: str, first: int, last: int, etag: str) -> bytes:
        # If-Match: an object replaced mid-download must not yield a mix of two versions.
        with self._translated(key=key):
            response = await self.client.get_object(
                Bucket=self.bucket, Key=key, Range=f"bytes={first}-{last - 1}", IfMatch=etag
            )
            async with response["Body"] as body:
                data: bytes = await body.read()
        if len(data) != last - first:
            raise TransientError(
                f"short read of {key!r} bytes {first}-{last - 1}: got {len(data)}; retry",
                key=key,
            )
        return data

    async def _starts_past_end(self, key: str, start: int) -> bool:
        info = await self.head(key)
        if info is None:
            self._raise_missing_key(key)
        return start >= info.size

    def _raise_missing_key(self, key: str) -> NoReturn:
        raise NotFound(
            f"object {key!r} does not exist in bucket {self.bucket!r} on {self.endpoint_url}",
            key=key,
            bucket=self.bucket,
        )

    def _translated(self, *, key: str | None = None) -> contextlib.AbstractContextManager[None]:
        return translated(self.bucket, self.endpoint_url, key=key)


def _type(content_type: str | None) -> dict[str, str]:
    return {} if content_type is None else {"ContentType": content_type}


def client_config(settings: Settings) -> Config:
    """The botocore config every envrestore S3 client uses."""
    return Config(
        # SeaweedFS (and most non-AWS stores) serve buckets as paths, not subdomains.
        s3={"addressing_style": "path"},
        # botocore >= 1.36 adds CRC checksums to every upload by default; SeaweedFS
        # and other S3 implementations reject or mishandle them, so only send them
        # where the API requires a checksum.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        signature_version="s3v4",
        retries={"mode": "standard", "max_attempts": 3},
        connect_timeout=5,
        read_timeout=60,
        max_pool_connections=max(10, 2 * settings.s3_download_concurrency + 2),
    )


@contextlib.asynccontextmanager
async def open_object_store(settings: Settings) -> AsyncIterator[S3ObjectStore]:
    """One aioboto3 client for the block (two when the public endpoint differs: the
    second only signs URLs); the store is unusable after it."""
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(_client(settings, settings.s3_endpoint_url))
        public = settings.presign_endpoint_url
        presigner = (
            client
            if public == settings.s3_endpoint_url
            else await stack.enter_async_context(_client(settings, public))
        )
        yield S3ObjectStore(
            client,
            bucket=settings.s3_bucket,
            endpoint_url=settings.s3_endpoint_url,
            part_size=settings.s3_part_size_mb * MIB,
            download_concurrency=settings.s3_download_concurrency,
            presigner=presigner,
        )


def _client(settings: Settings, endpoint_url: str | None) -> Any:
    secret = settings.s3_secret_access_key
    return aioboto3.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=None if secret is None else secret.get_secret_value(),
        config=client_config(settings),
    )
