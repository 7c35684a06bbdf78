"""A bounded buffer between two stages of a stream, so each stage works while the next is busy.

Without it a chain of async generators runs one stage at a time: the download
waits while the inflater works, the inflater while the statement filter works.
`read_ahead` runs the upstream in its own task, at most `limit` bytes ahead of
the consumer: downloading and hashing (sockets, hashlib) and inflating (a worker
thread) release the GIL, so they overlap the Python stages on the other core.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator

#: Between the stages of one part's stream: a few ~1 MiB chunks.
STAGE_READAHEAD = 4 << 20


class _Buffer:
    """The chunks fetched and not yet taken, their size, and how the upstream ended."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.items: deque[bytes] = deque()
        self.size = 0
        self.finished = False
        self.error: Exception | None = None
        self.changed = asyncio.Condition()

    def has_room(self) -> bool:
        return self.size < self.limit  # one chunk always fits, whatever its size

    def can_take(self) -> bool:
        return bool(self.items) or self.finished

    async def fill(self, chunks: AsyncIterator[bytes]) -> None:
        try:
            async for chunk in chunks:
                async with self.changed:
                    await self.changed.wait_for(self.has_room)
                    self.items.append(chunk)
                    self.size += len(chunk)
                    self.changed.notify_all()
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, in order
            self.error = exc
        finally:
            closer = getattr(chunks, "aclose", None)
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer()
            self.finished = True
            async with self.changed:
                self.changed.notify_all()


async def read_ahead(chunks: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """The same chunks, in order, fetched by a task up to `limit` bytes ahead.

    An error of the upstream is raised here after the chunks that came before
    it, as without read-ahead. When this stream is closed, fails or is
    cancelled, the upstream task is cancelled and the upstream closed (`aclose`,
    so its own clean-up runs: a spool file, a connection) before this returns.
    """
    buffer = _Buffer(limit)
    task = asyncio.create_task(buffer.fill(chunks))
    try:
        while True:
            async with buffer.changed:
                await buffer.changed.wait_for(buffer.can_take)
                if not buffer.items:
                    if buffer.error is not None:
                        raise buffer.error
                    return
                chunk = buffer.items.popleft()
                buffer.size -= len(chunk)
                buffer.changed.notify_all()
            yield chunk
    finally:
        task.cancel()
        await asyncio.wait([task])  # its clean-up done; our own cancellation still propagates
