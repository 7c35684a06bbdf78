"""Line splitting and the report/refusal vocabulary shared by the engine filters.

Both clients (`mariadb`, `psql`) read their input line by line, so the filter
does too: complete lines are handed over in blocks (one per input chunk) and
only the unterminated tail is kept, so memory is bounded by the longest line,
never by the dump. A line longer than `MAX_LINE` is refused rather than buffered.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from envrestore.pipelines.errors import UnsafeInput

#: Longest line the filter buffers (a mysqldump extended INSERT is ~1 MiB by default);
#: restores take ENVRESTORE_SQL_MAX_LINE_MB.
MAX_LINE = 64 * 1024 * 1024


@dataclass
class FilterReport:
    """What a filter pass saw, and what it normalised (dropped or rewrote)."""

    lines: int = 0
    statements: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    copy_rows: int = 0
    normalised: list[str] = field(default_factory=list)
    normalisations: int = 0

    def note(self, what: str) -> None:
        """Record one normalisation; each kind is listed once, all are counted."""
        self.normalisations += 1
        if what not in self.normalised:
            self.normalised.append(what)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def excerpt(text: bytes, limit: int = 80) -> str:
    """The start of an offending statement, for messages: never the whole of a huge
    line, and never a raw control character (ESC, NUL, CR) from the dump."""
    return _CONTROL.sub(_escape, text[:limit].decode("utf-8", "replace").strip())


def refusal(line: int, what: str, statement: bytes, problem: str) -> UnsafeInput:
    """The one shape of every refusal: line number, what and why, data for callers."""
    return UnsafeInput(
        f"line {line}: {what} is not allowed in a dump; the dump was refused before "
        "anything of it was imported (remove the statement or re-dump without it)",
        line=line,
        statement=excerpt(statement),
        problem=problem,
    )


def strip_eol(line: bytes) -> bytes:
    """A line without its `\\n` or `\\r\\n` (what the clients compare against)."""
    if line.endswith(b"\n"):
        line = line[:-1]
    if line.endswith(b"\r"):
        line = line[:-1]
    return line


class LineSplitter:
    """Cuts a chunked byte stream into blocks of whole lines.

    `feed` returns every complete line received so far as one block (ending in
    `\\n`), keeping the unterminated tail; `finish` returns that tail. A tail
    grows across chunks as a list of parts, so a many-MB line costs one join.
    """

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._parts: list[bytes | memoryview] = []
        self._size = 0

    def feed(self, chunk: bytes) -> bytes:
        cut = chunk.rfind(b"\n")
        if cut < 0:
            if chunk:
                self._parts.append(chunk)
                self._size += len(chunk)
                if self._size > self.max_line:
                    raise UnsafeInput(
                        f"a line of the dump is longer than {self.max_line} bytes; refusing "
                        "to buffer it (a real dump's longest line is a few MB: check the "
                        "source, or raise the cap)",
                        max_line=self.max_line,
                        problem="line_too_long",
                    )
            return b""
        if self._parts:  # one copy: the chunk's lines go into the join as a view
            self._parts.append(memoryview(chunk)[: cut + 1])
            head = b"".join(self._parts)
            self._parts = []
            self._size = 0
        else:
            head = chunk if cut == len(chunk) - 1 else chunk[: cut + 1]
        if cut < len(chunk) - 1:
            rest = chunk[cut + 1 :]
            self._parts.append(rest)
            self._size = len(rest)
        return head

    def finish(self) -> bytes:
        tail = b"".join(self._parts)
        self._parts = []
        self._size = 0
        return tail


async def iter_lines(
    chunks: AsyncIterator[bytes], *, max_line: int = MAX_LINE
) -> AsyncIterator[bytes]:
    """Each line of a stream with its terminator (the last one may have none)."""
    splitter = LineSplitter(max_line)
    async for chunk in chunks:
        block = splitter.feed(chunk)
        if block:
            start = 0
            while start < len(block):
                end = block.index(b"\n", start) + 1
                yield block[start:end]
                start = end
    tail = splitter.finish()
    if tail:
        yield tail


class LineFilter:
    """Base of the engine filters: runs `check_line` over each line of a block.

    `check_line` returns None to pass a line through untouched (the common case:
    the block is then yielded as it came, with no copy) or the bytes to emit
    instead (a rewritten line, or `\\n` for a dropped one, which keeps the line
    numbers the client reports equal to the dump's).
    """

    def __init__(self, report: FilterReport) -> None:
        self.report = report
        self.line_no = 0

    def check_line(self, line: bytes) -> bytes | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def feed_block(self, block: bytes) -> bytes:
        pieces: list[bytes] = []
        done = 0  # block[:done] is already in pieces
        start = 0
        size = len(block)
        while start < size:
            end = block.find(b"\n", start) + 1 or size
            self.line_no += 1
            new = self.check_line(block[start:end] if start or end < size else block)
            if new is not None:
                pieces.append(block[done:start])
                pieces.append(new)
                done = end
            start = end
        return self.joined(block, pieces, done)

    def joined(self, block: bytes, pieces: list[bytes], done: int) -> bytes:
        """The block back, with the rewritten lines in `pieces` (up to `done`) in place:
        the block itself, not a copy, when no line was rewritten."""
        self.report.lines = self.line_no
        if not pieces:
            return block
        pieces.append(block[done:])
        return b"".join(pieces)

    def finish(self) -> None:
        """Called at the end of the stream (after the last, maybe unterminated, line)."""
