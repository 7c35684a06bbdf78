"""The parallel MariaDB import: one mysqldump stream fed to N client sessions.

PERFORMANCE.md: splitting the big tables' INSERTs over two sessions loads a
dump ~1.36x faster on 2 cores. The split must give exactly what one session
would: same rows, triggers not fired by dumped rows, no deadlock, and no text
run as SQL that the statement filter saw as a string literal. `Splitter` routes
the filtered stream; `mariadb_import` runs the clients.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

from envrestore.pipelines.engines.mariadb import quote_identifier
from envrestore.pipelines.engines.mariadb_lexer import ClientLexer
from envrestore.pipelines.errors import PermanentError

_q = quote_identifier

#: Shadow-local table through which the import sessions wait for each other.
SYNC_TABLE = "__envrestore_import_sync"
#: A table's INSERTs stay on the first session until its block is this large.
SPLIT_AFTER_BYTES = 4 << 20
_FLUSH_BYTES = 256 << 10
#: Slices waiting for each session (each at most ~1 MiB): memory stays bounded.
_QUEUE_ITEMS = 4
_INSERT_RE = re.compile(rb"INSERT INTO `((?:[^`\n]|``)+)` VALUES\b")
#: One SET statement alone on its line, no call in it (any case): maybe run by every session.
_SESSION_RE = re.compile(
    rb"(?i)[ \t]*(?:/\*!\d+ SET\b([^;(\n]*)\*/|SET\b([^;(\n]*))[ \t]*;[ \t\r]*\n?"
)
_QUOTED_RE = re.compile(rb"'[^'\\\n]*'")
_ASSIGNMENT_RE = re.compile(
    rb"(?i)\s*(?:NAMES\s+[\w']+(?:\s+COLLATE\s+[\w']+)?"
    rb"|(?:@[\w$.]+|(?:@@(?:SESSION\.|LOCAL\.)?|(?:SESSION|LOCAL)\s+)?([a-z_]+))"
    rb"\s*:?=\s*(?:@{0,2}[\w$.]+|''|-?\d+))\s*"
)
#: Session variables mysqldump and mariadb-dump set; each session must have them.
REPLAYED_VARIABLES = frozenset(
    {
        b"character_set_client",
        b"character_set_results",
        b"character_set_connection",
        b"collation_connection",
        b"time_zone",
        b"unique_checks",
        b"foreign_key_checks",
        b"sql_mode",
        b"sql_notes",
        b"check_constraint_checks",
        b"sql_quote_show_create",
    }
)
_LOCK_RE = re.compile(rb"(?:LOCK TABLES\b[^\n;]*WRITE|UNLOCK TABLES);[ \t\r]*\n?")
_SANDBOX_LINE = b"/*M!999999\\- enable the sandbox mode */"


def replayable(line: bytes) -> bool:
    """A SET line every session runs alike: user variables, and only the session
    variables mysqldump sets (REPLAYED_VARIABLES), to plain values (no call: it
    could have effects, run once per session)."""
    found = _SESSION_RE.fullmatch(line)
    if found is None:
        return False
    body = _QUOTED_RE.sub(b"''", found.group(1) if found.group(1) is not None else found.group(2))
    for part in body.split(b","):
        assignment = _ASSIGNMENT_RE.fullmatch(part)
        if assignment is None:
            return False
        variable = assignment.group(1)
        if variable is not None and variable.lower() not in REPLAYED_VARIABLES:
            return False
    return True


class Splitter:
    """Routes a mysqldump stream to `sessions` client sessions, in dump order per table.

    Only whole statements move, and only where `ClientLexer` proves the client
    would be between two statements. Everything goes to the first session (A)
    except the INSERT statements of a table whose block has grown past
    SPLIT_AFTER_BYTES: those go to the session that has carried the fewest bytes
    of the block. Two waits keep the result identical to one session: the others
    wait until A has run the block's first INSERT (after its CREATE TABLE), and A
    waits until every other session has run its INSERTs before A's next
    statement (a trigger must not fire on dumped rows; ALTERs, views, the next
    table come after). The session settings mysqldump writes (`replayable` SET
    lines) go to all; LOCK TABLES lines are dropped (A's WRITE lock would block
    the others). Any other statement that may change the session (another SET,
    a transaction, USE, PREPARE, CALL…) or a line the lexer cannot follow sends
    everything from there to A (`_to_one_session`); inside a statement already
    given to another session, the import stops instead.
    """

    def __init__(self, database: str, sessions: int = 2) -> None:
        if sessions < 2:
            raise ValueError(f"a split needs 2 sessions or more, not {sessions}")
        self.sessions = sessions
        self.sync = f"{_q(database)}.{_q(SYNC_TABLE)}".encode()
        self.out = [bytearray() for _ in range(sessions)]
        self.sent = [0] * sessions
        self.queues: list[asyncio.Queue[bytes | None]] = [
            asyncio.Queue(_QUEUE_ITEMS) for _ in range(sessions)
        ]
        self.lexer = ClientLexer()
        #: Everything goes to A: the lexer is lost, or the dump changed the session.
        self.serial = False
        self.block_table: bytes | None = None
        self.block_bytes = 0
        self.block_sent = [0] * sessions
        self.block_signal = 0
        self.waiting: set[int] = set()  # sessions told to wait for the block's first INSERT
        self.dirty: set[int] = set()  # sessions (not A) that carried INSERTs of the block
        #: A has not finished its first INSERT of the block yet: no other session may start.
        self.first_pending = False
        self.signals = 0
        self.insert_dest: int | None = None
        self.slow_insert = False  # the current INSERT is not plain rows: follow it line by line
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
        """An INSERT statement ended; A's first of a block lets the others start on the table.

        Not before: MariaDB 10.6+ loads an INSERT into an *empty* table (with the
        dump's unique/foreign key checks off) under a table X lock, so two sessions
        starting on the same empty table deadlock (ERROR 1213).
        """
        if dest == 0 and self.first_pending:
            self.first_pending = False
            await self.emit(0, self.signal_sql(self.block_signal), flush=True)

    async def end_block(self) -> None:
        """A takes over again: it waits for each session that carried part of the block."""
        self.first_pending = False  # nobody waits for a signal A never got to send
        for dest in sorted(self.dirty):
            self.signals += 1
            await self.emit(dest, self.signal_sql(self.signals), flush=True)
            await self.emit(0, self.wait_sql(self.signals, self.lexer.delimiter))
        self.dirty.clear()
        self.waiting.clear()
        self.block_table = None

    def unsplittable(self) -> PermanentError:
        return PermanentError(
            f"the dump has {self.lexer.lost} inside an INSERT statement that another import "
            "session was already running, so it cannot be split safely; the import stopped "
            "and nothing was changed. Import it over one session "
            "(ENVRESTORE_MARIADB_IMPORT_CONNECTIONS=1)",
            problem="unsplittable",
        )

    async def _lost(self, dest: int) -> None:
        """The lexer cannot follow the dump: from here on, everything goes to A."""
        if dest != 0 or self.dirty:
            raise self.unsplittable()
        self.serial = True
        self.insert_dest = None

    async def _to_one_session(self, dest: int) -> None:
        """The dump changed its session in a way the others cannot follow: A alone
        runs the rest (A has already waited for the others, see `line`).

        Why not replay it, or make the waits immune: autocommit off, an isolation
        level, a transaction the dump opens, a prepared statement, a USE or a charset
        cannot be shared by N sessions. Rows another session loads would commit
        apart from the dump's transaction (or never, once that session's rows sat
        in a transaction of their own), and the sync statements would run inside
        the dump's transaction: under REPEATABLE READ a wait never sees the signal,
        and a first INSERT into an empty table keeps its table lock until the
        dump's COMMIT while the other session waits on it. One session runs such a
        dump exactly as written.
        """
        if dest != 0 or self.dirty:  # a statement after an INSERT on its line
            raise PermanentError(
                "the dump changes its session inside an INSERT statement that another "
                "import session was already running, so it cannot be split safely; the "
                "import stopped and nothing was changed. Import it over one session "
                "(ENVRESTORE_MARIADB_IMPORT_CONNECTIONS=1)",
                problem="unsplittable",
            )
        self.serial = True
        self.insert_dest = None

    async def line(self, line: bytes) -> None:
        """One line at a statement boundary or inside a statement of A (not an INSERT's rows)."""
        lexer = self.lexer
        if self.serial:
            await self.emit(0, line)
            return
        if not (lexer.at_boundary and lexer.delimiter == b";"):
            before = lexer.session_statements
            lexer.line(line)
            if lexer.lost is not None:
                await self._lost(0)
            await self.emit(0, line)
            if lexer.session_statements != before:  # none is replayed from here
                await self._to_one_session(0)
            return
        insert = _INSERT_RE.match(line)
        if insert is not None:
            await self.insert_head(line, insert)
            return
        stripped = line.strip()
        if self.block_table is not None and stripped and not stripped.startswith(b"--"):
            await self.end_block()
        if stripped == _SANDBOX_LINE:  # a client command of MariaDB 11 dumps, for every session
            for dest in range(self.sessions):
                await self.emit(dest, line)
            return
        before = lexer.session_statements
        lexer.line(line)
        if lexer.lost is not None:
            await self._lost(0)
        elif lexer.at_boundary:  # the line holds whole statements: it can be moved or dropped
            if _LOCK_RE.fullmatch(line):
                return
            if replayable(line):
                for dest in range(1, self.sessions):
                    await self.emit(dest, line)
                await self.emit(0, line)
                return
        await self.emit(0, line)
        if lexer.session_statements != before:
            await self._to_one_session(0)

    async def insert_head(self, line: bytes, insert: re.Match[bytes]) -> None:
        """The first line of an INSERT statement: choose its session."""
        table = insert.group(1)
        if table != self.block_table:
            if self.block_table is not None:
                await self.end_block()
            self.signals += 1
            self.block_table, self.block_bytes = table, 0
            self.block_sent = [0] * self.sessions
            self.block_signal = self.signals
            self.first_pending = True
        self.block_bytes += len(line)
        if line.endswith(b"\r\n"):
            self.statement_end = b";\r\n"
        dest = 0
        if not self.first_pending and self.block_bytes > SPLIT_AFTER_BYTES:
            dest = min(range(self.sessions), key=self.block_sent.__getitem__)
            if dest != 0:
                if dest not in self.waiting:
                    await self.emit(dest, self.wait_sql(self.block_signal, b";"))
                    self.waiting.add(dest)
                self.dirty.add(dest)
        self.slow_insert = False
        if not self.lexer.rows(line, insert.end()):
            before = self.lexer.session_statements
            self.lexer.line(line)
            self.slow_insert = True
            if self.lexer.lost is not None:
                await self._lost(dest)
                await self.emit(0, line)
                return
            if self.lexer.session_statements != before:
                await self._to_one_session(dest)
                await self.emit(0, line)
                return
        self.block_sent[dest] += len(line)
        await self.emit(dest, line)
        if self.lexer.at_boundary:
            await self.inserted(dest)
        else:
            self.insert_dest = dest

    async def rows(self, data: bytes, start: int) -> int:
        """Forward the rows of the current INSERT from `data[start:]`; where to go on from."""
        dest = self.insert_dest
        assert dest is not None
        if not self.slow_insert:
            end = data.find(self.statement_end, start)
            if end != -1:
                stop = end + len(self.statement_end)
            else:
                stop = data.rfind(b"\n", start) + 1  # whole lines only; 0: none complete yet
                if stop <= start:
                    return start
            piece = data[start:stop]
            if self.lexer.rows(piece):
                await self._forward(dest, piece)
                return stop
            self.slow_insert = True  # not plain rows: the exact lexer, one line at a time
        end = data.find(b"\n", start)
        if end == -1:
            return start
        line = data[start : end + 1]
        before = self.lexer.session_statements
        self.lexer.line(line)
        if self.lexer.lost is not None:
            await self._lost(dest)
            await self.emit(0, line)
            return end + 1
        if self.lexer.session_statements != before:
            await self._to_one_session(dest)
            await self.emit(0, line)
            return end + 1
        await self._forward(dest, line)
        return end + 1

    async def _forward(self, dest: int, piece: bytes) -> None:
        self.block_bytes += len(piece)
        self.block_sent[dest] += len(piece)
        await self.emit(dest, piece)
        if self.lexer.at_boundary:
            self.insert_dest = None
            await self.inserted(dest)

    async def _feed(self, data: bytes) -> bytes:
        """Route the whole lines of `data`; the incomplete last line is returned."""
        start = 0
        while True:
            if self.insert_dest is not None:
                went_on = await self.rows(data, start)
                if self.insert_dest is not None:
                    if went_on == start:
                        break  # the rest of the statement is not here yet
                    start = went_on
                    continue
                start = went_on
            end = data.find(b"\n", start)
            if end == -1:
                break
            await self.line(data[start : end + 1])
            start = end + 1
        return data[start:]

    async def run(self, chunks: AsyncIterator[bytes]) -> None:
        header = b"SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED;\n"
        for dest in range(self.sessions):
            await self.emit(dest, header)
        rest = b""
        async for chunk in chunks:
            rest = await self._feed(rest + chunk if rest else chunk)
        if rest:
            self.slow_insert = True  # an unterminated last line: follow it exactly
            rest = await self._feed(rest + b"\n")
        if not self.serial and self.lexer.at_boundary:
            await self.end_block()
        for dest in range(self.sessions):
            await self.flush(dest)
            await self.queues[dest].put(None)

    async def stream(self, dest: int) -> AsyncIterator[bytes]:
        while (item := await self.queues[dest].get()) is not None:
            yield item
