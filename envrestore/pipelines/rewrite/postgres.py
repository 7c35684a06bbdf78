"""URL rewriting on PostgreSQL through asyncpg, as the engines connect.

Each batch is one transaction: the next rows by key that hold an old form are
read `FOR UPDATE`, rewritten, and updated by key, so a batch is all or nothing
and a concurrent writer cannot be overwritten. Values are parameters; schema,
table and column names from the catalog are quoted with `"` doubled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog

from envrestore.pipelines.dsn import Dsn
from envrestore.pipelines.engines.postgres import PostgresEngine, quote_identifier
from envrestore.pipelines.errors import EnvrestoreError, PermanentError, TransientError
from envrestore.pipelines.rewrite.model import (
    Column,
    ProgressCallback,
    RewriteReport,
    RewriteSettings,
    SkipReason,
    TableReport,
    choose_key,
    rewrite_row,
)
from envrestore.pipelines.rewrite.values import Replacer

log = structlog.get_logger(__name__)

_q = quote_identifier
_TEXT_TYPES = {"text", "varchar", "bpchar", "json", "jsonb"}

_TABLES = """
SELECT c.oid, n.nspname, c.relname,
       EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t
               WHERE t.tgrelid = c.oid AND NOT t.tgisinternal)
       OR EXISTS (SELECT 1 FROM pg_catalog.pg_rewrite r
                  WHERE r.ev_class = c.oid AND r.rulename <> '_RETURN') AS guarded
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p')
  AND NOT c.relispartition
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%'
  AND n.nspname NOT LIKE 'pg\\_temp\\_%'
ORDER BY 2, 3
"""
_COLUMNS = """
SELECT a.attrelid, a.attname, a.attnotnull, a.attgenerated <> '' AS generated,
       COALESCE(bt.typname, t.typname) AS typname,
       CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END AS typmod, a.attnum
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_catalog.pg_type bt ON t.typtype = 'd' AND bt.oid = t.typbasetype
WHERE a.attrelid = ANY($1::oid[]) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum
"""
_KEYS = """
SELECT i.indrelid, ic.relname, i.indisprimary, i.indkey::int2[] AS cols, i.indnkeyatts
FROM pg_catalog.pg_index i
JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
WHERE i.indrelid = ANY($1::oid[]) AND i.indisunique AND i.indisvalid
  AND i.indpred IS NULL AND i.indexprs IS NULL
"""


@dataclass
class _Table:
    schema: str
    name: str
    guarded: bool
    columns: list[Column] = field(default_factory=list)
    key: tuple[str, ...] | None = None
    skipped: SkipReason | None = None

    @property
    def shown(self) -> str:
        return self.name if self.schema == "public" else f"{self.schema}.{self.name}"

    @property
    def quoted(self) -> str:
        return f"{_q(self.schema)}.{_q(self.name)}"


class _Params:
    """`$n` placeholders handed out as values are added."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def add(self, value: Any, cast: str = "") -> str:
        self.values.append(value)
        return f"${len(self.values)}{cast}"


