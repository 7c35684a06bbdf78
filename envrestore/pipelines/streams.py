"""Async byte-stream building blocks: `AsyncIterator[bytes]` in, `AsyncIterator[bytes]` out.

Every bulk path (dump → gzip → S3, S3 → gunzip → client) is a chain of these, so
no part is ever held whole in memory (DESIGN.md, "Streams, not buffers").
CPU-heavy zlib calls run in a thread for large chunks: zlib releases the GIL,
so compression overlaps with the network and the subprocess on the other core.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import os
import re
import time
import zlib
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from pathlib import Path

import structlog

from envrestore.pipelines.errors import (
    BadInput,
    EnvrestoreError,
    NotFound,
    PermanentError,
    TransientError,
    Unavailable,
)

# Re-exported: callers take the whole stream API from here.
from envrestore.pipelines.inflate import ZSTD_AVAILABLE as ZSTD_AVAILABLE
from envrestore.pipelines.inflate import bzip2_decompress as bzip2_decompress
from envrestore.pipelines.inflate import gzip_decompress as gzip_decompress
from envrestore.pipelines.inflate import zstd_decompress as zstd_decompress

log = structlog.get_logger(__name__)

#: The currency between components: ~1 MiB chunks.
CHUNK_SIZE = 1 << 20
#: Below this, a thread hop costs more than the zlib call it would offload.
_THREAD_MIN = 64 * 1024
_GZIP_WBITS = 31  # zlib: gzip header and trailer
#: From this size a sha256 update (~0.6 ms per MiB) is worth a thread hop.
_HASH_THREAD_MIN = 256 * 1024
#: How much of a failing command's stderr is kept (its tail names the cause).
_STDERR_KEEP = 16 * 1024
_STDERR_LINES = 6
#: stdout of a consumer is a report (psql notices), not data: keep it bounded.
_STDOUT_KEEP = 1 << 20
#: How far the producer (download, inflate, filter) may run ahead of a client
#: reading stdin: buffered bytes, beside the pipe. The client pauses while the
#: server runs each statement; this lets the Python side keep working meanwhile.
DEFAULT_READAHEAD = 16 << 20
# ---------------------------------------------------------------- compression


async def gzip_compress(chunks: AsyncIterator[bytes], level: int = 6) -> AsyncIterator[bytes]:
    """Gzip a stream (one member), compressing big chunks off the event loop."""
    comp = zlib.compressobj(level, zlib.DEFLATED, _GZIP_WBITS)
    async for chunk in chunks:
        if not chunk:
            continue
        if len(chunk) >= _THREAD_MIN:
            out = await asyncio.to_thread(comp.compress, chunk)
        else:
            out = comp.compress(chunk)
        if out:
            yield out
    yield comp.flush()


async def zstd_compress(
    chunks: AsyncIterator[bytes], level: int = 3, *, threads: int = 0
) -> AsyncIterator[bytes]:
    """Zstd a stream (one frame, with a checksum), compressing big chunks off the loop.

    zstd at level 3 is faster than gzip -6 and decompresses about 10x faster;
    `threads` > 0 uses zstd's own worker threads.
    """
    if not ZSTD_AVAILABLE:
        raise PermanentError(
            "backup_compression is zstd but the zstandard package is not installed; "
            "pip install zstandard on the workers or use gzip"
        )
    zstandard = importlib.import_module("zstandard")
    comp = zstandard.ZstdCompressor(level=level, threads=threads, write_checksum=True).compressobj()
    async for chunk in chunks:
        if not chunk:
            continue
        if len(chunk) >= _THREAD_MIN:
            out: bytes = await asyncio.to_thread(comp.compress, chunk)
        else:
            out = comp.compress(chunk)
        if out:
            yield out
    yield comp.flush()


# ---------------------------------------------------------------- metering


class StreamMeter:
    """Counts and hashes what flows through, so a stream is verified as it moves."""

    def __init__(self, on_progress: Callable[[int], None] | None = None) -> None:
        self._hash = hashlib.sha256()
        self._size = 0
        self._on_progress = on_progress

    @property
    def size(self) -> int:
        return self._size

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    async def wrap(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            # hashlib (~1.6 GB/s) releases the GIL: a big chunk is hashed in a
            # thread, so the loop keeps feeding the other stages meanwhile.
            if len(chunk) >= _HASH_THREAD_MIN:
                await asyncio.to_thread(self._hash.update, chunk)
            else:
                self._hash.update(chunk)
            self._size += len(chunk)
            if self._on_progress is not None:
                self._on_progress(self._size)
            yield chunk


async def rate_limited(chunks: AsyncIterator[bytes], bytes_per_second: int) -> AsyncIterator[bytes]:
    """Cap a stream's average rate (an operator's setting); 0 means no cap.

    Large chunks are split so the stream stays smooth instead of bursting.
    """
    if bytes_per_second <= 0:
        async for chunk in chunks:
            yield chunk
        return
    piece = max(4096, bytes_per_second // 4)
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent = 0
    async for chunk in chunks:
        for offset in range(0, len(chunk), piece):
            part = chunk[offset : offset + piece]
            ahead = (sent + len(part)) / bytes_per_second - (loop.time() - start)
            if ahead > 0:
                await asyncio.sleep(ahead)
            sent += len(part)
            yield part


# ---------------------------------------------------------------- subprocesses

_UNAVAILABLE_MARKERS = (
    "can't connect",
    "could not connect",
    "connection refused",
    "connection timed out",
    "timeout expired",
    "server has gone away",
    "lost connection",
    "no route to host",
    "could not translate host name",
    "unknown server host",
    "unknown mysql server host",
    "is the server running",
    "the database system is starting up",
    "the database system is shutting down",
    "too many connections",
    "connection reset",
    "no space left on device",
)
_CREDENTIAL_MARKERS = (
    "access denied",
    "password authentication failed",
    "authentication failed",
    "no password supplied",
    "peer authentication failed",
)
_NOT_FOUND_RE = re.compile(r"unknown database|database \".*\" does not exist")
_ROLE_MISSING_RE = re.compile(r"role \".*\" does not exist")
_SQL_ERROR_RE = re.compile(r"\bERROR\b|\bFATAL\b")


def classify_failure(returncode: int, stderr_tail: str) -> type[EnvrestoreError]:
    """Pick the error class for a failed command from what its stderr says.

    Connection trouble is transient (`Unavailable`); wrong credentials,
    a missing database and SQL errors are permanent; a command killed by a
    signal or failing for an unknown reason is transient, bounded by the
    ledger's attempt cap.
    """
    text = stderr_tail.lower()
    if returncode in (126, 127):
        return PermanentError
    if any(marker in text for marker in _UNAVAILABLE_MARKERS):
        return Unavailable
    if any(marker in text for marker in _CREDENTIAL_MARKERS) or _ROLE_MISSING_RE.search(text):
        return BadInput
    if _NOT_FOUND_RE.search(text):
        return NotFound
    if _SQL_ERROR_RE.search(stderr_tail):
        return PermanentError
    return TransientError


def _scrub(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _failure(
    name: str, returncode: int, stderr: bytes, secrets: Sequence[str], what: str = ""
) -> EnvrestoreError:
    lines = [
        line.strip()[:300]
        for line in _scrub(stderr.decode("utf-8", "replace"), secrets).splitlines()
        if line.strip()
    ][-_STDERR_LINES:]
    tail = " | ".join(lines) or "(no error output)"
    how = (
        f"was killed by signal {-returncode}"
        if returncode < 0
        else f"exited with code {returncode}"
    )
    cls = classify_failure(returncode, tail)
    return cls(
        f"{name} {how}{what}: {tail}",
        command=name,
        returncode=returncode,
        stderr=tail,
    )


def _environment(env: Mapping[str, str] | None) -> dict[str, str] | None:
    if env is None:
        return None
    return {**os.environ, **env}


async def _keep_tail(stream: asyncio.StreamReader, keep: int) -> bytes:
    """Drain a pipe to EOF, keeping only its last `keep` bytes (it cannot fill and block)."""
    tail = bytearray()
    while data := await stream.read(65536):
        tail += data
        if len(tail) > 2 * keep:
            del tail[:-keep]
    return bytes(tail[-keep:])


async def _spawn(
    argv: Sequence[str],
    *,
    stdin: int,
    env: Mapping[str, str] | None,
    cwd: str | os.PathLike[str] | None,
) -> asyncio.subprocess.Process:
    name = Path(argv[0]).name
    try:
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=stdin,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=_environment(env),
            cwd=cwd,
            limit=CHUNK_SIZE,
        )
    except FileNotFoundError as exc:
        raise PermanentError(
            f"{name} is not installed or not on PATH ({argv[0]}); install it or set the "
            "matching *_bin_dir setting",
            command=name,
        ) from exc
    except PermissionError as exc:
        raise PermanentError(f"{argv[0]} is not executable", command=name) from exc


async def _reap(proc: asyncio.subprocess.Process, *tasks: asyncio.Task[bytes]) -> None:
    """Kill and wait for a process we no longer want, so no zombie or orphan is left."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    for task in tasks:
        task.cancel()
    await proc.wait()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def run_producer(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    secrets: Sequence[str] = (),
    ok_returncodes: Collection[int] = (0,),
) -> AsyncIterator[bytes]:
    """Run a command and stream its stdout in ~1 MiB chunks.

    `env` adds to (never replaces) the inherited environment. After EOF the
    exit code is checked: a failing command raises (no false success), with
    its name and the tail of its stderr, `secrets` masked. If the consumer
    stops early or is cancelled, the process is killed and reaped.
    """
    name = Path(argv[0]).name
    proc = await _spawn(argv, stdin=asyncio.subprocess.DEVNULL, env=env, cwd=cwd)
    assert proc.stdout is not None
    assert proc.stderr is not None
    stderr_task = asyncio.create_task(_keep_tail(proc.stderr, _STDERR_KEEP))
    finished = False
    started = time.monotonic()
    produced = 0
    try:
        buf = bytearray()
        while data := await proc.stdout.read(CHUNK_SIZE):
            produced += len(data)
            if not buf and len(data) >= CHUNK_SIZE:
                yield data
                continue
            buf += data
            if len(buf) >= CHUNK_SIZE:
                out = bytes(buf)
                buf.clear()
                yield out
        returncode = await proc.wait()
        stderr = await stderr_task
        finished = True
        if returncode not in ok_returncodes:
            raise _failure(name, returncode, stderr, secrets)
        if buf:
            yield bytes(buf)
        log.debug(
            "subprocess.produced",
            command=name,
            bytes=produced,
            seconds=round(time.monotonic() - started, 3),
        )
    finally:
        if not finished:
            log.debug("subprocess.stopped_early", command=name, bytes=produced)
            await _reap(proc, stderr_task)


