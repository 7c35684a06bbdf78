"""The parallel PostgreSQL import: one filtered plain pg_dump fed to N psql sessions.

pg_dump writes its plain format in three sections: pre-data (types, functions,
tables, sequences), data (`COPY … FROM stdin` blocks, `setval`) and post-data
(constraints, indexes, attach, triggers, foreign keys, …). `Splitter` runs them
as stages of psql sessions with a barrier between stages (every session of a
stage exits cleanly before the next stage starts):

1. pre: everything before the first COPY, on one session;
2. data: COPY blocks over N sessions; a table goes whole to the least loaded
   session, a big one is cut at row boundaries into pieces of PIECE_BYTES, each
   re-headed with the same `COPY … FROM stdin;` line and ended with `\\.`;
3. post: CREATE INDEX and ALTER TABLE ONLY … ADD CONSTRAINT … PRIMARY KEY /
   UNIQUE / EXCLUDE over N sessions, balanced by the bytes of their table;
   other post-data statements (comments, attach, triggers, FKs) are held back,
   in dump order and bounded by DEFER_BYTES, for
4. serial: one session, in dump order, after every index is built.

Session settings (SET, RESET, pg_dump's set_config, `\\restrict`) go to every
running session at their place in the dump and are replayed at the start of
each new session, so each statement runs under the settings it had in the dump.

It reads statement boundaries with psql's lexing rules (quotes, E'…', "…",
$tag$…$tag$, nested comments, COPY data up to `\\.`) and cuts only at a
statement's end; the stream is already filtered, so every session runs only
checked statements. A stage that ended inside a literal would fail its own
psql (an unterminated quote at EOF) before the next stage starts. What a new
session could not inherit (a transaction, a temporary table) keeps the rest on
one session; what it does not understand (a COPY of another shape, a stray
meta-command, an over-long statement) sends the rest, unread, to one session:
byte for byte what one psql gets. Memory: bounded queues, at most one
statement (STATEMENT_BYTES) and DEFER_BYTES held, never a table.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from envrestore.pipelines.engines.psql_lexer import copy_end, looks_like_pg_dump, scan_line
from envrestore.pipelines.errors import BadInput, EnvrestoreError

log = structlog.get_logger(__name__)

#: Most sessions an import may use (the settings' bound).
MAX_CONNECTIONS = 8
#: "auto": the server may be another machine, whose cores a client cannot see
#: (no SQL function reports them, and os.cpu_count() is this machine's). Two
#: sessions already overlap psql/COPY parsing with the server's work on a
#: 2-core server (issue 11), and more would only compete on a small one.
AUTO_CONNECTIONS = 2
#: Rows of one COPY block sent to one session before the next piece goes elsewhere.
PIECE_BYTES = 4 << 20
#: Post-data statements held back for the serial stage before it starts early.
DEFER_BYTES = 1 << 20
#: A statement longer than this sends the rest of the dump, unread, to one session.
STATEMENT_BYTES = 1 << 20
#: Distinct session settings replayed to new sessions (the filter allows ~30 names).
MAX_SETTINGS = 256
_QUEUE_ITEMS = 8
_FLUSH_BYTES = 256 << 10

_NAME = rb'(?:"(?:[^"]|"")*"|[\w$\x80-\xff]+)(?:\.(?:"(?:[^"]|"")*"|[\w$\x80-\xff]+))*'

_SET = re.compile(
    rb"(?is)\s*SET\s+(?:SESSION\s+)?(?!LOCAL\b|TRANSACTION\b|CONSTRAINTS\b|ROLE\b"
    rb"|AUTHORIZATION\b|SESSION\b)([a-z_][\w.]*)\b[^;]*;\s*"
)
_RESET = re.compile(rb"(?is)\s*RESET\s+(?!ALL\b|ROLE\b|SESSION\b)([a-z_][\w.]*)\s*;\s*")
_SET_CONFIG = re.compile(
    rb"(?i)\s*SELECT\s+pg_catalog\.set_config\('([a-z_.]+)',\s*'[^']*',\s*false\);\s*"
)
_SETVAL = re.compile(rb"(?i)\s*SELECT\s+pg_catalog\.setval\s*\(")
_COPY_IN = re.compile(rb"(?is)\s*COPY\s+[^\s(;]+(?:\s*\([^)]*\))?\s+FROM\s+STDIN\b")
#: Any COPY naming STDIN: one not of the exact shape above is passed through unread.
_COPY_ANY = re.compile(rb"(?is)\s*COPY\b.*\bSTDIN\b")
_COPY_PLAIN = re.compile(rb"(?i)\s*COPY\s+\S+(?:\s+\([^;]*\))?\s+FROM\s+STDIN\s*;\s*")
_COPY_NAME = re.compile(rb"(?i)\s*COPY\s+(" + _NAME + rb")")
_PARALLEL = re.compile(
    rb"(?is)\s*(?:CREATE\s+(?:UNIQUE\s+)?INDEX\s+\S+\s+ON\s"
    rb"|ALTER\s+TABLE\s+ONLY\s+\S+\s+ADD\s+CONSTRAINT\s+\S+\s+(?:PRIMARY\s+KEY|UNIQUE|EXCLUDE)\b)"
)
_TARGET = re.compile(
    rb"(?is)\s*(?:CREATE\s+(?:UNIQUE\s+)?INDEX\s+"
    + _NAME
    + rb"\s+ON\s+(?:ONLY\s+)?("
    + _NAME
    + rb")|ALTER\s+TABLE\s+ONLY\s+("
    + _NAME
    + rb")\s)"
)
#: Statements that change a session's state in ways a new session could not replay.
_PIN = re.compile(
    rb"(?is)\s*(?:BEGIN|START\s+TRANSACTION|SAVEPOINT|PREPARE|DECLARE|LISTEN|SET|RESET"
    rb"|SELECT\s+pg_catalog\.set_config|CREATE\s+(?:(?:GLOBAL|LOCAL)\s+)?TEMP(?:ORARY)?)\b"
)
_RESTRICT = re.compile(rb"\\restrict\s")
_UNRESTRICT = re.compile(rb"\\unrestrict\s")

#: How a stage's session runs: given its input, feed it to a psql (raises on failure).
Launch = Callable[[AsyncIterator[bytes]], Awaitable[object]]


def resolve_connections(wanted: int | str) -> int:
    """Sessions for an import: "auto" is AUTO_CONNECTIONS; a number must be 1..MAX."""
    if wanted == "auto":
        return AUTO_CONNECTIONS
    if isinstance(wanted, bool) or not isinstance(wanted, int):
        raise BadInput(f"connections must be 1 to {MAX_CONNECTIONS} or 'auto', not {wanted!r}")
    if not 1 <= wanted <= MAX_CONNECTIONS:
        raise BadInput(f"connections must be 1 to {MAX_CONNECTIONS} or 'auto', not {wanted}")
    return wanted


@dataclass
class _Session:
    """One psql of the current stage: its queue, what it was sent and has taken."""

    queue: asyncio.Queue[bytes | None] = field(default_factory=lambda: asyncio.Queue(_QUEUE_ITEMS))
    task: asyncio.Task[object] | None = None
    out: bytearray = field(default_factory=bytearray)
    sent: int = 0
    taken: int = 0
    weight: int = 0


@dataclass
class _Copy:
    """The COPY block being forwarded, cut in pieces when it is splittable."""

    header: bytes
    table: bytes
    splittable: bool
    dest: int | None = None
    piece: int = 0
    newline: bytes = b"\n"
    line_ended: bool = True


class Splitter:
    """Routes a filtered plain pg_dump to stages of psql sessions (see the module doc)."""

    def __init__(self, connections: int, launch: Launch, group: asyncio.TaskGroup) -> None:
        self.connections = connections
        self.launch = launch
        self.group = group
        self.stage = "pre"
        self.width = 1
        self.sessions: dict[int, _Session] = {}
        #: Session settings by name, in the order of their last change.
        self.settings: dict[bytes, bytes] = {}
        #: Post-data statements held back for the serial stage, and the settings before them.
        self.deferred: list[bytes] = []
        self.deferred_bytes = 0
        self.snapshot: dict[bytes, bytes] | None = None
        self.table_bytes: dict[bytes, int] = {}
        # The statement being read: its lines, their code, psql's lexer state.
        self.lines: list[bytes] = []
        self.code: list[bytes] = []
        self.unit_bytes = 0
        self.quote: bytes | None = None
        self.depth = 0
        #: From here on one session takes everything (see `_pin`), and, when
        #: passing through, the bytes as they come, unread.
        self.pinned = False
        self.passing = False
        self.copy: _Copy | None = None
        #: Each stage run and how many sessions it started (logs, tests).
        self.stages: list[tuple[str, int]] = [("pre", 0)]
        self.stage_started = time.monotonic()

    # ------------------------------------------------------------ sessions

    async def _stream(self, session: _Session) -> AsyncIterator[bytes]:
        while (item := await session.queue.get()) is not None:
            session.taken += len(item)
            yield item

    @staticmethod
    async def _run_one(work: Awaitable[object], where: str) -> object:
        try:
            return await work
        except EnvrestoreError as exc:
            # psql's line numbers count this session's input, not the dump's lines.
            exc.data.setdefault("session", where)
            raise

    def _start(self, index: int, replay: dict[bytes, bytes] | None = None) -> _Session:
        session = _Session()
        where = f"{self.stage} session {index + 1} of {self.width}"
        session.task = self.group.create_task(
            self._run_one(self.launch(self._stream(session)), where)
        )
        self.sessions[index] = session
        self.stages[-1] = (self.stage, len(self.sessions))
        session.out.extend(b"".join((self.settings if replay is None else replay).values()))
        session.sent = len(session.out)
        return session

    async def _emit(self, index: int, data: bytes) -> None:
        session = self.sessions.get(index) or self._start(index)
        session.sent += len(data)
        if len(data) >= _FLUSH_BYTES:
            await self._flush(session)
            await session.queue.put(data)
            return
        session.out.extend(data)
        if len(session.out) >= _FLUSH_BYTES:
            await self._flush(session)

    @staticmethod
    async def _flush(session: _Session) -> None:
        if session.out:
            await session.queue.put(bytes(session.out))
            session.out.clear()

    def _pick(self, weight: int = 0) -> int:
        """The least loaded session: by backlog for COPY, by table bytes for indexes."""

        def load(index: int) -> tuple[int, int]:
            session = self.sessions.get(index)
            if session is None:
                return (0, 0)
            if weight:
                return (session.weight, session.sent)
            return (session.sent - session.taken, session.sent)

        best = min(range(self.width), key=load)
        if weight:
            (self.sessions.get(best) or self._start(best)).weight += weight
        return best

    async def _barrier(self) -> None:
        """End the stage: every session gets EOF and must exit cleanly."""
        sessions = list(self.sessions.values())
        for session in sessions:
            await self._flush(session)
            await session.queue.put(None)
        for session in sessions:
            assert session.task is not None
            await session.task
        self.sessions = {}
        now = time.monotonic()
        log.info(
            "shadow.import_stage",
            stage=self.stage,
            sessions=len(sessions),
            seconds=round(now - self.stage_started, 3),
            bytes=sum(session.sent for session in sessions),
        )
        self.stage_started = now

    async def _enter(self, stage: str) -> None:
        if self.pinned:
            return
        await self._barrier()
        self.stage = stage
        self.width = self.connections if stage in ("data", "post") else 1
        self.stages.append((stage, 0))

    async def _to_serial(self) -> None:
        """The serial stage: the settings as they were before the first held-back
        statement, then those statements (and later settings) in dump order."""
        if self.stage == "serial" or self.pinned:
            return
        await self._enter("serial")
        deferred, self.deferred, self.deferred_bytes = self.deferred, [], 0
        if deferred:
            self._start(0, self.snapshot)
            for unit in deferred:
                await self._emit(0, unit)
        self.snapshot = None

    async def _pin(self) -> None:
        """One session for the rest of the dump, after what runs now has finished.

        For what a new session could not inherit: a transaction, a temporary
        table, a setting changed in a way not replayed, a line of several
        statements, a statement too long to read. pg_dump writes none of these
        outside large-object data.
        """
        if self.pinned:
            return
        if self.stage in ("data", "post"):
            await self._to_serial()
        self.pinned = True
        self.width = 1

    # ------------------------------------------------------------ settings

    def _remember(self, key: bytes, statement: bytes) -> None:
        self.settings.pop(key, None)
        if len(self.settings) >= MAX_SETTINGS:
            raise BadInput(
                f"the dump changes more than {MAX_SETTINGS} distinct session settings; "
                "import it with one connection"
            )
        self.settings[key] = statement

    async def _broadcast(self, statement: bytes) -> None:
        for index in list(self.sessions):
            await self._emit(index, statement)
        if self.snapshot is not None:
            self._defer(statement)

    def _defer(self, unit: bytes) -> None:
        self.deferred.append(unit)
        self.deferred_bytes += len(unit)

    @staticmethod
    def _setting_key(code: bytes, statement: bytes) -> bytes | None:
        found = _SET.fullmatch(code) or _RESET.fullmatch(code)
        if found is not None:
            return found.group(1).lower()
        config = _SET_CONFIG.fullmatch(statement)
        return config.group(1).lower() if config is not None else None

    # ------------------------------------------------------------ statements

    def _reset(self) -> None:
        self.lines, self.code, self.unit_bytes = [], [], 0

    def _lex(self, line: bytes) -> bytes:
        code, self.quote, self.depth = scan_line(line.rstrip(b"\r\n"), self.quote, self.depth)
        return code

    def _complete(self) -> bool:
        """At a statement's end: outside any literal, a `;` read and no code after it."""
        if self.quote is not None:
            return False
        last = next((c for c in reversed(self.code) if c.strip()), b"")
        return b";" in last and not last.rsplit(b";", 1)[1].strip()

    async def _line(self, line: bytes) -> None:
        if not self.code:
            stripped = line.strip()
            if not stripped or stripped.startswith(b"--"):
                self.lines.append(line)
                self.unit_bytes += len(line)
                if self.unit_bytes > STATEMENT_BYTES:
                    await self._emit(0, b"".join(self.lines))
                    self._reset()
                return
            if stripped[:1] == b"\\":
                await self._meta(line, stripped)
                return
        self.lines.append(line)
        self.unit_bytes += len(line)
        code = self._lex(line)
        self.code.append(code)
        if b"\\" in code or self.unit_bytes > STATEMENT_BYTES:
            # A meta-command where the filter saw none, or too long to hold.
            await self._pass_through(b"")
        elif self._complete():
            await self._unit()

    async def _pass_through(self, extra: bytes) -> None:
        """The rest of the dump, from the statement being read, goes unread to one session:
        what one psql would have been given (the fallback for anything not understood)."""
        await self._pin()
        self.passing = True
        pending = b"".join(self.lines) + extra
        self._reset()
        if pending:
            await self._emit(0, pending)

    async def _meta(self, line: bytes, stripped: bytes) -> None:
        """pg_dump's `\\restrict KEY` (replayed on every session) and `\\unrestrict KEY`."""
        if _RESTRICT.match(stripped):
            self._remember(b"\\restrict", stripped + b"\n")
        elif _UNRESTRICT.match(stripped):
            self.settings.pop(b"\\restrict", None)
        else:
            await self._pass_through(line)
            return
        self._reset()
        await self._broadcast(stripped + b"\n")

    async def _unit(self) -> None:
        """Route one complete statement (with the comment lines before it)."""
        raw = b"".join(self.lines)
        raw += b"" if raw.endswith(b"\n") else b"\n"
        code = b"\n".join(self.code)
        body = b"".join(self.lines[len(self.lines) - len(self.code) :])
        self._reset()
        single = code.count(b";") == 1
        key = self._setting_key(code, body) if single else None
        if key is not None:
            self._remember(key, body if body.endswith(b"\n") else body + b"\n")
            await self._broadcast(self.settings[key])
            return
        if not single or _PIN.match(code):
            await self._pin()
            await self._emit(0, raw)
            return
        if single and _COPY_IN.match(code):
            await self._copy_start(raw, body, code)
            return
        if _COPY_ANY.match(code):
            await self._pass_through(raw)  # a COPY … STDIN of another shape: psql reads it
            return
        if self.stage == "data":
            if single and _SETVAL.match(code):
                await self._emit(self._pick(), raw)
                return
            await self._enter("post")
        if self.stage == "post":
            target = _TARGET.match(body) if single and _PARALLEL.match(code) else None
            table = (target.group(1) or target.group(2)) if target is not None else None
            if table is not None and table in self.table_bytes:
                await self._emit(self._pick(self.table_bytes[table] + 1), raw)
                return
            if self.deferred_bytes + len(raw) <= DEFER_BYTES:
                # Held back: it may need an index or constraint still being built.
                if self.snapshot is None:
                    self.snapshot = dict(self.settings)
                self._defer(raw)
                return
            await self._to_serial()
        await self._emit(self._pick(), raw)

    # ------------------------------------------------------------ COPY

    async def _copy_start(self, raw: bytes, body: bytes, code: bytes) -> None:
        if self.stage == "pre":
            await self._enter("data")
        elif self.stage == "post":
            await self._to_serial()
        name = _COPY_NAME.match(body)
        splittable = (
            self.width > 1 and body.count(b"\n") <= 1 and _COPY_PLAIN.fullmatch(code) is not None
        )
        header = body if body.endswith(b"\n") else body + b"\n"
        self.copy = _Copy(header, name.group(1) if name else b"", splittable)
        self.copy.dest = self._pick()
        await self._emit(self.copy.dest, raw)

    async def _rows(self, data: bytes, start: int, *, eof: bool = False) -> int:
        """Forward COPY rows from data[start:] (whole lines); where to go on from."""
        copy = self.copy
        assert copy is not None
        marker, after = copy_end(data, start)
        if marker < 0 and eof and data[start:].rstrip(b"\r\n") == b"\\.":
            marker, after = start, len(data)
        stop = marker if marker >= 0 else (len(data) if eof else data.rfind(b"\n", start) + 1)
        while start < stop:
            if copy.dest is not None and copy.splittable and copy.piece >= PIECE_BYTES:
                await self._emit(copy.dest, b"\\." + copy.newline)
                copy.dest, copy.piece = None, 0
            if copy.dest is None:
                copy.dest = self._pick()
                await self._emit(copy.dest, copy.header)
            room = PIECE_BYTES - copy.piece
            cut = stop
            if copy.splittable and stop - start > room:
                cut = data.find(b"\n", start + room - 1) + 1 or stop
            await self._emit(copy.dest, data[start:cut])
            copy.piece += cut - start
            copy.newline = b"\r\n" if data[cut - 2 : cut] == b"\r\n" else b"\n"
            copy.line_ended = data[cut - 1 : cut] == b"\n"
            self._count(copy, cut - start)
            start = cut
        if marker < 0 and not eof:
            return start
        if copy.dest is None:
            copy.dest = self._pick()
            await self._emit(copy.dest, copy.header)
        end = data[marker:after] if marker >= 0 else b"\\."  # EOF ends a COPY for psql too
        if not copy.line_ended:
            end = b"\n" + end
        await self._emit(copy.dest, end if end.endswith(b"\n") else end + b"\n")
        self.copy = None
        return after if marker >= 0 else len(data)

    def _count(self, copy: _Copy, size: int) -> None:
        if copy.table in self.table_bytes or len(self.table_bytes) < 100_000:
            self.table_bytes[copy.table] = self.table_bytes.get(copy.table, 0) + size

    # ------------------------------------------------------------ driver

    async def run(self, chunks: AsyncIterator[bytes]) -> None:
        """Read the whole stream, stage by stage; return when every session has exited."""
        parts: list[bytes] = []
        async for chunk in chunks:
            if self.passing:
                await self._emit(0, chunk)
                continue
            if b"\n" not in chunk:
                parts.append(chunk)
                continue
            data = b"".join([*parts, chunk]) if parts else chunk
            parts = []
            start = 0
            while not self.passing:
                if self.copy is not None:
                    start = await self._rows(data, start)
                    if self.copy is not None:
                        break
                end = data.find(b"\n", start)
                if end < 0:
                    break
                await self._line(data[start : end + 1])
                start = end + 1
            if start < len(data):
                if self.passing:
                    await self._emit(0, data[start:])
                else:
                    parts.append(data[start:])
        rest = b"".join(parts)
        if self.copy is not None:
            await self._rows(rest, 0, eof=True)
        elif rest:
            await self._line(rest)
        if self.lines and not self.passing:
            # psql runs an unterminated last statement at EOF; so does the serial session.
            if self.code:
                await self._to_serial()
            await self._emit(0, b"".join(self.lines))
        self._reset()
        if self.deferred:
            await self._to_serial()
        await self._barrier()


