"""No false success: a dump must create a table and end the way its tool ends it.

A gzip of an empty dump, or a dump cut short (an upload that stopped, a dump
tool that died), imports "successfully" and replaces the site's data with
nothing or with half of it. Both are caught here, while the dump streams, and
refused at its end, before the switch.
"""

from __future__ import annotations

import re

from envrestore.pipelines.errors import UnsafeInput
from envrestore.pipelines.sqlsafety.lines import FilterReport

#: What mysqldump/mariadb-dump and pg_dump write last (psql meta-lines may follow).
TRAILERS = {
    "mariadb": (b"-- Dump completed", "-- Dump completed"),
    "postgresql": (b"-- PostgreSQL database dump complete", "-- PostgreSQL database dump complete"),
}
_CREATE_TABLE = re.compile(
    rb"(?im)^[ \t]*(?:/\*!\d*[ \t]*)?CREATE[ \t]+(?:OR[ \t]+REPLACE[ \t]+)?"
    rb"(?:(?:GLOBAL|LOCAL)[ \t]+)?(?:TEMPORARY[ \t]+|UNLOGGED[ \t]+)?TABLE\b"
)
_KEEP_TAIL = 4096


class DumpEnding:
    """Watches blocks of whole lines for a CREATE TABLE and keeps the stream's tail."""

    def __init__(self, engine: str) -> None:
        self.engine = "mariadb" if engine in ("mariadb", "mysql") else "postgresql"
        self.creates_table = False
        self.tail = b""

    def feed(self, block: bytes) -> None:
        if not self.creates_table and _CREATE_TABLE.search(block) is not None:
            self.creates_table = True
        self.tail = (self.tail + block[-_KEEP_TAIL:])[-_KEEP_TAIL:]

    def complete(self) -> bool:
        """Whether the tool's closing line is among the last lines of the dump."""
        marker = TRAILERS[self.engine][0]
        lines = [line.strip() for line in self.tail.splitlines()]
        last = [line for line in lines if line and line != b"--"][-4:]
        return any(line.startswith(marker) for line in last)

    def check(self, report: FilterReport, *, allow_incomplete: bool) -> None:
        if not self.creates_table:
            raise UnsafeInput(
                "the dump creates no table: restoring it would replace the database with "
                "nothing (an empty or non-database file); nothing was changed",
                problem="no_table",
            )
        if self.complete():
            return
        trailer = TRAILERS[self.engine][1]
        if allow_incomplete:
            report.note(
                f"the dump has no closing '{trailer}' line; imported as it is "
                "(--allow-incomplete-dump)"
            )
            return
        raise UnsafeInput(
            f"the dump is truncated: it does not end with '{trailer}' as its dump tool ends "
            "it (an interrupted upload or dump); nothing was changed — give a complete dump "
            "(another backup), or pass --allow-incomplete-dump to import what there is",
            problem="truncated",
        )
