"""A database part as the clients get it: format named, decompressed, filtered, complete.

One chain for the import (shadow mode) and the full check before an in-place
wipe, so both refuse exactly the same dumps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from pipelines.jobs.context import StepContext
from pipelines.restore.parts import PartStream
from pipelines.restore.request import request_of
from pipelines.sqlsafety import FilterReport, filter_dump
from pipelines.sqlsafety.sniff import decompress_dump


def checked_dump(
    ctx: StepContext, stream: PartStream, *, engine: str, report: FilterReport
) -> AsyncIterator[bytes]:
    """The dump's statements, checked and normalised; raises at the first refusal,
    or at the end when the dump creates no table or was cut short."""
    plain = decompress_dump(
        stream.raw(), key=stream.ref.key, max_output=stream.max_output, engine=engine
    )
    return filter_dump(
        plain,
        engine=engine,  # type: ignore[arg-type]
        report=report,
        max_line=ctx.settings.sql_max_line_mb << 20,
        require_complete=True,
        allow_incomplete=request_of(ctx).allow_incomplete_dump,
    )
