"""An in-memory `ObjectStore` for fast unit tests, held to the same contract tests as S3."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qs, quote, unquote, urlsplit

from envrestore.pipelines.errors import NotFound, Refused
from envrestore.pipelines.objectstore.base import (
    DEFAULT_CHUNK_SIZE,
    ObjectInfo,
    PendingUpload,
    PutResult,
    Sha256Counter,
    check_range,
)


@dataclass(frozen=True)
class _StoredObject:
    data: bytes
    etag: str
    last_modified: datetime
    content_type: str | None


class MemoryObjectStore:
    """One bucket in a dict. `bucket_exists=False` behaves like a bucket nobody created.

    Presigned links are ``memory://<bucket>/<key>?expires=<unix time>``; read
    them back with `read_presigned`, which refuses expired links as S3 does.
    """

    def __init__(self, bucket: str = "envrestore", *, bucket_exists: bool = True) -> None:
        self.bucket = bucket
        self.endpoint_url = "memory://"
        self._exists = bucket_exists
        self._objects: dict[str, _StoredObject] = {}

    # -- writes -------------------------------------------------------------

    async def put_stream(
        self, key: str, chunks: AsyncIterable[bytes], *, content_type: str | None = None
    ) -> PutResult:
        self._require_bucket()
        counter = Sha256Counter()
        parts: list[bytes] = []
        async for chunk in chunks:
            counter.update(chunk)
            parts.append(bytes(chunk))
        # Stored only once the whole stream arrived: a failing stream leaves nothing.
        self._store(key, b"".join(parts), content_type)
        return PutResult(key=key, size=counter.size, sha256=counter.hexdigest())

    async def put_bytes(
        self, key: str, data: bytes, *, content_type: str | None = None
    ) -> PutResult:
        self._require_bucket()
        self._store(key, bytes(data), content_type)
        return PutResult(key=key, size=len(data), sha256=hashlib.sha256(data).hexdigest())

    async def delete(self, key: str) -> None:
        self._require_bucket()
        self._objects.pop(key, None)

    async def delete_prefix(self, prefix: str) -> int:
        self._require_bucket()
        doomed = [key for key in self._objects if key.startswith(prefix)]
        for key in doomed:
            del self._objects[key]
        return len(doomed)

    # -- reads --------------------------------------------------------------

    async def get_stream(
        self,
        key: str,
        *,
        start: int = 0,
        end: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> AsyncIterator[bytes]:
        check_range(key, start, end)
        data = self._get(key).data
        stop = len(data) if end is None else min(end, len(data))
        view = memoryview(data)
        for offset in range(start, stop, chunk_size):
            yield bytes(view[offset : min(offset + chunk_size, stop)])

    async def get_bytes(self, key: str, *, max_size: int) -> bytes:
        data = self._get(key).data
        if len(data) > max_size:
            raise Refused(
                f"object {key!r} is {len(data)} bytes, more than the {max_size} allowed here",
                key=key,
                size=len(data),
                max_size=max_size,
            )
        return data

    async def head(self, key: str) -> ObjectInfo | None:
        self._require_bucket()
        stored = self._objects.get(key)
        return None if stored is None else self._info(key, stored)

    async def list(self, prefix: str, *, page_size: int = 1000) -> AsyncIterator[ObjectInfo]:
        self._require_bucket()
        # S3 lists keys in UTF-8 byte order.
        keys = sorted((k for k in self._objects if k.startswith(prefix)), key=str.encode)
        for key in keys:
            stored = self._objects.get(key)
            if stored is not None:
                yield self._info(key, stored)

    async def list_pending_uploads(self, prefix: str) -> AsyncIterator[PendingUpload]:
        """Uploads here are whole or nothing: never one unfinished."""
        self._require_bucket()
        none: list[PendingUpload] = []
        for upload in none:
            yield upload

    async def abort_upload(self, key: str, upload_id: str) -> None:
        self._require_bucket()

    async def presign_get(self, key: str, ttl_seconds: int) -> str:
        self._require_bucket()
        expires = int(time.time()) + ttl_seconds
        return f"memory://{quote(self.bucket)}/{quote(key)}?expires={expires}"

    def read_presigned(self, url: str) -> bytes:
        """Follow a link from `presign_get`, as an HTTP client would follow an S3 one."""
        parts = urlsplit(url)
        if parts.scheme != "memory" or unquote(parts.netloc) != self.bucket:
            raise NotFound(f"{url!r} is not a link into memory bucket {self.bucket!r}")
        expires = int(parse_qs(parts.query).get("expires", ["0"])[0])
        if time.time() > expires:
            raise Refused("the temporary link has expired; ask for a new one", url=url)
        return self._get(unquote(parts.path.lstrip("/"))).data

    async def check(self) -> None:
        self._require_bucket()

    # -- internals ----------------------------------------------------------

    def _store(self, key: str, data: bytes, content_type: str | None) -> None:
        etag = hashlib.md5(data, usedforsecurity=False).hexdigest()
        self._objects[key] = _StoredObject(data, etag, datetime.now(UTC), content_type)

    def _get(self, key: str) -> _StoredObject:
        self._require_bucket()
        stored = self._objects.get(key)
        if stored is None:
            raise NotFound(
                f"object {key!r} does not exist in bucket {self.bucket!r}",
                key=key,
                bucket=self.bucket,
            )
        return stored

    def _require_bucket(self) -> None:
        if not self._exists:
            raise NotFound(
                f"bucket {self.bucket!r} does not exist on {self.endpoint_url}; "
                "create it or set ENVRESTORE_S3_BUCKET",
                bucket=self.bucket,
            )

    @staticmethod
    def _info(key: str, stored: _StoredObject) -> ObjectInfo:
        return ObjectInfo(
            key=key, size=len(stored.data), etag=stored.etag, last_modified=stored.last_modified
        )
