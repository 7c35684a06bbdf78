"""bzip2 streams: round trips, concatenated streams, corrupt and hostile input."""

from __future__ import annotations

import bz2
import os
import subprocess
from collections.abc import AsyncIterator

import pytest

from envrestore.pipelines.errors import IntegrityError, UnsafeInput
from envrestore.pipelines.streams import bzip2_decompress

PAYLOAD = os.urandom(200_000) + b"text " * 300_000 + bytes(range(256))


async def chunked(data: bytes, size: int = 70_000) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]


async def collect(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


@pytest.mark.parametrize("size", [1, 13, 70_000, 1 << 20])
async def test_round_trip_in_any_slicing(size: int) -> None:
    payload = PAYLOAD if size > 1000 else PAYLOAD[:20_000] + PAYLOAD[-50_000:]
    data = bz2.compress(payload, 9)
    assert await collect(bzip2_decompress(chunked(data, size), max_output=10**8)) == payload


async def test_concatenated_streams_are_read_like_bzip2_d() -> None:
    data = bz2.compress(b"first\n") + bz2.compress(b"") + bz2.compress(PAYLOAD)
    out = await collect(bzip2_decompress(chunked(data, 5000), max_output=10**8))
    assert out == b"first\n" + PAYLOAD
    small = bz2.compress(b"a" * 5000) + bz2.compress(b"b" * 7)  # a stream ends mid-chunk
    assert await collect(bzip2_decompress(chunked(small, 3), max_output=10**8)) == (
        b"a" * 5000 + b"b" * 7
    )


async def test_the_bzip2_tool_output_is_read(tmp_path) -> None:
    if subprocess.run(["sh", "-c", "command -v bzip2"], capture_output=True).returncode:
        pytest.skip("bzip2 is not installed")
    (tmp_path / "a").write_bytes(PAYLOAD)
    subprocess.run(["bzip2", "-k", str(tmp_path / "a")], check=True)
    data = (tmp_path / "a.bz2").read_bytes()
    assert await collect(bzip2_decompress(chunked(data), max_output=10**8)) == PAYLOAD


async def test_trailing_nul_padding_is_ignored() -> None:
    data = bz2.compress(b"padded") + b"\0" * 512
    assert await collect(bzip2_decompress(chunked(data), max_output=1000)) == b"padded"


async def test_garbage_after_the_last_stream_is_corruption() -> None:
    with pytest.raises(IntegrityError):
        await collect(bzip2_decompress(chunked(bz2.compress(b"ok") + b"junk"), max_output=1000))


async def test_truncated_stream_is_an_integrity_error() -> None:
    data = bz2.compress(PAYLOAD)
    with pytest.raises(IntegrityError, match="truncated"):
        await collect(bzip2_decompress(chunked(data[: len(data) // 2]), max_output=10**8))


async def test_corrupt_stream_is_an_integrity_error() -> None:
    data = bytearray(bz2.compress(b"x" * 100_000 + os.urandom(1000)))
    data[40:60] = b"\xff" * 20
    with pytest.raises(IntegrityError, match="corrupt"):
        await collect(bzip2_decompress(chunked(bytes(data)), max_output=10**8))


async def test_empty_input_is_not_a_bzip2_stream() -> None:
    with pytest.raises(IntegrityError):
        await collect(bzip2_decompress(chunked(b""), max_output=1000))


async def test_a_bomb_is_refused_at_the_cap_without_being_inflated() -> None:
    bomb = bz2.compress(b"\0" * (48 << 20), 9)  # 48 MiB of zeros in ~100 bytes
    assert len(bomb) < 1000
    produced: list[int] = []

    async def consume() -> None:
        async for chunk in bzip2_decompress(chunked(bomb), max_output=3 << 20):
            produced.append(len(chunk))
            assert len(chunk) <= 1 << 20  # bounded per call, never the whole stream

    with pytest.raises(UnsafeInput, match="decompression bomb"):
        await consume()
    assert sum(produced) <= 3 << 20
