"""psql's lexing of a plain SQL stream, as far as the parallel import reads it.

Where a statement ends (outside '…', E'…', "…", $tag$…$tag$ and nested
comments) and where a COPY data block ends (a line that is exactly `\\.`):
the parallel import cuts a dump only there, so each session runs whole
statements exactly as one psql would have read them.
"""

from __future__ import annotations

import re

_ID = rb"[\w$\x80-\xff]"
_OPEN = re.compile(
    rb"(?<!" + _ID + rb")[eE]'|'|\"|\$(?:[A-Za-z_\x80-\xff][\w\x80-\xff]*)?\$|/\*|--"
)
_NAME_BYTES = frozenset(
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_$" + bytes(range(0x80, 0x100))
)
_CLOSE = {
    b"'": re.compile(rb"[^']*'"),
    # In E'…' both \' and '' are a quote: `E'a''\' '` is one literal for psql.
    b"E": re.compile(rb"[^'\\]*(?:(?:\\.|'')[^'\\]*)*'(?!')", re.S),
    b'"': re.compile(rb'[^"]*"'),
}
_COMMENT_MARK = re.compile(rb"/\*|\*/")
_HEADER = re.compile(rb"(?:[ \t]*(?:--[^\n]*)?\r?\n)*--[ \t]*PostgreSQL database dump\b")


def looks_like_pg_dump(head: bytes) -> bool:
    """Whether a stream starts with pg_dump's plain-format header (else: one session)."""
    return _HEADER.match(head) is not None


def _starts_dollar_quote(body: bytes, at: int) -> bool:
    """Whether `$tag$` at `at` opens a literal for psql, not continues a name or number.

    psql's identifiers may contain `$` (`a$b$` is one name); a number is no name,
    so `1$a$` opens a dollar quote after the number `1`, as psql reads it.
    """
    start = at
    while start > 0 and body[start - 1] in _NAME_BYTES:
        start -= 1
    return not body[start:at].lstrip(b"0123456789")


def scan_line(body: bytes, quote: bytes | None, depth: int) -> tuple[bytes, bytes | None, int]:
    """One line's code, literals as `'s'`, quoted names as `"q"`, comments blanked.

    `quote` is psql's lexer state at the line's start (a quote, `$tag$` or `/*`
    with its nesting depth); the state at its end is returned with the code.
    """
    out: list[bytes] = []
    pos, size = 0, len(body)
    while pos < size:
        if quote is None:
            found = _OPEN.search(body, pos)
            while found is not None and found.group()[:1] == b"$":
                if _starts_dollar_quote(body, found.start()):
                    break
                found = _OPEN.search(body, found.start() + 1)
            if found is None:
                out.append(body[pos:])
                break
            out.append(body[pos : found.start()])
            token = found.group()
            pos = found.end()
            if token == b"--":
                break
            if token == b"/*":
                out.append(b" ")
                quote, depth = token, 1
                continue
            out.append(b'"q"' if token == b'"' else b"'s'")
            quote = b"E" if token[:1] in (b"e", b"E") else token
        elif quote == b"/*":
            mark = _COMMENT_MARK.search(body, pos)
            if mark is None:
                break
            pos = mark.end()
            depth += 1 if mark.group() == b"/*" else -1
            if depth == 0:
                quote = None
        elif quote[:1] == b"$":
            close = body.find(quote, pos)
            if close < 0:
                break
            pos, quote = close + len(quote), None
        else:
            closing = _CLOSE[quote].match(body, pos)
            if closing is None:
                break
            pos, quote = closing.end(), None
    return b"".join(out), quote, depth


def copy_end(data: bytes, start: int) -> tuple[int, int]:
    """Where psql's end-of-data line (`\\.`) starts and ends in data[start:], or (-1, -1)."""
    at = start
    while True:
        if data.startswith(b"\\.", at):
            rest = data[at + 2 : at + 4]
            if rest[:1] == b"\n":
                return at, at + 3
            if rest == b"\r\n":
                return at, at + 4
        found = data.find(b"\n\\.", at)
        if found < 0:
            return -1, -1
        at = found + 1
