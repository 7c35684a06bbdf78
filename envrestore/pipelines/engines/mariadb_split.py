"""The two-connection MariaDB import: one mysqldump stream fed to two client sessions.

PERFORMANCE.md: splitting the big tables' INSERTs over two sessions loads a
dump ~1.36x faster on 2 cores. The split must give exactly what one session
would: same rows, triggers not fired by dumped rows, no deadlock. `Splitter`
routes the lines; `MariaDbShadow._import_split` runs the two clients.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

from envrestore.pipelines.engines.mariadb import quote_identifier

_q = quote_identifier

#: Shadow-local table through which the two import sessions wait for each other.
SYNC_TABLE = "__envrestore_import_sync"
#: A table's INSERTs stay on the first connection until its block is this large.
SPLIT_AFTER_BYTES = 4 << 20
_FLUSH_BYTES = 256 << 10
_INSERT_RE = re.compile(rb"^INSERT INTO `((?:[^`]|``)+)` VALUES\b")
_SESSION_RE = re.compile(rb"^(?:/\*!\d+ )?SET\b[^\n]*;\r?\n?$|^/\*M!999999\\- enable the sandbox")
_LOCK_RE = re.compile(rb"^(?:LOCK TABLES\b[^\n]*WRITE|UNLOCK TABLES);\r?\n?$")
_DELIMITER_RE = re.compile(rb"^DELIMITER\s+(\S+)")


class Splitter:
    """Routes a mysqldump stream to two sessions, byte-balanced, in dump order per table.

    Expects mysqldump/mariadb-dump text: no raw newline inside a string literal
    (they write `\\n`), so a line ending in `;` ends an INSERT. Everything goes
    to the first session (A) except the INSERT statements of a table whose
    block has grown past SPLIT_AFTER_BYTES: those alternate so both sessions carry
    as many bytes. Two waits keep the result identical to one session: B waits
    until A has run the statements before the block (CREATE TABLE), and A waits
    until B has run its INSERTs before A's next statement (a trigger must not fire
    on dumped rows). Session settings (SET lines) go to both; LOCK TABLES lines are
    dropped (A's WRITE lock would block B). Anything unusual stays on A.
    """

    def __init__(self, database: str) -> None:
        self.sync = f"{_q(database)}.{_q(SYNC_TABLE)}".encode()
        self.out: tuple[bytearray, bytearray] = (bytearray(), bytearray())
        self.sent = [0, 0]
        self.queues: tuple[asyncio.Queue[bytes | None], asyncio.Queue[bytes | None]] = (
            asyncio.Queue(4),
            asyncio.Queue(4),
        )
        self.delimiter = b";"
        self.at_boundary = True
        self.block_table: bytes | None = None
        self.block_bytes = 0
        self.block_signal = 0
        self.b_waited = False
        self.b_dirty = False
        #: A has not finished its first INSERT of the block yet: B must not start.
        self.first_pending = False
        self.signals = 0
        self.insert_dest: int | None = None
        #: How an INSERT's last row line ends (`;\r\n` when the dump has CRLF lines).
        self.statement_end = b";\n"

    async def emit(self, dest: int, data: bytes, *, flush: bool = False) -> None:
        self.sent[dest] += len(data)
        if len(data) >= _FLUSH_BYTES:
            await self.flush(dest)  # big slices go as they are, without a copy
            await self.queues[dest].put(data)
            return
        self.out[dest].extend(data)
        if flush or len(self.out[dest]) >= _FLUSH_BYTES:
            await self.flush(dest)

    async def flush(self, dest: int) -> None:
        if self.out[dest]:
            await self.queues[dest].put(bytes(self.out[dest]))
            self.out[dest].clear()

    def signal_sql(self, number: int) -> bytes:
        return b"INSERT INTO %s VALUES (%d); COMMIT;\n" % (self.sync, number)

    def wait_sql(self, number: int, delimiter: bytes) -> bytes:
        return (
            b"DELIMITER //\nBEGIN NOT ATOMIC WHILE NOT EXISTS (SELECT 1 FROM %s WHERE id = %d) "
            b"DO DO SLEEP(0.002); END WHILE; END//\nDELIMITER %s\n"
        ) % (self.sync, number, delimiter)

    async def inserted(self, dest: int) -> None:
        """An INSERT statement ended; A's first of a block lets B start on the table.

        Not before: MariaDB 10.6+ loads an INSERT into an *empty* table (with the
        dump's unique/foreign key checks off) under a table X lock, so two sessions
        starting on the same empty table deadlock (ERROR 1213).
        """
        if dest == 0 and self.first_pending:
            self.first_pending = False
            await self.emit(0, self.signal_sql(self.block_signal), flush=True)

    async def end_block(self) -> None:
        """A takes over again: if B carried part of the block, A waits for B to finish it."""
        if self.first_pending:
            self.first_pending = False
            await self.emit(0, self.signal_sql(self.block_signal), flush=True)
        if self.b_dirty:
            self.signals += 1
            await self.emit(1, self.signal_sql(self.signals), flush=True)
            await self.emit(0, self.wait_sql(self.signals, self.delimiter))
            self.b_dirty = False
        self.block_table = None

    async def line(self, line: bytes) -> None:
        if self.insert_dest is not None:
            # Inside a multi-row INSERT (mariadb-dump writes one row per line).
            self.block_bytes += len(line)
            dest = self.insert_dest
            await self.emit(dest, line)
            if line.rstrip().endswith(b";"):
                self.insert_dest = None
                await self.inserted(dest)
            return
        insert = _INSERT_RE.match(line) if self.at_boundary and self.delimiter == b";" else None
        if insert is not None:
            table = insert.group(1)
            if table != self.block_table:
                await self.end_block()
                self.signals += 1
                self.block_table, self.block_bytes = table, 0
                self.block_signal, self.b_waited = self.signals, False
                self.first_pending = True
            self.block_bytes += len(line)
            if line.endswith(b"\r\n"):
                self.statement_end = b";\r\n"
            dest = 0
            if (
                not self.first_pending
                and self.block_bytes > SPLIT_AFTER_BYTES
                and self.sent[1] < self.sent[0]
            ):
                dest = 1
                if not self.b_waited:
                    await self.emit(1, self.wait_sql(self.block_signal, b";"))
                    self.b_waited = True
                self.b_dirty = True
            await self.emit(dest, line)
            if not line.rstrip().endswith(b";"):
                self.insert_dest = dest
            else:
                await self.inserted(dest)
            return
        stripped = line.strip()
        if self.block_table is not None and stripped and not stripped.startswith(b"--"):
            await self.end_block()
        if self.at_boundary and self.delimiter == b";" and _LOCK_RE.match(line):
            return
        if self.at_boundary and self.delimiter == b";" and _SESSION_RE.match(line):
            await self.emit(1, line)
        await self.emit(0, line)
        delimiter = _DELIMITER_RE.match(stripped) if self.at_boundary else None
        if delimiter is not None:
            self.delimiter = delimiter.group(1)
        elif stripped and not stripped.startswith((b"--", b"/*M!999999")):
            # `/*M!999999\- enable the sandbox mode */` is a client command, not SQL.
            self.at_boundary = stripped.endswith(self.delimiter)

    async def rows(self, data: bytes, start: int) -> int:
        """Forward the rows of the current INSERT from `data[start:]`; where to go on from."""
        assert self.insert_dest is not None
        end = data.find(self.statement_end, start)
        if end != -1:
            stop = end + len(self.statement_end)
            dest, self.insert_dest = self.insert_dest, None
        else:
            stop = data.rfind(b"\n", start) + 1  # whole lines only; 0: none complete yet
            if stop <= start:
                return start
            dest = self.insert_dest
        self.block_bytes += stop - start
        await self.emit(dest, data[start:stop])
        if self.insert_dest is None:
            await self.inserted(dest)
        return stop

    async def run(self, chunks: AsyncIterator[bytes]) -> None:
        header = b"SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED;\n"
        await self.emit(0, header)
        await self.emit(1, header)
        rest = b""
        async for chunk in chunks:
            data = rest + chunk if rest else chunk
            start = 0
            while True:
                if self.insert_dest is not None:
                    # Fast path: the rest of an INSERT goes as one slice, not line by line.
                    start = await self.rows(data, start)
                    if self.insert_dest is not None:
                        break
                end = data.find(b"\n", start)
                if end == -1:
                    break
                await self.line(data[start : end + 1])
                start = end + 1
            rest = data[start:]
        if rest:
            await self.line(rest + b"\n")
        await self.end_block()
        for dest in (0, 1):
            await self.flush(dest)
            await self.queues[dest].put(None)

    async def stream(self, dest: int) -> AsyncIterator[bytes]:
        while (item := await self.queues[dest].get()) is not None:
            yield item