async def run_consumer(
    argv: Sequence[str],
    chunks: AsyncIterator[bytes],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    secrets: Sequence[str] = (),
    readahead: int = DEFAULT_READAHEAD,
) -> str:
    """Feed a stream to a command's stdin, check its exit code, return its stdout.

    Up to `readahead` bytes are buffered toward the command (the transport's
    buffer, beside the 64 KiB pipe): the input stream keeps producing while the
    command is busy, instead of running in lockstep with its reads. Memory stays
    bounded by `readahead` plus one chunk.

    A command that exits before reading all its input fails even with code 0
    (it did not import what it was given). If the input stream raises or the
    caller is cancelled, the process is killed and reaped and the error propagates.
    """
    name = Path(argv[0]).name
    proc = await _spawn(argv, stdin=asyncio.subprocess.PIPE, env=env, cwd=cwd)
    assert proc.stdin is not None
    assert proc.stdout is not None
    assert proc.stderr is not None
    if readahead > 0:
        # In our buffer, not a wider kernel pipe: bytes still queued here when the
        # command exits fail the write (EPIPE), so a client that stops reading
        # early is caught; bytes in a pipe it never read would vanish unnoticed.
        proc.stdin.transport.set_write_buffer_limits(high=readahead)
    stderr_task = asyncio.create_task(_keep_tail(proc.stderr, _STDERR_KEEP))
    stdout_task = asyncio.create_task(_keep_tail(proc.stdout, _STDOUT_KEEP))
    finished = False
    broken = False
    try:
        # Only errors of the pipe to the client mean "it stopped reading"; the
        # same exception types raised by the input stream (a dropped download)
        # must propagate, or we would wait forever on a client still reading.
        async for chunk in chunks:
            try:
                proc.stdin.write(chunk)
                await proc.stdin.drain()  # waits only once `readahead` bytes are queued
            except (BrokenPipeError, ConnectionResetError):
                broken = True
                break
        if not broken:
            try:
                proc.stdin.close()
                await proc.stdin.wait_closed()  # the queued bytes are written first
            except (BrokenPipeError, ConnectionResetError):
                broken = True
        returncode = await proc.wait()
        stderr = await stderr_task
        stdout = await stdout_task
        finished = True
    finally:
        if not finished:
            await _reap(proc, stderr_task, stdout_task)
    if returncode != 0:
        raise _failure(name, returncode, stderr, secrets)
    if broken:
        raise _failure(name, returncode, stderr, secrets, " before reading all its input")
    return _scrub(stdout.decode("utf-8", "replace"), secrets)


async def empty_stream() -> AsyncIterator[bytes]:
    """No input at all: for commands run with `run_consumer` that read nothing."""
    return
    yield b""  # pragma: no cover - makes this an async generator
