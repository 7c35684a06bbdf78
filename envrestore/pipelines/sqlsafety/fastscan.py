"""The filter's hot scans, in C when `_fastscan` is built, else in Python.

Both engines' dumps are mostly data the filter only has to skip safely: the
rows of mysqldump's extended INSERTs and the lines of pg_dump's COPY blocks.
`_fastscan.c` skips them with memchr (several GB/s, the GIL released); the
Python twins below accept exactly the same inputs (the unit tests run every edge
case through both), at a few hundred MB/s. `NATIVE` says which one runs.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)

#: Outside literals (each one a `'` here), plain rows hold only numbers, NULL, 0x hex,
#: b'…'/x'…' prefixes, commas, parentheses, signs: no name, so no `db.routine(…)`.
_SAFE_TAIL = re.compile(
    rb"(?:[\s,()+\-']|[bBxX](?=')"
    rb"|(?:NULL|0[xX][0-9a-fA-F]+|\d+(?:\.\d+)?(?:[eE][+\-]?\d+)?)(?![\w.$]))*"
    rb"(?:;\s*)?"
)
_SPACE = b" \t\n\r\x0b\x0c"


def rows_tail_py(buf: bytes, start: int) -> int:
    """Whether buf[start:] is the rest of a plain INSERT … VALUES line: 1 (it ends its
    statement with `;`), 0 (the statement goes on), -1 (anything else).

    Escaped bytes are masked with NULs (same length; escaped backslashes first when
    one precedes a quote), then the line is split on quotes: a mask left outside the
    literals, or any other character there, means "not plain". Each literal leaves
    one `'` in the code, so a b'…' or x'…' prefix stays next to its quote.
    """
    masked = buf[start:]
    if b"\\\\'" in masked:  # an escaped backslash before a quote: mask pairs first
        masked = masked.replace(b"\\\\", b"\0\0")
    masked = masked.replace(b"\\'", b"\0\0")
    parts = masked.split(b"'")
    if not len(parts) & 1:
        return -1  # ends inside a literal
    code = b"'".join(parts[::2])
    if b"--" in code or not _SAFE_TAIL.fullmatch(code):
        return -1
    if 0 <= code.find(b";") < len(code) - len(parts[-1]):
        return -1  # a literal after the `;`: another statement on the line
    return 1 if code.rstrip(_SPACE).endswith(b";") else 0


def rows_span_py(buf: bytes, start: int) -> tuple[int, int, int]:
    """rows_tail over whole lines of buf[start:]: (1, index after the line that ends
    the statement | 0, len(buf) | -1, start of the first line that is not plain rows;
    the number of `\\n` in buf[start:index])."""
    at = start
    newlines = 0
    while at < len(buf):
        end = buf.find(b"\n", at) + 1 or len(buf)
        line = rows_tail_py(buf[at:end], 0)
        if line < 0:
            return -1, at, newlines
        newlines += buf[end - 1 : end] == b"\n"
        at = end
        if line == 1:
            return 1, at, newlines
    return 0, at, newlines


def copy_end_py(buf: bytes, start: int) -> tuple[int, int]:
    """(index just after psql's end-of-data line `\\.` in buf[start:], or -1; the
    number of `\\n` up to there, or to the end). buf[start] starts a line."""
    at = start
    end = -1
    while True:
        if buf.startswith(b"\\.", at):
            rest = buf[at + 2 : at + 4]
            if rest[:1] == b"\n":
                end = at + 3
                break
            if rest == b"\r\n":
                end = at + 4
                break
            if at + 2 == len(buf):  # `\.` as the unterminated last line
                end = at + 2
                break
        found = buf.find(b"\n\\.", at)
        if found < 0:
            break
        at = found + 1
    return end, buf.count(b"\n", start, len(buf) if end < 0 else end)


rows_tail: Callable[[bytes, int], int] = rows_tail_py
rows_span: Callable[[bytes, int], tuple[int, int, int]] = rows_span_py
copy_end: Callable[[bytes, int], tuple[int, int]] = copy_end_py
NATIVE = False
try:
    from envrestore.pipelines.sqlsafety import _fastscan  # type: ignore[attr-defined]

    _native = (_fastscan.rows_tail, _fastscan.rows_span, _fastscan.copy_end)
except (ImportError, AttributeError):  # pragma: no cover - not built, or built from older source
    log.warning(
        "sqlsafety.fastscan_missing", hint="python -m envrestore.pipelines.sqlsafety.build_native"
    )
else:
    rows_tail, rows_span, copy_end = _native
    NATIVE = True
