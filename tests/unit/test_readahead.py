"""Read-ahead between stream stages: same chunks in order, bounded, errors and closing kept."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from envrestore.pipelines.errors import IntegrityError
from envrestore.pipelines.readahead import read_ahead


async def numbered(count: int, size: int, log: list[str]) -> AsyncIterator[bytes]:
    try:
        for n in range(count):
            log.append(f"made {n}")
            yield bytes([n % 256]) * size
    finally:
        log.append("closed")


async def test_chunks_come_through_whole_and_in_order():
    log: list[str] = []
    out = [c async for c in read_ahead(numbered(50, 1000, log), 4096)]
    assert out == [bytes([n]) * 1000 for n in range(50)]
    assert log[-1] == "closed"


async def test_the_upstream_runs_ahead_only_up_to_the_limit():
    log: list[str] = []
    stream = read_ahead(numbered(100, 1000, log), 5000)
    first = await anext(stream)
    assert first == b"\0" * 1000
    await asyncio.sleep(0.1)  # the filler has had every chance to run on
    made = sum(1 for line in log if line.startswith("made"))
    assert 5 <= made <= 7  # ~5 KiB buffered, one taken, one in hand
    await stream.aclose()
    assert log[-1] == "closed"


async def test_an_upstream_error_comes_after_the_chunks_before_it():
    async def failing() -> AsyncIterator[bytes]:
        yield b"one"
        yield b"two"
        raise IntegrityError("the part is corrupt")

    got: list[bytes] = []

    async def consume() -> None:
        async for chunk in read_ahead(failing(), 1 << 20):
            got.append(chunk)

    with pytest.raises(IntegrityError, match="corrupt"):
        await consume()
    assert got == [b"one", b"two"]


async def test_cancelling_the_reader_closes_the_upstream():
    log: list[str] = []
    gate = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        try:
            yield b"first"
            await gate.wait()  # never set: a stalled download
            yield b"never"
        finally:
            log.append("closed")

    async def consume() -> None:
        async for _ in read_ahead(slow(), 1 << 20):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log == ["closed"]
