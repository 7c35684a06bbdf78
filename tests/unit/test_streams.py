"""Byte streams: gzip round trips, corrupt and hostile input, metering, subprocesses."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import sys
from collections.abc import AsyncIterator

import psutil
import pytest

from envrestore.pipelines.errors import IntegrityError, PermanentError, TransientError, UnsafeInput
from envrestore.pipelines.streams import (
    StreamMeter,
    gzip_compress,
    gzip_decompress,
    rate_limited,
    run_consumer,
    run_producer,
    zstd_decompress,
)

PAYLOAD = os.urandom(300_000) + b"text " * 400_000 + bytes(range(256))


async def chunked(data: bytes, size: int = 70_000) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]


async def collect(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


async def test_gzip_round_trip_restores_the_bytes_and_is_readable_by_gzip():
    compressed = await collect(gzip_compress(chunked(PAYLOAD), level=6))
    assert gzip.decompress(compressed) == PAYLOAD
    assert await collect(gzip_decompress(chunked(compressed), max_output=10**8)) == PAYLOAD


async def test_gzip_decompress_reads_every_member_of_a_multi_member_stream():
    data = gzip.compress(b"first member\n") + gzip.compress(b"second member\n")
    out = await collect(gzip_decompress(chunked(data, 7), max_output=1000))
    assert out == b"first member\nsecond member\n"


async def test_gzip_decompress_ignores_trailing_nul_padding():
    data = gzip.compress(b"padded") + b"\0" * 512
    assert await collect(gzip_decompress(chunked(data), max_output=1000)) == b"padded"


async def test_truncated_gzip_raises_integrity_error():
    data = gzip.compress(PAYLOAD)
    with pytest.raises(IntegrityError, match="truncated"):
        await collect(gzip_decompress(chunked(data[: len(data) // 2]), max_output=10**8))


async def test_corrupt_gzip_raises_integrity_error():
    data = bytearray(gzip.compress(b"x" * 100_000))
    data[20:40] = b"\xff" * 20
    with pytest.raises(IntegrityError, match="corrupt"):
        await collect(gzip_decompress(chunked(bytes(data)), max_output=10**8))


async def test_garbage_after_the_last_member_raises_integrity_error():
    data = gzip.compress(b"ok") + b"not gzip at all"
    with pytest.raises(IntegrityError):
        await collect(gzip_decompress(chunked(data), max_output=1000))


async def test_empty_input_is_not_a_valid_gzip_stream():
    with pytest.raises(IntegrityError):
        await collect(gzip_decompress(chunked(b""), max_output=1000))


async def test_decompression_bomb_is_refused_before_it_is_inflated():
    bomb = gzip.compress(b"\0" * (64 << 20))  # 64 MiB of zeros, ~64 KiB compressed
    produced: list[int] = []

    async def consume() -> None:
        async for chunk in gzip_decompress(chunked(bomb), max_output=5 << 20):
            produced.append(len(chunk))

    with pytest.raises(UnsafeInput, match="decompression bomb"):
        await consume()
    assert sum(produced) <= 5 << 20


async def test_zstd_round_trip_and_bomb_cap():
    import zstandard

    frames = zstandard.ZstdCompressor().compress(PAYLOAD) + zstandard.ZstdCompressor().compress(
        b"tail"
    )
    assert await collect(zstd_decompress(chunked(frames), max_output=10**8)) == PAYLOAD + b"tail"
    with pytest.raises(IntegrityError):
        await collect(zstd_decompress(chunked(frames[:1000]), max_output=10**8))
    bomb = zstandard.ZstdCompressor().compress(b"\0" * (64 << 20))
    with pytest.raises(UnsafeInput):
        await collect(zstd_decompress(chunked(bomb), max_output=1 << 20))


async def test_meter_counts_bytes_and_hashes_like_hashlib():
    seen: list[int] = []
    meter = StreamMeter(on_progress=seen.append)
    out = await collect(meter.wrap(chunked(PAYLOAD)))
    assert out == PAYLOAD
    assert meter.size == len(PAYLOAD)
    assert meter.sha256 == hashlib.sha256(PAYLOAD).hexdigest()
    assert seen[-1] == len(PAYLOAD)
    assert seen == sorted(seen)


async def test_rate_limit_zero_passes_chunks_through_unchanged():
    assert await collect(rate_limited(chunked(PAYLOAD), 0)) == PAYLOAD


async def test_rate_limit_keeps_every_byte_in_order():
    data = bytes(range(256)) * 100
    assert await collect(rate_limited(chunked(data, 5000), 10**9)) == data


async def test_run_producer_streams_a_commands_stdout():
    data = await collect(run_producer([sys.executable, "-c", "print('x' * 3_000_000)"]))
    assert data == b"x" * 3_000_000 + b"\n"


async def test_run_producer_raises_on_non_zero_exit_with_the_stderr_tail():
    script = "import sys; print('partial'); sys.stderr.write('disk on fire\\n'); sys.exit(3)"
    with pytest.raises(TransientError, match="disk on fire") as info:
        await collect(run_producer([sys.executable, "-c", script]))
    assert "exited with code 3" in str(info.value)
    assert info.value.data["returncode"] == 3


async def test_run_producer_masks_secrets_in_stderr():
    script = "import sys; sys.stderr.write('FATAL: bad password hunter2\\n'); sys.exit(1)"
    with pytest.raises(PermanentError) as info:
        await collect(run_producer([sys.executable, "-c", script], secrets=["hunter2"]))
    assert "hunter2" not in str(info.value)
    assert "***" in str(info.value)


async def test_run_producer_does_not_deadlock_on_a_chatty_stderr():
    script = "import sys; sys.stderr.write('e' * 5_000_000); print('done')"
    assert await collect(run_producer([sys.executable, "-c", script])) == b"done\n"


async def test_run_producer_missing_command_is_a_permanent_error():
    with pytest.raises(PermanentError, match="not installed"):
        await collect(run_producer(["envrestore-no-such-command"]))


async def test_stopping_a_producer_early_kills_and_reaps_the_process():
    stream = run_producer(["yes"])
    first = await anext(stream)
    assert first.startswith(b"y\n")
    children = psutil.Process().children()
    assert any(child.name() == "yes" for child in children)
    await stream.aclose()
    assert not [c for c in psutil.Process().children() if c.name() == "yes"]


async def test_cancelling_a_producer_consumer_kills_the_process():
    async def consume() -> None:
        async for _ in run_producer([sys.executable, "-c", "import time; time.sleep(60)"]):
            pass

    task = asyncio.create_task(consume())
    for _ in range(100):
        await asyncio.sleep(0.02)
        if psutil.Process().children():
            break
    pids = [child.pid for child in psutil.Process().children()]
    assert pids
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not [pid for pid in pids if psutil.pid_exists(pid)]


async def test_run_consumer_feeds_stdin_and_returns_stdout():
    script = "import sys, hashlib; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())"
    out = await run_consumer([sys.executable, "-c", script], chunked(PAYLOAD))
    assert out.strip() == hashlib.sha256(PAYLOAD).hexdigest()


async def test_run_consumer_raises_when_the_command_fails():
    script = "import sys; sys.stdin.read(); sys.stderr.write('ERROR 1064 syntax\\n'); sys.exit(1)"
    with pytest.raises(PermanentError, match="ERROR 1064"):
        await run_consumer([sys.executable, "-c", script], chunked(b"SELECT;"))


async def test_run_consumer_fails_when_the_command_stops_reading_early():
    big = b"x" * (8 << 20)
    with pytest.raises(TransientError, match="before reading all its input"):
        await run_consumer([sys.executable, "-c", "pass"], chunked(big, 1 << 20))


async def test_run_consumer_kills_the_process_when_the_input_fails():
    async def broken() -> AsyncIterator[bytes]:
        yield b"some"
        raise IntegrityError("bad input stream")

    before = {child.pid for child in psutil.Process().children()}
    with pytest.raises(IntegrityError, match="bad input stream"):
        await run_consumer(["cat"], broken())
    assert {child.pid for child in psutil.Process().children()} <= before


async def test_consumer_fails_when_the_input_stream_drops_mid_way():
    """A ConnectionResetError from the source (a dropped download) fails the import, promptly."""
    from envrestore.pipelines.streams import run_consumer

    async def dropping():
        yield b"partial data\n"
        raise ConnectionResetError("connection reset by peer")

    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(run_consumer(["cat"], dropping()), timeout=30)
