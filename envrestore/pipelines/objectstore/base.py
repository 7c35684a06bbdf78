"""The object store interface: a `Protocol` with one real (S3) and one fake (memory) implementation.

Bulk data moves between workers only through the object store and only as
streams (DESIGN.md), so the interface speaks async iterators of bytes chunks;
`put_bytes`/`get_bytes` exist for small things such as manifests.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from envrestore.pipelines.errors import BadInput

#: Chunk size of the streams between components (~1 MiB, see the project brief).
DEFAULT_CHUNK_SIZE = 1 << 20


@dataclass(frozen=True)
class ObjectInfo:
    """What `head` and `list` know about a stored object."""

    key: str
    size: int
    etag: str
    last_modified: datetime


@dataclass(frozen=True)
class PendingUpload:
    """An unfinished multipart upload: its parts cost storage yet no `list` shows them."""

    key: str
    upload_id: str
    #: None when the store does not say (the sweep then never judges it old).
    initiated: datetime | None


@dataclass(frozen=True)
class PutResult:
    """The outcome of an upload; sha256 is computed in the same pass as the upload."""

    key: str
    size: int
    sha256: str


@runtime_checkable
class ObjectStore(Protocol):
    """A bucket of objects addressed by key; every method may raise `Unavailable`.

    `end` in ranged reads is exclusive (Python slice semantics): bytes
    ``[start, end)``; ``end=None`` reads to the end of the object.
    """

    async def put_stream(
        self, key: str, chunks: AsyncIterable[bytes], *, content_type: str | None = None
    ) -> PutResult:
        """Upload a stream; an error midway leaves no object (and no open multipart upload)."""
        ...

    async def put_bytes(
        self, key: str, data: bytes, *, content_type: str | None = None
    ) -> PutResult:
        """Upload a small object in one request."""
        ...

    def get_stream(
        self,
        key: str,
        *,
        start: int = 0,
        end: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> AsyncIterator[bytes]:
        """Stream ``[start, end)`` of an object; raises `NotFound` when the key is missing."""
        ...

    async def get_bytes(self, key: str, *, max_size: int) -> bytes:
        """Read a small object whole; `Refused` when it is larger than max_size."""
        ...

    async def head(self, key: str) -> ObjectInfo | None:
        """Describe an object, or None when it does not exist."""
        ...

    async def delete(self, key: str) -> None:
        """Delete an object; a missing key is fine (deletes are retried)."""
        ...

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every object whose key starts with prefix; returns how many."""
        ...

    def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        """Every object under prefix, in key order, across all pages."""
        ...

    def list_pending_uploads(self, prefix: str) -> AsyncIterator[PendingUpload]:
        """Every unfinished multipart upload of a key under prefix, across all pages."""
        ...

    async def abort_upload(self, key: str, upload_id: str) -> None:
        """Abort an unfinished multipart upload, freeing its parts; a missing one is fine."""
        ...

    async def presign_get(self, key: str, ttl_seconds: int) -> str:
        """A temporary link that reads the object without credentials until it expires."""
        ...

    async def check(self) -> None:
        """Raise `NotFound` for a missing bucket, `Unavailable` for an unreachable store."""
        ...


def check_range(key: str, start: int, end: int | None) -> None:
    """Reject ranges that cannot name bytes, before any request is made."""
    if start < 0 or (end is not None and end < start):
        raise BadInput(
            f"invalid byte range [{start}, {end}) for {key!r}: need 0 <= start <= end",
            key=key,
            start=start,
            end=end,
        )


class Sha256Counter:
    """Hashes and counts bytes as they pass, so an upload needs a single pass."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.size = 0

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        self._hash.update(chunk)
        self.size += len(chunk)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()