class PostgresRewriter:
    """One database, table by table, batch by batch."""

    def __init__(self, dsn: Dsn, settings: RewriteSettings) -> None:
        self.dsn = dsn
        self.settings = settings
        self.engine = PostgresEngine(bin_dir=settings.pg_bin_dir)

    async def run(self, replacer: Replacer, on_progress: ProgressCallback | None) -> RewriteReport:
        report = RewriteReport(engine="postgresql", database=self.dsn.database)
        conn = await self.engine.connect(self.dsn)
        try:
            for table in await self._catalog(conn):
                table_report = TableReport(
                    table=table.shown,
                    key=table.key or (),
                    columns=tuple(c.name for c in table.columns),
                    skipped=table.skipped,
                )
                report.tables.append(table_report)
                if table.skipped is not None:
                    log.warning("rewrite.table_skipped", table=table.shown, reason=table.skipped)
                    continue
                await self._table(conn, table, table_report, replacer, report, on_progress)
                log.info("rewrite.table", engine="postgresql", **vars(table_report))
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise self._error(exc) from exc
        finally:
            await conn.close()
        return report

    def _error(self, exc: Exception) -> EnvrestoreError:
        """Lost connections are retried; anything the server refused is not."""
        transient = isinstance(
            exc,
            OSError
            | asyncpg.InterfaceError
            | asyncpg.ConnectionDoesNotExistError
            | asyncpg.DeadlockDetectedError
            | asyncpg.SerializationError
            | asyncpg.LockNotAvailableError,
        )
        cls: type[EnvrestoreError] = TransientError if transient else PermanentError
        where = self.dsn.socket or f"{self.dsn.host}:{self.dsn.port}"
        return cls(
            f"rewriting URLs in database {self.dsn.database!r} on PostgreSQL at {where} "
            f"failed: {exc}",
            dsn=self.dsn.masked(),
            database=self.dsn.database,
        )

    async def _catalog(self, conn: asyncpg.Connection) -> list[_Table]:
        tables = {
            oid: _Table(schema, name, guarded)
            for oid, schema, name, guarded in await conn.fetch(_TABLES)
        }
        oids = list(tables)
        names: dict[tuple[int, int], str] = {}
        not_null: dict[int, set[str]] = {}
        for oid, name, notnull, generated, typname, typmod, attnum in await conn.fetch(
            _COLUMNS, oids
        ):
            names[(oid, attnum)] = name
            if notnull:
                not_null.setdefault(oid, set()).add(name)
            if generated or typname not in (*_TEXT_TYPES, "bytea"):
                continue
            limited = typname in ("varchar", "bpchar") and typmod >= 4
            tables[oid].columns.append(
                Column(
                    name,
                    binary=typname == "bytea",
                    type_name=typname,
                    max_chars=typmod - 4 if limited else None,
                )
            )
        keys: dict[int, list[tuple[str, bool, list[str]]]] = {}
        for oid, index, primary, cols, nkey in await conn.fetch(_KEYS, oids):
            columns = [names[(oid, n)] for n in list(cols)[:nkey] if (oid, n) in names]
            if len(columns) == nkey:
                keys.setdefault(oid, []).append((index, primary, columns))
        for oid, table in tables.items():
            table.key = choose_key(keys.get(oid, []), not_null.get(oid, set()))
            table.columns = [c for c in table.columns if c.name not in (table.key or ())]
            if table.key is None:
                table.skipped = "no_primary_key"
            elif table.guarded and not self.settings.rewrite_tables_with_triggers:
                table.skipped = "has_triggers"
            elif not table.columns:
                table.skipped = "no_text_columns"
        return list(tables.values())

    async def _table(
        self,
        conn: asyncpg.Connection,
        table: _Table,
        report: TableReport,
        replacer: Replacer,
        whole: RewriteReport,
        on_progress: ProgressCallback | None,
    ) -> None:
        assert table.key is not None
        key = ", ".join(_q(k) for k in table.key)
        after: Sequence[Any] | None = None
        while True:
            params = _Params()
            # Only parameters the query uses: PostgreSQL cannot type an unused one
            # (a table whose only searched column is bytea, like Drupal's `variable`).
            text_forms = (
                [params.add(o.decode(), "::text") for o in replacer.table]
                if any(not c.binary for c in table.columns)
                else []
            )
            byte_forms = (
                [params.add(o, "::bytea") for o in replacer.table]
                if any(c.binary for c in table.columns)
                else []
            )
            inline = self.settings.inline_bytes(len(table.columns), self.settings.limits.max_bytes)
            limit = params.add(inline, "::bigint")
            selects, matches = [], []
            for column in table.columns:
                col = _q(column.name)
                if column.binary:
                    read, match = (
                        col,
                        " OR ".join(f"position({p} in {col}) > 0" for p in byte_forms),
                    )
                else:
                    read = f"{col}::text"
                    match = " OR ".join(f"strpos({read}, {p}) > 0" for p in text_forms)
                matches.append(f"({match})")
                selects += [
                    f"CASE WHEN {match} THEN octet_length({read}) END",
                    f"CASE WHEN ({match}) AND octet_length({read}) <= {limit} THEN {read} END",
                ]
            where = " OR ".join(matches)
            if after is not None:
                keyset = ", ".join(params.add(v) for v in after)
                where = f"({key}) > ({keyset}) AND ({where})"
            sql = (
                f"SELECT {key}, {', '.join(selects)} FROM {table.quoted} WHERE {where} "
                f"ORDER BY {key} LIMIT {self.settings.batch_size} FOR UPDATE"
            )
            async with conn.transaction():
                rows = await conn.fetch(sql, *params.values)
                for row in rows:
                    values = list(row)
                    after = values[: len(table.key)]
                    cells = await self._cells(conn, table, after, values[len(table.key) :], report)
                    for column, new in rewrite_row(report, cells, replacer, self.settings.limits):
                        await self._update(conn, table, after, column, new)
            if on_progress is not None:
                on_progress(whole.rows_scanned)
            if len(rows) < self.settings.batch_size:
                return

    async def _cells(
        self,
        conn: asyncpg.Connection,
        table: _Table,
        key_values: Sequence[Any],
        values: list[Any],
        report: TableReport,
    ) -> list[tuple[Column, bytes]]:
        """The row's candidate values as bytes; big ones fetched alone, too big ones counted."""
        cells: list[tuple[Column, bytes]] = []
        for index, column in enumerate(table.columns):
            size, value = values[2 * index], values[2 * index + 1]
            if size is None:
                continue
            if value is None:
                if size > self.settings.limits.max_bytes:
                    report.values_skipped_too_large += 1
                    continue
                params = _Params()
                read = _q(column.name) if column.binary else f"{_q(column.name)}::text"
                where = self._equal(table, key_values, params)
                value = await conn.fetchval(
                    f"SELECT {read} FROM {table.quoted} WHERE {where}", *params.values
                )
                if value is None:
                    continue
            cells.append((column, bytes(value) if column.binary else value.encode("utf-8")))
        return cells

    @staticmethod
    def _equal(table: _Table, key_values: Sequence[Any], params: _Params) -> str:
        assert table.key is not None
        return " AND ".join(
            f"{_q(k)} = {params.add(v)}" for k, v in zip(table.key, key_values, strict=True)
        )

    async def _update(
        self,
        conn: asyncpg.Connection,
        table: _Table,
        key_values: Sequence[Any],
        column: Column,
        value: bytes,
    ) -> None:
        assert table.key is not None
        params = _Params()
        cast = f"::{column.type_name}" if column.type_name in ("json", "jsonb") else ""
        new = params.add(value if column.binary else value.decode("utf-8"), cast)
        where = self._equal(table, key_values, params)
        await conn.execute(
            f"UPDATE {table.quoted} SET {_q(column.name)} = {new} WHERE {where}", *params.values
        )
