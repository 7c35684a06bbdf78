"""Decompressing untrusted parts (gzip, zstd, bzip2) fast, off the event loop, bomb-capped.

gzip goes through ISA-L (`isal`, 2-3x zlib's speed) when it is installed, else
zlib. Each input chunk is inflated in a worker thread, in batches of at most
`_BATCH` bytes of output: the codecs release the GIL, so inflating overlaps the
download, the statement filter and the client on the other core, and the event
loop stays free to feed the client. Output is made at most CHUNK_SIZE per call,
so a decompression bomb is refused by `max_output` before it is held in memory.
"""

from __future__ import annotations

import asyncio
import bz2
import importlib
import zlib
from collections.abc import AsyncIterator
from typing import Any

from envrestore.pipelines.errors import BadInput, IntegrityError, UnsafeInput

_zstd: Any
try:  # optional: zstd parts are accepted only where the package is installed
    _zstd = importlib.import_module("zstandard")
except ImportError:  # pragma: no cover - depends on the environment
    _zstd = None

_isal: Any
try:  # optional: ISA-L's inflate, same API as zlib's decompressobj
    _isal = importlib.import_module("isal.isal_zlib")
except ImportError:  # pragma: no cover - depends on the environment
    _isal = None

#: Output per codec call (the bomb check runs between calls).
CHUNK_SIZE = 1 << 20
#: Output per thread hop: fewer hops, memory still bounded.
_BATCH = 8 << 20
#: Below this, a thread hop costs more than the call it would offload.
_THREAD_MIN = 64 * 1024
_GZIP_WBITS = 31  # gzip header and trailer
#: zstd input per call: a zstd RLE block inflates 128 KiB from 4 bytes, so small
#: slices keep one call's output bounded (at most 32 MiB from 1 KiB).
_ZSTD_SLICE = 1024

ZSTD_AVAILABLE = _zstd is not None
#: The inflater in use, for logs and the bench: "isal" or "zlib".
GZIP_INFLATER = "isal" if _isal is not None else "zlib"
_GZIP_ERRORS: tuple[type[Exception], ...] = (
    (zlib.error, _isal.error) if _isal is not None else (zlib.error,)
)


def _gzip_decompressobj() -> Any:
    return (
        _isal.decompressobj(_GZIP_WBITS) if _isal is not None else zlib.decompressobj(_GZIP_WBITS)
    )


def _inflate_batch(dec: Any, data: bytes, budget: int) -> tuple[list[bytes], bytes]:
    """Inflate `data` until its member ends, the input runs out, or `budget` bytes are made.

    Returns the outputs and the input not yet fed (`unconsumed_tail`, or the bytes
    after the member's end: the caller looks at `dec.eof`). Blocking: runs in a thread.
    """
    outs: list[bytes] = []
    made = 0
    while True:
        out = dec.decompress(data, CHUNK_SIZE)
        if out:
            outs.append(out)
            made += len(out)
        if dec.eof:
            return outs, dec.unused_data
        data = dec.unconsumed_tail
        if not data or made >= budget:
            return outs, data


def _bomb(codec: str, max_output: int) -> UnsafeInput:
    return UnsafeInput(
        f"{codec} stream inflates beyond the cap of {max_output} bytes; "
        "refusing it as a possible decompression bomb (raise the cap "
        "if the part is genuinely this large)",
        max_output=max_output,
    )


async def gzip_decompress(chunks: AsyncIterator[bytes], *, max_output: int) -> AsyncIterator[bytes]:
    """Gunzip a stream of one or more gzip members, as `gzip -d` does.

    Trailing NUL padding (tape-style) is ignored, as gzip does; any other
    trailing bytes are corruption.
    """
    dec = _gzip_decompressobj()
    member_fed = False  # bytes fed to the current member
    members = 0
    padding = False
    total = 0
    async for chunk in chunks:
        data = chunk
        while data:
            if padding:
                if data.strip(b"\0"):
                    raise IntegrityError(
                        "gzip stream has garbage after its last member; the part is corrupt",
                        offset=total,
                    )
                break
            budget = max(1, min(_BATCH, max_output - total + 1))
            try:
                if len(data) >= _THREAD_MIN:
                    outs, data = await asyncio.to_thread(_inflate_batch, dec, data, budget)
                else:
                    outs, data = _inflate_batch(dec, data, min(budget, CHUNK_SIZE))
            except _GZIP_ERRORS as exc:
                raise IntegrityError(
                    f"gzip stream is corrupt after {total} output bytes ({exc}); "
                    "re-fetch the part or check its source",
                    output_bytes=total,
                ) from exc
            member_fed = True
            for out in outs:
                total += len(out)
                if total > max_output:
                    raise _bomb("gzip", max_output)
                yield out
            if dec.eof:
                members += 1
                dec = _gzip_decompressobj()
                member_fed = False
                if data[:1] == b"\0":
                    padding = True
    if member_fed or members == 0:
        raise IntegrityError(
            f"gzip stream is truncated after {total} output bytes; the part is incomplete "
            "(re-fetch it)",
            output_bytes=total,
        )


