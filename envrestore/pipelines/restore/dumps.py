"""A database part as the clients get it: format found, decompressed, filtered, complete.

One chain for the import (shadow mode) and the full check before an in-place
wipe, so both refuse exactly the same dumps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from envrestore.pipelines.archives.formats import open_dump
from envrestore.pipelines.jobs.context import StepContext
from envrestore.pipelines.restore.parts import PartStream, spool_dir
from envrestore.pipelines.restore.request import request_of
from envrestore.pipelines.sqlsafety import FilterReport, filter_dump


def checked_dump(
    ctx: StepContext, stream: PartStream, *, engine: str, report: FilterReport
) -> AsyncIterator[bytes]:
    """The dump's statements, checked and normalised; raises at the first refusal,
    or at the end when the dump creates no table or was cut short."""
    plain = open_dump(
        stream.raw(),
        codec=stream.ref.codec,  # type: ignore[arg-type]
        key=stream.ref.key,
        max_output=stream.max_output,
        engine=engine,
        spool_dir=spool_dir(ctx),
    )
    return filter_dump(
        plain,
        engine=engine,  # type: ignore[arg-type]
        report=report,
        max_line=ctx.settings.sql_max_line_mb << 20,
        require_complete=True,
        allow_incomplete=request_of(ctx).allow_incomplete_dump,
    )
