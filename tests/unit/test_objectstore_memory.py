"""Behaviour of the in-memory object store that the contract tests do not reach."""

from __future__ import annotations

import time

import pytest

from envrestore.pipelines.errors import BadInput, NotFound, Refused
from envrestore.pipelines.objectstore import MemoryObjectStore, ObjectStore


def test_memory_store_satisfies_the_object_store_protocol():
    assert isinstance(MemoryObjectStore(), ObjectStore)


async def test_expired_memory_link_is_refused(monkeypatch: pytest.MonkeyPatch):
    store = MemoryObjectStore("b")
    await store.put_bytes("k", b"v")
    url = await store.presign_get("k", ttl_seconds=60)
    assert store.read_presigned(url) == b"v"
    later = time.time() + 61
    monkeypatch.setattr(time, "time", lambda: later)
    with pytest.raises(Refused, match="expired"):
        store.read_presigned(url)


async def test_link_into_another_bucket_is_not_found():
    url = await MemoryObjectStore("a").presign_get("k", ttl_seconds=60)
    with pytest.raises(NotFound):
        MemoryObjectStore("b").read_presigned(url)


async def test_negative_or_inverted_range_is_bad_input():
    store = MemoryObjectStore()
    await store.put_bytes("k", b"0123456789")
    with pytest.raises(BadInput):
        [c async for c in store.get_stream("k", start=5, end=2)]
    with pytest.raises(BadInput):
        [c async for c in store.get_stream("k", start=-1)]


async def test_list_is_in_byte_order_like_s3():
    store = MemoryObjectStore()
    for key in ["b", "a/2", "a/10", "Z"]:
        await store.put_bytes(key, b"")
    assert [info.key async for info in store.list("")] == ["Z", "a/10", "a/2", "b"]
