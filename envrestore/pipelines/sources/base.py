"""The shape every source has: it resolves to parts, and fetches their bytes into reach.

Restore, import and (next) clone differ only in where the parts come from. A
`Source` names one part's origin; `resolve` fixes what will be read and
checks it exists (no bytes moved), `fetch` makes the bytes readable from the
object store (a no-op for backups, a download into `staging/<job>/` for a URL)
and returns a `PartRef`. Every later step reads only the `PartRef`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

from envrestore.pipelines.archives.formats import codec_for_key

if TYPE_CHECKING:
    from envrestore.pipelines.archives.tarpolicy import ArchiveRules
    from envrestore.pipelines.jobs.context import StepContext

#: The codec of a part: fixed by our own naming for backups, found from the
#: bytes ("auto") for anything from outside.
AUTO = "auto"


@dataclass(frozen=True)
class PartRef:
    """One part, ready to read: where it is, what it must measure, how it is packed."""

    part: str
    key: str
    size: int
    sha256: str
    codec: str = AUTO

    @classmethod
    def from_outputs(cls, data: dict[str, Any]) -> PartRef:
        return cls(
            data["part"],
            data["key"],
            int(data["size"]),
            data["sha256"],
            data.get("codec") or codec_for_key(data["key"]),
        )

    def outputs(self) -> dict[str, Any]:
        return asdict(self)


class Source(Protocol):
    """Where one part of a content replacement comes from."""

    def describe(self) -> dict[str, Any]:
        """What the job's outputs and events say the part came from (no secrets)."""
        ...

    async def resolve(self, ctx: StepContext, element: str) -> dict[str, Any]:
        """Check the part can be had and fix what will be read; raise a permanent
        error for what no retry can fix. Moves no bytes."""
        ...

    async def fetch(self, ctx: StepContext, element: str, resolved: dict[str, Any]) -> PartRef:
        """Make the part readable from the object store and say where it is."""
        ...

    def archive_rules(self, element: str) -> ArchiveRules:
        """What the files or code archive must look like (its top folder)."""
        ...


async def counted(ctx: StepContext, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The step's progress for a stream of unknown length (the upload hashes it)."""
    done = 0
    async for chunk in chunks:
        done += len(chunk)
        ctx.progress.set(done)
        yield chunk