class _ZstdState:
    """A zstd stream being read: the current frame's decompressobj and counts."""

    def __init__(self) -> None:
        self.dctx = _zstd.ZstdDecompressor()
        self.dec: Any = self.dctx.decompressobj()
        self.frames = 0  # frames ended
        self.frame_fed = False  # bytes fed to the current frame

    def batch(self, view: memoryview, budget: int) -> tuple[list[bytes], memoryview]:
        """Feed `view` in small slices until it is used up or `budget` bytes are made;
        returns the outputs, joined into ~CHUNK_SIZE pieces (small slices make small
        outputs), and the input left. Blocking: runs in a thread.

        The hot loop is kept lean (views, not copies; locals): per 1 KiB slice, the
        Python around the call costs as much as the decompression itself."""
        outs: list[bytes] = []
        pending: list[bytes] = []
        waiting = made = pos = 0
        end = len(view)
        dec = self.dec
        decompress = dec.decompress
        while pos < end and made < budget:
            out: bytes = decompress(view[pos : pos + _ZSTD_SLICE])
            pos += _ZSTD_SLICE
            self.frame_fed = True
            if dec.eof:
                out += self._next_frames()
                dec = self.dec
                decompress = dec.decompress
            if out:
                pending.append(out)
                waiting += len(out)
                made += len(out)
                if waiting >= CHUNK_SIZE:
                    outs.append(b"".join(pending))
                    pending.clear()
                    waiting = 0
        if pending:
            outs.append(b"".join(pending))
        return outs, view[pos:]

    def _next_frames(self) -> bytes:
        """A frame ended: start the next one with the bytes fed past its end (at most
        one slice, so this output stays bounded too)."""
        made: list[bytes] = []
        rest = self.dec.unused_data
        while True:
            self.frames += 1
            self.dec = self.dctx.decompressobj()
            self.frame_fed = False
            if not rest:
                return b"".join(made)
            made.append(self.dec.decompress(rest))
            self.frame_fed = True
            if not self.dec.eof:
                return b"".join(made)
            rest = self.dec.unused_data


async def zstd_decompress(chunks: AsyncIterator[bytes], *, max_output: int) -> AsyncIterator[bytes]:
    """Decompress a zstd stream (one or more frames), capped like `gzip_decompress`.

    Needs the optional `zstandard` package.
    """
    if _zstd is None:
        raise BadInput(
            "this part is zstd-compressed but the zstandard package is not installed; "
            "pip install zstandard on the workers"
        )
    state = _ZstdState()
    total = 0
    async for chunk in chunks:
        view = memoryview(chunk)
        while view:
            budget = max(1, min(_BATCH, max_output - total + 1))
            try:
                if len(view) >= _THREAD_MIN:
                    outs, view = await asyncio.to_thread(state.batch, view, budget)
                else:
                    outs, view = state.batch(view, budget)
            except _zstd.ZstdError as exc:
                raise IntegrityError(
                    f"zstd stream is corrupt after {total} output bytes ({exc})",
                    output_bytes=total,
                ) from exc
            for out in outs:
                total += len(out)
                if total > max_output:
                    raise UnsafeInput(
                        f"zstd stream inflates beyond the cap of {max_output} bytes; "
                        "refusing it as a possible decompression bomb",
                        max_output=max_output,
                    )
                yield out
    if state.frame_fed or state.frames == 0:
        raise IntegrityError(
            f"zstd stream is truncated after {total} output bytes; the part is incomplete",
            output_bytes=total,
        )


async def bzip2_decompress(
    chunks: AsyncIterator[bytes], *, max_output: int
) -> AsyncIterator[bytes]:
    """Decompress a bzip2 stream (one or more concatenated streams, as `bzip2 -d`
    reads them), capped like `gzip_decompress`.

    Each call expands at most CHUNK_SIZE (`max_length`). bzip2 is slow and
    releases the GIL: big pieces and draining calls run in a thread. Trailing
    NUL padding is ignored as for gzip; any other bytes after the last stream
    are corruption.
    """
    dec = bz2.BZ2Decompressor()
    stream_fed = False  # bytes fed to the current stream
    streams = 0
    padding = False
    total = 0
    async for chunk in chunks:
        data = chunk
        while True:
            if padding:
                if data.strip(b"\0"):
                    raise IntegrityError(
                        "bzip2 stream has garbage after its last stream; the part is corrupt",
                        offset=total,
                    )
                break
            if not data and dec.needs_input:
                break
            try:
                if data and len(data) < _THREAD_MIN:
                    out = dec.decompress(data, CHUNK_SIZE)
                else:  # a big piece, or draining: up to CHUNK_SIZE of output
                    out = await asyncio.to_thread(dec.decompress, data, CHUNK_SIZE)
            except (OSError, EOFError) as exc:
                raise IntegrityError(
                    f"bzip2 stream is corrupt after {total} output bytes ({exc}); "
                    "re-fetch the part or check its source",
                    output_bytes=total,
                ) from exc
            stream_fed = stream_fed or bool(data)
            data = b""
            if out:
                total += len(out)
                if total > max_output:
                    raise _bomb("bzip2", max_output)
                yield out
            if dec.eof:
                streams += 1
                data = dec.unused_data
                dec = bz2.BZ2Decompressor()
                stream_fed = False
                if data[:1] == b"\0":
                    padding = True
                elif not data:
                    break
    if stream_fed or streams == 0:
        raise IntegrityError(
            f"bzip2 stream is truncated after {total} output bytes; the part is incomplete "
            "(re-fetch it)",
            output_bytes=total,
        )
