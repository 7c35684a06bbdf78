"""The object store: the shared medium through which bulk data moves between workers."""

from __future__ import annotations

from envrestore.pipelines.objectstore.base import (
    DEFAULT_CHUNK_SIZE,
    ObjectInfo,
    ObjectStore,
    PendingUpload,
    PutResult,
)
from envrestore.pipelines.objectstore.memory import MemoryObjectStore
from envrestore.pipelines.objectstore.s3 import S3ObjectStore, open_object_store

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "MemoryObjectStore",
    "ObjectInfo",
    "ObjectStore",
    "PendingUpload",
    "PutResult",
    "S3ObjectStore",
    "open_object_store",
]
