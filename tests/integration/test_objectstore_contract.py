"""The object store contract, held by the memory fake and by S3 on a real SeaweedFS alike.

The `seaweed`/`s3_settings` fixtures come from tests/support/seaweed.py via tests/conftest.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from envrestore.config.settings import Settings, load_settings
from envrestore.pipelines.errors import NotFound, Refused, Unavailable
from envrestore.pipelines.objectstore import (
    MemoryObjectStore,
    ObjectStore,
    S3ObjectStore,
    open_object_store,
)

MIB = 1 << 20

StoreOpener = Callable[..., Any]


class Boom(Exception):
    """The failure a producer raises midway through an upload."""


@pytest.fixture(params=["memory", "seaweed"])
def open_store(request: pytest.FixtureRequest) -> StoreOpener:
    """Opens a store of the parametrised kind; keyword arguments override S3 settings."""
    if request.param == "memory":
        memory = MemoryObjectStore("contract")

        @asynccontextmanager
        async def open_memory(**_overrides: Any) -> AsyncIterator[ObjectStore]:
            yield memory

        return open_memory
    settings: Settings = request.getfixturevalue("s3_settings")

    @asynccontextmanager
    async def open_s3(**overrides: Any) -> AsyncIterator[ObjectStore]:
        async with open_object_store(settings.model_copy(update=overrides)) as store:
            yield store

    return open_s3


def random_chunks(total: int, chunk: int = MIB, seed: int = 7) -> tuple[list[int], str]:
    """Chunk sizes and the sha256 of the bytes `generate` will produce for them."""
    sizes = [min(chunk, total - offset) for offset in range(0, total, chunk)]
    digest = hashlib.sha256()
    rng = random.Random(seed)
    for size in sizes:
        digest.update(rng.randbytes(size))
    return sizes, digest.hexdigest()


async def generate(
    sizes: list[int],
    seed: int = 7,
    fail_after: int | None = None,
    hang_after: int | None = None,
    hanging: asyncio.Event | None = None,
) -> AsyncIterator[bytes]:
    """Yields incompressible chunks one by one, never the whole payload."""
    rng = random.Random(seed)
    sent = 0
    for size in sizes:
        if fail_after is not None and sent >= fail_after:
            raise Boom("the producer failed midway")
        if hang_after is not None and sent >= hang_after:
            if hanging is not None:
                hanging.set()
            await asyncio.Event().wait()
        yield rng.randbytes(size)
        sent += size
        await asyncio.sleep(0)


async def sha256_of(stream: AsyncIterator[bytes]) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    async for chunk in stream:
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


async def collect(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in stream])


async def assert_no_pending_uploads(store: ObjectStore) -> None:
    if isinstance(store, S3ObjectStore):
        assert await store.pending_multipart_uploads() == []


async def test_40mib_stream_round_trips_through_multipart_with_matching_sha256(open_store):
    sizes, expected = random_chunks(40 * MIB)
    async with open_store(s3_part_size_mb=5) as store:
        result = await store.put_stream("backups/big.bin", generate(sizes))
        assert (result.size, result.sha256) == (40 * MIB, expected)
        assert await sha256_of(store.get_stream("backups/big.bin")) == (expected, 40 * MIB)
        info = await store.head("backups/big.bin")
        assert info is not None
        assert info.size == 40 * MIB
        if isinstance(store, S3ObjectStore):
            assert info.etag.endswith("-8"), "40 MiB in 5 MiB parts is an 8-part upload"


async def test_stream_below_part_size_is_one_put_whose_etag_is_its_md5(open_store):
    sizes, expected = random_chunks(3 * MIB + 123)
    async with open_store(s3_part_size_mb=5) as store:
        result = await store.put_stream("small.bin", generate(sizes))
        data = await collect(store.get_stream("small.bin"))
    assert result.sha256 == expected == hashlib.sha256(data).hexdigest()
    info = await store.head("small.bin")
    assert info is not None
    assert info.etag == hashlib.md5(data, usedforsecurity=False).hexdigest()


async def test_small_bytes_round_trip_and_oversized_get_is_refused(open_store):
    manifest = b'{"parts": []}'
    async with open_store() as store:
        result = await store.put_bytes("m/manifest.json", manifest, content_type="application/json")
        assert result.sha256 == hashlib.sha256(manifest).hexdigest()
        assert await store.get_bytes("m/manifest.json", max_size=1024) == manifest
        with pytest.raises(Refused, match=r"manifest\.json"):
            await store.get_bytes("m/manifest.json", max_size=4)


async def test_empty_stream_makes_an_empty_object(open_store):
    async with open_store() as store:
        result = await store.put_stream("empty", generate([]))
        assert (result.size, result.sha256) == (0, hashlib.sha256(b"").hexdigest())
        assert await collect(store.get_stream("empty")) == b""


async def test_ranged_reads_return_exactly_the_requested_bytes(open_store):
    data = random.Random(1).randbytes(300_000)
    async with open_store() as store:
        await store.put_bytes("r", data)
        assert await collect(store.get_stream("r", start=10, end=1000)) == data[10:1000]
        assert await collect(store.get_stream("r", start=299_990)) == data[299_990:]
        assert await collect(store.get_stream("r", start=5, end=5)) == b""
        assert await collect(store.get_stream("r", start=300_000)) == b""
        chunks = [c async for c in store.get_stream("r", chunk_size=65_536)]
        assert b"".join(chunks) == data
        assert all(len(c) == 65_536 for c in chunks[:-1])


async def test_concurrent_ranged_download_yields_identical_bytes(open_store):
    sizes, expected = random_chunks(23 * MIB + 17)
    async with open_store(s3_part_size_mb=5) as store:
        await store.put_stream("c.bin", generate(sizes))
    async with open_store(s3_part_size_mb=5, s3_download_concurrency=4) as store:
        if isinstance(store, S3ObjectStore):
            assert store.download_concurrency == 4
        assert await sha256_of(store.get_stream("c.bin")) == (expected, 23 * MIB + 17)
        whole = await collect(store.get_stream("c.bin"))
        start, end = 4 * MIB + 3, 17 * MIB + 5
        assert await collect(store.get_stream("c.bin", start=start, end=end)) == whole[start:end]


async def test_head_of_a_missing_key_is_none_and_get_is_not_found(open_store):
    async with open_store() as store:
        assert await store.head("nope/missing.bin") is None
        with pytest.raises(NotFound, match=r"missing\.bin"):
            await collect(store.get_stream("nope/missing.bin"))
        with pytest.raises(NotFound, match=r"missing\.bin"):
            await store.get_bytes("nope/missing.bin", max_size=10)


async def test_concurrent_download_of_a_missing_key_is_not_found(open_store):
    async with open_store(s3_download_concurrency=4) as store:
        with pytest.raises(NotFound, match=r"missing\.bin"):
            await collect(store.get_stream("missing.bin"))


async def test_list_follows_every_page_in_key_order(open_store):
    keys = [f"many/{i:03d}" for i in range(25)]
    async with open_store() as store:
        await asyncio.gather(*(store.put_bytes(key, key.encode()) for key in keys))
        await store.put_bytes("other/x", b"x")
        listed = [info async for info in store.list("many/", page_size=10)]
    assert [info.key for info in listed] == keys
    assert all(info.size == len(info.key) for info in listed)


async def test_delete_prefix_removes_only_that_prefix_and_delete_tolerates_missing(open_store):
    async with open_store() as store:
        for i in range(5):
            await store.put_bytes(f"staging/job1/{i}", b"x")
        await store.put_bytes("staging/job10", b"keep")
        await store.put_bytes("backups/keep", b"keep")
        assert await store.delete_prefix("staging/job1/") == 5
        assert [i.key async for i in store.list("")] == ["backups/keep", "staging/job10"]
        await store.delete("backups/keep")
        await store.delete("backups/keep")
        assert await store.head("backups/keep") is None
        assert await store.delete_prefix("nothing/") == 0


def fetch_link(store: ObjectStore, url: str) -> bytes:
    """What a worker does with a temporary link: a plain HTTP GET, no credentials."""
    if isinstance(store, MemoryObjectStore):
        return store.read_presigned(url)
    assert url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
        return bytes(response.read())


async def test_presigned_link_reads_the_object_until_it_expires(open_store):
    async with open_store() as store:
        await store.put_bytes("shared/db.sql.gz", b"dump bytes")
        url = await store.presign_get("shared/db.sql.gz", ttl_seconds=60)
        assert await asyncio.to_thread(fetch_link, store, url) == b"dump bytes"
        short = await store.presign_get("shared/db.sql.gz", ttl_seconds=1)
        await asyncio.sleep(2.1)
        with pytest.raises((urllib.error.HTTPError, Refused)):
            await asyncio.to_thread(fetch_link, store, short)


async def test_upload_stream_failing_midway_leaves_no_object_and_no_open_upload(open_store):
    sizes, _ = random_chunks(20 * MIB)
    async with open_store(s3_part_size_mb=5) as store:
        with pytest.raises(Boom):
            await store.put_stream("partial.bin", generate(sizes, fail_after=12 * MIB))
        assert await store.head("partial.bin") is None
        await assert_no_pending_uploads(store)


async def test_cancelled_upload_leaves_no_object_and_no_open_upload(open_store):
    sizes, _ = random_chunks(20 * MIB)
    hanging = asyncio.Event()
    async with open_store(s3_part_size_mb=5) as store:
        task = asyncio.create_task(
            store.put_stream("cancelled.bin", generate(sizes, hang_after=12 * MIB, hanging=hanging))
        )
        await asyncio.wait_for(hanging.wait(), timeout=60)  # two parts handed to S3
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await store.head("cancelled.bin") is None
        await assert_no_pending_uploads(store)


async def test_missing_bucket_is_not_found_naming_the_bucket(open_store, request):
    if request.node.callspec.params["open_store"] == "memory":
        store: ObjectStore = MemoryObjectStore("no-such-bucket-here", bucket_exists=False)
        with pytest.raises(NotFound, match="no-such-bucket-here"):
            await store.check()
        with pytest.raises(NotFound, match="no-such-bucket-here"):
            await store.put_bytes("k", b"v")
        return
    async with open_store(s3_bucket="no-such-bucket-here") as store:
        with pytest.raises(NotFound, match="no-such-bucket-here") as caught:
            await store.check()
        assert caught.value.data["bucket"] == "no-such-bucket-here"
        assert "127.0.0.1" in str(caught.value)
        with pytest.raises(NotFound, match="no-such-bucket-here"):
            await collect(store.get_stream("k"))


async def test_endpoint_on_a_closed_port_is_unavailable(s3_settings: Settings):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = load_settings(
        **{**s3_settings.model_dump(), "s3_endpoint_url": f"http://127.0.0.1:{port}"}
    )
    async with open_object_store(settings) as store:
        with pytest.raises(Unavailable, match=f"127.0.0.1:{port}"):
            await store.check()


async def test_wrong_secret_is_refused_without_echoing_it(s3_settings: Settings):
    settings = s3_settings.model_copy(update={"s3_secret_access_key": None})
    settings = load_settings(**{**settings.model_dump(), "s3_secret_access_key": "not-the-key"})
    async with open_object_store(settings) as store:
        with pytest.raises(Refused) as caught:
            await store.put_bytes("k", b"v")
    assert "not-the-key" not in str(caught.value)
