"""Settings, reports and the per-row step shared by the MariaDB and PostgreSQL rewriters."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from envrestore.config.settings import Settings
from envrestore.pipelines.rewrite.values import (
    DEFAULT_LIMITS,
    Limits,
    Replacer,
    ValueStats,
    rewrite_value,
)

#: Called after each batch with the rows scanned so far (all tables), for heartbeats.
ProgressCallback = Callable[[int], None]

#: Why a table was not rewritten at all.
SkipReason = Literal["no_primary_key", "unsupported_key", "has_triggers", "no_text_columns"]


@dataclass(frozen=True)
class RewriteSettings:
    """How a database is rewritten (not in `Settings`: no operator needs to tune it yet)."""

    #: rows fetched and updated per batch (one transaction each)
    batch_size: int = 500
    #: about the most value bytes a batch holds in memory: values larger than their
    #: share (batch_bytes / batch_size / columns) are fetched one at a time
    batch_bytes: int = 32 * 1024 * 1024
    limits: Limits = DEFAULT_LIMITS
    #: UPDATE fires a table's triggers (and PostgreSQL rules): code from the dump, run
    #: as the DSN's user. Such tables are skipped and reported unless this is set.
    rewrite_tables_with_triggers: bool = False
    mariadb_bin_dir: Path | None = None
    pg_bin_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.batch_bytes < 1:
            raise ValueError("batch_size and batch_bytes must be at least 1")

    def inline_bytes(self, columns: int, ceiling: int) -> int:
        """The largest value read with its batch; larger ones (up to `ceiling`) alone."""
        share = self.batch_bytes // (self.batch_size * max(1, columns))
        return min(ceiling, max(4096, share))

    @classmethod
    def from_settings(cls, settings: Settings, **changes: Any) -> RewriteSettings:
        """The engines' client locations from the project's settings."""
        base = cls(mariadb_bin_dir=settings.mariadb_bin_dir, pg_bin_dir=settings.pg_bin_dir)
        return dataclasses.replace(base, **changes)


@dataclass
class TableReport:
    """What happened to one table. A value both changed and partly skipped (a nested
    serialized string that did not parse) counts in both."""

    table: str
    #: the key the rows were read and updated by (primary key, else a NOT NULL unique key)
    key: tuple[str, ...] = ()
    #: the columns searched (text-like, not generated, not part of the key)
    columns: tuple[str, ...] = ()
    skipped: SkipReason | None = None
    #: rows read: those in which the server found an old form in a searched column
    rows_scanned: int = 0
    rows_changed: int = 0
    values_changed: int = 0
    #: values left (partly) unchanged because serialized data in them did not parse
    #: or was an unsafe `C:` payload
    values_skipped_unserializable: int = 0
    #: values larger than the limits (`Limits.max_bytes`, MariaDB's max_allowed_packet)
    values_skipped_too_large: int = 0
    #: rewritten values that would no longer fit the column (varchar(n), TEXT's 64 KiB)
    values_skipped_too_long: int = 0

    @property
    def values_skipped(self) -> int:
        return (
            self.values_skipped_unserializable
            + self.values_skipped_too_large
            + self.values_skipped_too_long
        )


@dataclass
class RewriteReport:
    """Per-table reports and their totals."""

    engine: str
    database: str
    tables: list[TableReport] = field(default_factory=list)

    def _sum(self, name: str) -> int:
        return sum(int(getattr(table, name)) for table in self.tables)

    @property
    def rows_scanned(self) -> int:
        return self._sum("rows_scanned")

    @property
    def rows_changed(self) -> int:
        return self._sum("rows_changed")

    @property
    def values_changed(self) -> int:
        return self._sum("values_changed")

    @property
    def values_skipped(self) -> int:
        return self._sum("values_skipped")

    @property
    def values_skipped_unserializable(self) -> int:
        return self._sum("values_skipped_unserializable")

    @property
    def skipped_tables(self) -> dict[str, str]:
        return {t.table: t.skipped for t in self.tables if t.skipped is not None}

    def table(self, name: str) -> TableReport:
        for report in self.tables:
            if report.table == name:
                return report
        raise KeyError(name)

    def totals(self) -> dict[str, Any]:
        """Totals for logs and job results."""
        return {
            "tables": len(self.tables),
            "rows_scanned": self.rows_scanned,
            "rows_changed": self.rows_changed,
            "values_changed": self.values_changed,
            "values_skipped": self.values_skipped,
            "values_skipped_unserializable": self.values_skipped_unserializable,
            "skipped_tables": self.skipped_tables,
        }


@dataclass(frozen=True)
class Column:
    """A searched column: how its values travel and how long they may be."""

    name: str
    #: bytes in and out (blobs, bytea); otherwise text, handled as UTF-8
    binary: bool = False
    #: the engine's type name (PostgreSQL writes json/jsonb with a cast)
    type_name: str = ""
    max_chars: int | None = None
    #: checked against the UTF-8 bytes of text (MariaDB utf8 columns, TEXT types) or the bytes
    max_bytes: int | None = None

    def fits(self, value: bytes) -> bool:
        if self.max_bytes is not None and len(value) > self.max_bytes:
            return False
        if self.max_chars is not None and not self.binary:
            return len(value.decode("utf-8", "surrogateescape")) <= self.max_chars
        return True


def rewrite_row(
    report: TableReport,
    cells: Sequence[tuple[Column, bytes]],
    replacer: Replacer,
    limits: Limits,
    max_new_bytes: int | None = None,
) -> list[tuple[Column, bytes]]:
    """The (column, new value) changes of one row; counts go into `report`.
    A new value over `max_new_bytes` (what one statement can carry) counts as too large."""
    report.rows_scanned += 1
    changes: list[tuple[Column, bytes]] = []
    for column, value in cells:
        stats = ValueStats()
        new, changed = rewrite_value(value, replacer, stats=stats, limits=limits)
        report.values_skipped_too_large += stats.skipped_too_large
        if stats.skipped_unserializable or stats.skipped_custom:
            report.values_skipped_unserializable += 1
        if not changed:
            continue
        if max_new_bytes is not None and len(new) > max_new_bytes:
            report.values_skipped_too_large += 1
            continue
        if not column.fits(new):
            report.values_skipped_too_long += 1
            continue
        changes.append((column, new))
    if changes:
        report.rows_changed += 1
        report.values_changed += len(changes)
    return changes


def choose_key(
    keys: Sequence[tuple[str, bool, Sequence[str]]], not_null: set[str]
) -> tuple[str, ...] | None:
    """The primary key, else the shortest unique key on NOT NULL columns (name order breaks
    ties), else None: a row that cannot be named cannot be updated safely.
    `keys` holds (name, is_primary, columns)."""
    primary = [cols for _, is_primary, cols in keys if is_primary]
    if primary:
        return tuple(primary[0])
    unique = sorted(
        (len(cols), name, tuple(cols))
        for name, _, cols in keys
        if cols and all(col in not_null for col in cols)
    )
    return unique[0][2] if unique else None
