"""URL rewriting on MariaDB/MySQL through the `mariadb` client, as the engines talk to it.

The project adds no MariaDB driver (`pipelines/engines/mariadb.py`), so each batch
is one client run: a SELECT whose every value comes back as HEX() (bytes intact
through the client's batch escaping), then one script of UPDATEs in a
transaction. Values go back as hex literals (`_utf8mb4 X'…'`, `X'…'`), which no
content or sql_mode can turn into SQL; identifiers from the catalog are quoted
with backticks doubled. Reads and writes are separate sessions: this is meant for
a shadow database nobody else writes to.

Text is read converted to utf8mb4 (what WordPress's connection sees, so `s:N:`
lengths match) and compared with utf8mb4_bin, as Python compares bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from dataclasses import dataclass

import structlog

from envrestore.pipelines.dsn import Dsn
from envrestore.pipelines.engines.mariadb import MariaDbEngine, quote_identifier
from envrestore.pipelines.engines.mariadb_sql import server_reason
from envrestore.pipelines.errors import EnvrestoreError, PermanentError
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
from envrestore.pipelines.streams import classify_failure

log = structlog.get_logger(__name__)

_q = quote_identifier
#: The client accepts rows and statements up to this; the server's own limit is read.
_CLIENT_PACKET = 1 << 30
_TEXT_TYPES = {"char", "varchar", "tinytext", "text", "mediumtext", "longtext", "json"}
_BINARY_TYPES = {"varbinary", "tinyblob", "blob", "mediumblob", "longblob"}
_KEY_STYLES = {
    **dict.fromkeys(("tinyint", "smallint", "mediumint", "int", "bigint", "decimal"), "number"),
    **dict.fromkeys(("date", "datetime", "timestamp", "time", "year"), "temporal"),
    **dict.fromkeys(("char", "varchar", "tinytext", "text", "mediumtext", "longtext"), "text"),
    **dict.fromkeys(("binary", *_BINARY_TYPES), "binary"),
}
_KEY_TEXT_FORMS = {"number": re.compile(r"-?\d+(?:\.\d+)?"), "temporal": re.compile(r"[0-9:. -]+")}
_CHARSET = re.compile(r"[A-Za-z0-9_]+")

_CATALOG = """
SELECT 'T', HEX(t.table_name), (SELECT COUNT(*) FROM information_schema.triggers g
  WHERE g.event_object_schema = t.table_schema AND g.event_object_table = t.table_name)
FROM information_schema.tables t
WHERE t.table_schema = DATABASE() AND t.table_type = 'BASE TABLE' ORDER BY t.table_name;
SELECT 'C', HEX(table_name), HEX(column_name), data_type, IFNULL(character_maximum_length, ''),
  IFNULL(character_octet_length, ''), IFNULL(character_set_name, ''), is_nullable, is_generated
