"""Statement filter for untrusted SQL dumps, on the restore's critical path.

`filter_dump` sits between gunzip and the engine's client: it passes a dump
through (normalising what real dump tools emit but a restore must not run:
the dump's own CREATE DATABASE/USE, DEFINERs, ownership and privileges,
newer collations) and raises `UnsafeInput`, naming the line, at the first
statement that could reach outside the target database or the server's
own files: client meta-commands, GRANT, file I/O, COPY … PROGRAM, …

Defence in depth, not the only defence: the restore should also connect as
a role that owns only the shadow database (no FILE/SUPER, not a superuser).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Mapping
from typing import Literal

import structlog

from envrestore.pipelines.errors import BadInput
from envrestore.pipelines.sqlsafety.ending import DumpEnding
from envrestore.pipelines.sqlsafety.lines import MAX_LINE, FilterReport, LineFilter, LineSplitter
from envrestore.pipelines.sqlsafety.mariadb import MariaDbFilter
from envrestore.pipelines.sqlsafety.mariadb_rules import DEFAULT_COLLATION_MAP
from envrestore.pipelines.sqlsafety.postgres import PostgresFilter
from envrestore.pipelines.sqlsafety.postgres_rules import DEFAULT_EXTENSIONS

__all__ = [
    "DEFAULT_COLLATION_MAP",
    "DEFAULT_EXTENSIONS",
    "MAX_LINE",
    "FilterReport",
    "check_dump",
    "filter_dump",
]

log = structlog.get_logger(__name__)

Engine = Literal["mariadb", "postgresql"]


def _make_filter(
    engine: str,
    report: FilterReport,
    collation_map: Mapping[str, str] | None,
    extensions: Collection[str] | None,
) -> LineFilter:
    if engine in ("mariadb", "mysql"):
        return MariaDbFilter(report, collation_map)
    if engine in ("postgresql", "postgres"):
        return PostgresFilter(report, DEFAULT_EXTENSIONS if extensions is None else extensions)
    raise BadInput(f"no statement filter for engine {engine!r}; use 'mariadb' or 'postgresql'")


async def filter_dump(
    chunks: AsyncIterator[bytes],
    *,
    engine: Engine,
    report: FilterReport | None = None,
    collation_map: Mapping[str, str] | None = None,
    extensions: Collection[str] | None = None,
    max_line: int = MAX_LINE,
    require_complete: bool = False,
    allow_incomplete: bool = False,
) -> AsyncIterator[bytes]:
    """Yield the dump, checked and normalised; raise UnsafeInput at the first unsafe line.

    Output comes in blocks of whole lines (about one per input chunk). Because
    the filter raises mid-stream, the consumer must treat an exception as
    "import nothing": the restore imports into a shadow database for that reason.
    `collation_map` (MariaDB) maps source collations to ones the target has;
    `extensions` (PostgreSQL) lists the extensions a dump may create.
    `require_complete` (restores) refuses, at the end, a dump that creates no table
    or lacks its dump tool's closing line; `allow_incomplete` accepts the latter,
    noted in the report.
    """
    report = report if report is not None else FilterReport()
    line_filter = _make_filter(engine, report, collation_map, extensions)
    splitter = LineSplitter(max_line)
    ending = DumpEnding(engine)
    async for chunk in chunks:
        report.bytes_in += len(chunk)
        block = splitter.feed(chunk)
        if block:
            ending.feed(block)
            out = line_filter.feed_block(block)
            report.bytes_out += len(out)
            if out:
                yield out
    tail = splitter.finish()
    if tail:
        ending.feed(tail)
        out = line_filter.feed_block(tail)
        report.bytes_out += len(out)
        if out:
            yield out
    line_filter.finish()
    if require_complete:
        ending.check(report, allow_incomplete=allow_incomplete)
    log.info(
        "sqlsafety.filtered",
        engine=engine,
        lines=report.lines,
        statements=report.statements,
        bytes=report.bytes_in,
        normalised=report.normalised,
    )


async def check_dump(
    chunks: AsyncIterator[bytes],
    *,
    engine: Engine,
    collation_map: Mapping[str, str] | None = None,
    extensions: Collection[str] | None = None,
    max_line: int = MAX_LINE,
) -> FilterReport:
    """Read a whole dump through the filter (the verify step), returning what it saw."""
    report = FilterReport()
    async for _ in filter_dump(
        chunks,
        engine=engine,
        report=report,
        collation_map=collation_map,
        extensions=extensions,
        max_line=max_line,
    ):
        pass
    return report
