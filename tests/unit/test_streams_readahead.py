"""The producer runs ahead of a busy client, within a bounded buffer; zstd round trips."""

from __future__ import annotations

import asyncio
import hashlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import zstandard

from envrestore.pipelines.errors import UnsafeInput
from envrestore.pipelines.streams import run_consumer, zstd_compress, zstd_decompress

CHUNK = 256 * 1024
#: A client that reads nothing until `go` exists (a server busy with a statement),
#: then hashes all of its input.
WAIT_THEN_HASH = (
    "import hashlib, pathlib, sys, time\n"
    "go = pathlib.Path(sys.argv[1])\n"
    "deadline = time.monotonic() + 30\n"
    "while not go.exists():\n"
    "    if time.monotonic() > deadline: sys.exit('never told to read')\n"
    "    time.sleep(0.01)\n"
    "print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())\n"
)


def payload(size: int) -> bytes:
    return hashlib.sha256(b"seed").digest() * (size // 32)


async def test_the_input_is_produced_whole_while_the_client_is_not_reading(tmp_path: Path):
    """4 MiB fits the read-ahead: the stream ends before the client reads a byte.
    In lockstep (the old 64 KiB) the stream would stall and the client never be told."""
    go = tmp_path / "go"
    data = payload(4 << 20)

    async def stream() -> AsyncIterator[bytes]:
        for offset in range(0, len(data), CHUNK):
            yield data[offset : offset + CHUNK]
        go.touch()  # reached only once every chunk was taken

    out = await run_consumer([sys.executable, "-c", WAIT_THEN_HASH, str(go)], stream())
    assert out.strip() == hashlib.sha256(data).hexdigest()


async def test_read_ahead_is_bounded_while_the_client_is_busy(tmp_path: Path):
    go = tmp_path / "go"
    data = payload(64 << 20)
    readahead = 2 << 20
    produced = 0

    async def stream() -> AsyncIterator[bytes]:
        nonlocal produced
        for offset in range(0, len(data), CHUNK):
            produced += CHUNK
            yield data[offset : offset + CHUNK]

    argv = [sys.executable, "-c", WAIT_THEN_HASH, str(go)]
    task = asyncio.create_task(run_consumer(argv, stream(), readahead=readahead))
    await asyncio.sleep(1.0)  # ample time to run away, were it unbounded
    assert 0 < produced <= readahead + (64 << 10) + 2 * CHUNK  # our buffer + the pipe
    go.touch()
    out = await task
    assert out.strip() == hashlib.sha256(data).hexdigest()
    assert produced == len(data)


async def test_a_client_that_exits_without_reading_fails_although_it_exits_0():
    """The read-ahead is ours, not a wider pipe: what the client never read is noticed."""
    data = payload(1 << 20)

    async def stream() -> AsyncIterator[bytes]:
        for offset in range(0, len(data), CHUNK):
            yield data[offset : offset + CHUNK]

    argv = [sys.executable, "-c", "import time; time.sleep(0.3)"]
    with pytest.raises(Exception, match="before reading all its input"):
        await run_consumer(argv, stream(), readahead=16 << 20)


async def chunked(data: bytes, size: int = 70_000) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]


async def test_zstd_compress_round_trips_and_is_one_checked_frame():
    data = payload(3 << 20) + b"tail"
    frame = b"".join([c async for c in zstd_compress(chunked(data), 3)])
    assert zstandard.ZstdDecompressor().decompressobj().decompress(frame) == data
    params = zstandard.get_frame_parameters(frame)
    assert params.has_checksum
    out = b"".join([c async for c in zstd_decompress(chunked(frame, 1 << 20), max_output=10**8)])
    assert out == data


async def test_zstd_bomb_made_of_tiny_blocks_is_refused_without_inflating_it():
    bomb = zstandard.ZstdCompressor(level=19).compress(b"\0" * (256 << 20))
    assert len(bomb) < 64 * 1024
    produced: list[int] = []

    async def consume() -> None:
        async for chunk in zstd_decompress(chunked(bomb, 1 << 20), max_output=8 << 20):
            produced.append(len(chunk))

    with pytest.raises(UnsafeInput, match="decompression bomb"):
        await consume()
    assert sum(produced) <= 8 << 20