FROM information_schema.columns WHERE table_schema = DATABASE()
ORDER BY table_name, ordinal_position;
SELECT 'K', HEX(table_name), HEX(index_name), non_unique, HEX(column_name)
FROM information_schema.statistics WHERE table_schema = DATABASE()
ORDER BY table_name, index_name, seq_in_index;
SELECT 'P', @@max_allowed_packet;
"""


def _name(hexed: str) -> str:
    return bytes.fromhex(hexed).decode("utf-8")


@dataclass(frozen=True)
class _KeyColumn:
    name: str
    style: str  # number | temporal | text | binary
    charset: str

    def select(self) -> str:
        if self.style in ("number", "temporal"):
            return f"CAST({_q(self.name)} AS CHAR)"
        return f"HEX({_q(self.name)})"

    def literal(self, raw: str) -> str:
        """A key value read by `select` as SQL that cannot be anything but that value."""
        form = _KEY_TEXT_FORMS.get(self.style)
        if form is not None:
            if not form.fullmatch(raw):
                raise PermanentError(f"unexpected key value {raw[:40]!r} in {self.name!r}")
            return raw if self.style == "number" else f"'{raw}'"
        bytes.fromhex(raw)  # checked hex
        return f"_{self.charset} X'{raw}'" if self.style == "text" else f"X'{raw}'"


@dataclass
class _Table:
    name: str
    triggers: bool
    columns: list[Column]
    key: list[_KeyColumn] | None = None
    skipped: SkipReason | None = None


class MariaDbRewriter:
    """One database, table by table, batch by batch."""

    def __init__(self, dsn: Dsn, settings: RewriteSettings) -> None:
        self.dsn = dsn
        self.settings = settings
        self.engine = MariaDbEngine(bin_dir=settings.mariadb_bin_dir)
        self.statement_limit = 8 << 20  # set from the server's max_allowed_packet by run()

    async def client(self, script: str) -> list[list[str]]:
        """Run a script in one session; the rows it prints, all kept (bounded by the batch)."""
        argv = self.engine.client_argv(
            self.dsn, "--batch", "--skip-column-names", f"--max-allowed-packet={_CLIENT_PACKET}"
        )
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **self.engine.environment(self.dsn)},
        )
        try:
            out, err = await proc.communicate(script.encode("utf-8"))
        finally:
            if proc.returncode is None:  # cancelled: leave no client behind
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if proc.returncode != 0:
            raise self._error(proc.returncode or 1, err.decode("utf-8", "replace"))
        return [line.split("\t") for line in out.decode("utf-8", "replace").splitlines()]

    def _error(self, returncode: int, stderr: str) -> EnvrestoreError:
        for secret in self.engine.secrets(self.dsn):
            stderr = stderr.replace(secret, "***")
        reason, data = server_reason(stderr)
        cls = classify_failure(returncode, stderr[-2000:])
        where = self.dsn.socket or f"{self.dsn.host}:{self.dsn.port}"
        return cls(
            f"rewriting URLs in database {self.dsn.database!r} on MariaDB at {where} "
            f"failed: {reason}",
            dsn=self.dsn.masked(),
            database=self.dsn.database,
            **data,
        )

    async def run(self, replacer: Replacer, on_progress: ProgressCallback | None) -> RewriteReport:
        report = RewriteReport(engine="mariadb", database=self.dsn.database)
        tables, packet = await self._catalog()
        # A value travels as hex (twice its size) in one row or statement under the
        # server's max_allowed_packet; larger ones are reported, not fetched.
        value_limit = min(self.settings.limits.max_bytes, max(0, packet - (1 << 20)) // 2)
        self.statement_limit = max(0, packet - (64 << 10)) // 2
        for table in tables:
            table_report = TableReport(
                table=table.name,
                key=tuple(k.name for k in table.key or ()),
                columns=tuple(c.name for c in table.columns),
            )
            report.tables.append(table_report)
            if table.skipped is not None:
                table_report.skipped = table.skipped
                log.warning("rewrite.table_skipped", table=table.name, reason=table.skipped)
                continue
            await self._table(table, table_report, replacer, value_limit, report, on_progress)
            log.info("rewrite.table", engine="mariadb", **vars(table_report))
        return report

    async def _catalog(self) -> tuple[list[_Table], int]:
        rows = await self.client(_CATALOG)
        tables: dict[str, _Table] = {}
        not_null: dict[str, set[str]] = {}
        kinds: dict[tuple[str, str], tuple[str, str]] = {}
        keys: dict[str, dict[str, tuple[bool, list[str]]]] = {}
        packet = 16 << 20
        for row in rows:
            tag = row[0]
            if tag == "T":
                name = _name(row[1])
                tables[name] = _Table(name, int(row[2]) > 0, [])
            elif tag == "C" and _name(row[1]) in tables:
                table, column = tables[_name(row[1])], _name(row[2])
                data_type, max_chars, max_bytes, charset, nullable, generated = row[3:9]
                kinds[(table.name, column)] = (data_type, charset)
                if nullable == "NO":
                    not_null.setdefault(table.name, set()).add(column)
                if generated != "NEVER" or data_type not in _TEXT_TYPES | _BINARY_TYPES:
                    continue
                binary = data_type in _BINARY_TYPES
                utf8 = charset.startswith("utf8")
                table.columns.append(
                    Column(
                        column,
                        binary=binary,
                        type_name=data_type,
                        max_chars=int(max_chars) if max_chars and not binary else None,
                        max_bytes=int(max_bytes) if max_bytes and (binary or utf8) else None,
                    )
                )
            elif tag == "K" and _name(row[1]) in tables:
                entry = keys.setdefault(_name(row[1]), {}).setdefault(
                    _name(row[2]), (_name(row[2]) == "PRIMARY", [])
                )
                if row[3] == "0":
                    entry[1].append(_name(row[4]))
            elif tag == "P":
                packet = int(row[1])
        for table in tables.values():
            unique = [(n, p, cols) for n, (p, cols) in keys.get(table.name, {}).items() if cols]
            chosen = choose_key(unique, not_null.get(table.name, set()))
            self._settle(table, chosen, kinds)
        return list(tables.values()), packet

    def _settle(
        self,
        table: _Table,
        chosen: tuple[str, ...] | None,
        kinds: dict[tuple[str, str], tuple[str, str]],
    ) -> None:
        """The key's columns and why the table is skipped, if it is."""
        if chosen is not None:
            key: list[_KeyColumn] = []
            for name in chosen:
                data_type, charset = kinds[(table.name, name)]
                style = _KEY_STYLES.get(data_type)
                if style is None or (style == "text" and not _CHARSET.fullmatch(charset)):
                    table.skipped = "unsupported_key"
                    break
                key.append(_KeyColumn(name, style, charset))
            table.key = key
        table.columns = [c for c in table.columns if c.name not in (chosen or ())]
        if table.skipped is not None:
            return
        if chosen is None:
            table.skipped = "no_primary_key"
        elif table.triggers and not self.settings.rewrite_tables_with_triggers:
            table.skipped = "has_triggers"
        elif not table.columns:
            table.skipped = "no_text_columns"

    async def _table(
        self,
        table: _Table,
        report: TableReport,
        replacer: Replacer,
        value_limit: int,
        whole: RewriteReport,
        on_progress: ProgressCallback | None,
    ) -> None:
        assert table.key is not None
        olds = list(replacer.table)
        inline = self.settings.inline_bytes(len(table.columns), value_limit)
        cells, matches = [], []
        for column in table.columns:
            col = _q(column.name)
            if column.binary:
                read, match = col, " OR ".join(f"INSTR({col}, X'{o.hex()}') > 0" for o in olds)
            else:
                read = f"CONVERT({col} USING utf8mb4)"
                match = " OR ".join(
                    f"INSTR({read} COLLATE utf8mb4_bin, _utf8mb4 X'{o.hex()}' COLLATE utf8mb4_bin)"
                    " > 0"
                    for o in olds
                )
            matches.append(f"({match})")
            cells.append(
                f"CASE WHEN {col} IS NULL OR NOT ({match}) THEN '' "
                f"WHEN OCTET_LENGTH({read}) > {inline} THEN CONCAT('B', OCTET_LENGTH({read})) "
                f"ELSE CONCAT('V', HEX({read})) END"
            )
        keys = [k.select() for k in table.key]
        order = ", ".join(_q(k.name) for k in table.key)
        head = f"SELECT {', '.join(keys + cells)} FROM {_q(table.name)} WHERE ("
        tail = f") ORDER BY {order} LIMIT {self.settings.batch_size};"
        after: list[str] | None = None
        while True:
            where = " OR ".join(matches)
            if after is not None:
                where = f"({self._after(table.key, after)}) AND ({where})"
            rows = await self.client(head + where + tail)
            statements: list[str] = []
            size = 0
            for row in rows:
                raw_key, values = row[: len(keys)], row[len(keys) :]
                found = await self._values(table, raw_key, values, report, value_limit)
                changes = rewrite_row(
                    report, found, replacer, self.settings.limits, self.statement_limit
                )
                for column, value in changes:
                    statements.append(self._update(table, raw_key, column, value))
                    size += len(statements[-1])
                after = raw_key
                if size > self.settings.batch_bytes:  # keep the script's memory bounded
                    await self._write(statements)
                    statements, size = [], 0
            await self._write(statements)
            if on_progress is not None:
                on_progress(whole.rows_scanned)
            if len(rows) < self.settings.batch_size:
                return

    async def _write(self, statements: list[str]) -> None:
        """One transaction: a batch's updates, unless they exceeded `batch_bytes`."""
        if statements:
            await self.client(
                "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION';\n"
                "START TRANSACTION;\n" + "".join(statements) + "COMMIT;\n"
            )

    async def _values(
        self,
        table: _Table,
        raw_key: list[str],
        values: list[str],
        report: TableReport,
        value_limit: int,
    ) -> list[tuple[Column, bytes]]:
        """The row's candidate values as bytes; big ones fetched alone, too big ones counted."""
        found: list[tuple[Column, bytes]] = []
        for column, cell in zip(table.columns, values, strict=True):
            if cell.startswith("V"):
                found.append((column, bytes.fromhex(cell[1:])))
            elif cell.startswith("B"):
                if int(cell[1:]) > value_limit:
                    report.values_skipped_too_large += 1
                    continue
                col = _q(column.name)
                read = col if column.binary else f"CONVERT({col} USING utf8mb4)"
                rows = await self.client(
                    f"SELECT HEX({read}) FROM {_q(table.name)} WHERE {self._equal(table, raw_key)};"
                )
                if rows:
                    found.append((column, bytes.fromhex(rows[0][0])))
        return found

    @staticmethod
    def _equal(table: _Table, raw_key: list[str]) -> str:
        assert table.key is not None
        return " AND ".join(
            f"{_q(k.name)} = {k.literal(v)}" for k, v in zip(table.key, raw_key, strict=True)
        )

    @staticmethod
    def _after(key: list[_KeyColumn], raw_key: list[str]) -> str:
        """Keyset condition `(k1, k2) > (v1, v2)`, spelled out so any version uses the index."""
        terms = []
        for i, column in enumerate(key):
            equal = [f"{_q(k.name)} = {k.literal(raw_key[j])}" for j, k in enumerate(key[:i])]
            greater = f"{_q(column.name)} > {column.literal(raw_key[i])}"
            terms.append("(" + " AND ".join([*equal, greater]) + ")")
        return " OR ".join(terms)

    def _update(self, table: _Table, raw_key: list[str], column: Column, value: bytes) -> str:
        literal = f"X'{value.hex()}'" if column.binary else f"_utf8mb4 X'{value.hex()}'"
        return (
            f"UPDATE {_q(table.name)} SET {_q(column.name)} = {literal} "
            f"WHERE {self._equal(table, raw_key)};\n"
        )