async def _peek(chunks: AsyncIterator[bytes], size: int) -> tuple[bytes, AsyncIterator[bytes]]:
    """The stream's first `size` bytes (or all of it), and the whole stream again."""
    held: list[bytes] = []
    total = 0
    iterator = aiter(chunks)
    async for chunk in iterator:
        held.append(chunk)
        total += len(chunk)
        if total >= size:
            break

    async def again() -> AsyncIterator[bytes]:
        for chunk in held:
            yield chunk
        async for chunk in iterator:
            yield chunk

    return b"".join(held)[:size], again()


async def import_stream(
    chunks: AsyncIterator[bytes], connections: int, launch: Launch
) -> list[tuple[str, int]]:
    """Feed a filtered dump to `connections` sessions made by `launch`; the stages run.

    One session when asked for one or when the stream is not pg_dump's plain
    format. A failure of any session or of the stream (the filter's refusal)
    cancels every other session and is raised, first cause first.
    """
    head, chunks = await _peek(chunks, 1024)
    if connections == 1 or not looks_like_pg_dump(head):
        await launch(chunks)
        return [("single", 1)]
    try:
        async with asyncio.TaskGroup() as group:
            splitter = Splitter(connections, launch, group)
            group.create_task(splitter.run(chunks))
    except BaseExceptionGroup as group_error:
        # The first real failure, not the cancellations it caused in the other tasks.
        errors = [e for e in group_error.exceptions if not isinstance(e, asyncio.CancelledError)]
        raise (errors or list(group_error.exceptions))[0] from None
    return splitter.stages
