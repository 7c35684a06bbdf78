"""Reading a part (of a backup, a download, an upload) from the object store as untrusted input.

Every byte passes a meter (size, sha256) on its way in; the verdict against
the manifest is given when the stream ends, before anything live changes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from envrestore.pipelines.errors import IntegrityError
from envrestore.pipelines.failpoints import failpoint
from envrestore.pipelines.jobs.context import StepContext
from envrestore.pipelines.readahead import STAGE_READAHEAD, read_ahead
from envrestore.pipelines.sources.base import PartRef
from envrestore.pipelines.streams import StreamMeter, rate_limited


class PartStream:
    """A part read from the object store, metered; `verdict()` checks size and sha256."""

    def __init__(self, ctx: StepContext, ref: PartRef, *, max_output: int) -> None:
        self.ctx = ctx
        self.ref = ref
        self.max_output = max_output
        self._counted = 0
        self.meter = StreamMeter(on_progress=self._count)

    def _count(self, done: int) -> None:
        """Add this stream's new bytes to the step's progress: a step reading several
        parts at once (verify, in place) counts their sum against the sum of their
        sizes, instead of each stream overwriting the other's numbers."""
        self.ctx.progress.advance(done - self._counted)
        self._counted = done

    def raw(self) -> AsyncIterator[bytes]:
        """The compressed bytes as stored, counted against the compressed size.

        Downloaded and hashed a few MiB ahead of the reader (the inflater), so the
        network and hashlib work while the next stages do."""
        if self.ctx.progress.total is None:
            self.ctx.progress.set(0, self.ref.size)
        source = self.ctx.store.get_stream(self.ref.key)
        metered = self.meter.wrap(
            self._pausable(rate_limited(source, self.ctx.settings.stream_rate_limit))
        )
        return read_ahead(metered, STAGE_READAHEAD)

    async def _pausable(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Tests can pause a step here, after its first chunk, to kill it mid-stream."""
        first = True
        async for chunk in chunks:
            yield chunk
            if first:
                first = False
                await failpoint(self.ctx.settings, f"{self.ctx.step}.mid_stream")

    def verdict(self) -> dict[str, Any]:
        """Raise IntegrityError unless what was read is exactly what the manifest promises."""
        if self.meter.size != self.ref.size or self.meter.sha256 != self.ref.sha256:
            raise IntegrityError(
                f"verify failed for the {self.ref.part} part ({self.ref.key}): read "
                f"{self.meter.size} bytes with sha256 {self.meter.sha256[:16]}…, the manifest "
                f"says {self.ref.size} bytes with sha256 {self.ref.sha256[:16]}…; the object "
                "was changed or damaged — restore another backup, or give the part again",
                part=self.ref.part,
                key=self.ref.key,
            )
        return {"part": self.ref.part, "bytes": self.meter.size, "sha256": self.meter.sha256}


async def drain(chunks: AsyncIterator[bytes]) -> None:
    async for _ in chunks:
        pass


def spool_dir(ctx: StepContext) -> Path:
    """Where a zip part is spooled to disk (a zip is read from its end): an unnamed
    temporary file under the state directory, gone when closed or on a crash."""
    path = ctx.settings.state_dir / "spool"
    path.mkdir(parents=True, exist_ok=True)
    return path
