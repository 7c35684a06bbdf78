"""psql's lexer, as far as the PostgreSQL statement filter needs it.

Literals ('…', E'…', "…", $tag$…$tag$) and comments (nested /* */, --) are
blanked, line by line, with the lexer state carried across lines. The token
view (`scan_line(..., mark=True)`) leaves markers for quoted values so the
statement rules can read `SET x = '…'` or `LANGUAGE 'c'`.

Where psql, the server or another psql version could read a literal's end
differently, the lexer raises `Ambiguous` (the filter refuses the dump): a
function may turn standard_conforming_strings off or switch client_encoding
unseen, so a '…' ending in a backslash, or a backslash after a non-ASCII byte
in E'…', is refused; so are `$`/`E'` right after a number or `$1` (psql
versions split them differently) and a new line that continues an E'…'
(the server reads `E'a'<newline>'…'` as one escaped literal, psql does not).
"""

from __future__ import annotations

import re

ID = rb"[\w$\x80-\xff]"
LITERALS = (
    rb"(?<!" + ID + rb")[eE]'[^'\\]*(?:\\.[^'\\]*)*'"
    rb"|'[^']*'"
    rb'|"[^"]*"'
    rb"|(?<!" + ID + rb")\$(?P<tag>[A-Za-z_\x80-\xff][\w\x80-\xff]*|)\$.*?\$(?P=tag)\$"
    rb"|/\*(?:[^*/]|\*(?!/)|/(?!\*))*\*/"
    rb"|--[^\r]*"  # psql ends a -- comment at a carriage return too
)
STRIP = re.compile(LITERALS, re.S)
OPENER = (
    rb"(?<!" + ID + rb")[eE]'|'|\""
    rb"|(?<!" + ID + rb")\$(?:[A-Za-z_\x80-\xff][\w\x80-\xff]*)?\$|/\*"
)
LEFTOVER = re.compile(OPENER)
# The full scan finds `$…$` and `e'` after name bytes too: _prefix decides.
OPEN = re.compile(rb"[eE]'|'|\"|\$(?:[A-Za-z_\x80-\xff][\w\x80-\xff]*)?\$|/\*|--")
CLOSE = {
    b"'": re.compile(rb"[^']*'"),
    # In E'…' both \' and '' are a quote: `E'a''\' '` is one literal for psql.
    b"E": re.compile(rb"[^'\\]*(?:(?:\\.|'')[^'\\]*)*'(?!')", re.S),
    b'"': re.compile(rb'[^"]*"'),
}
#: After an E'…' closed with only blanks or a -- comment left on its line.
E_ENDED = b"E?"
_AFTER_E = re.compile(rb"[ \t\r\f\v]*(?:--[^\r]*)?")
_NAME_BYTES = frozenset(
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_$" + bytes(range(0x80, 0x100))
)
_NUMBER_DOT = re.compile(rb"[0-9]\.$")  # `1.e'`: psql 15 reads `1.e` then '…'
_HIGH_BACKSLASH = re.compile(rb"[\x80-\xff]\\")
#: Lines the fast path (STRIP) must leave to scan_line: a backslash, an E'…',
#: a `$` or `e'` right after a digit or `$` (see _opener).
SLOW = re.compile(rb"\\|[0-9$.](?:[eE]'|\$)|(?<!" + ID + rb")[eE]'|--[^\r]*\r")
COMMENT_MARK = re.compile(rb"/\*|\*/")

# Literal markers of the token view: a quoted value, a U&"…" identifier.
LIT = b"\x01"
UNICODE_ID = b"\x02"
TOKEN = re.compile(rb"[A-Za-z_\x80-\xff][\w$\x80-\xff]*|\d+|[^\s\w]")
SIMPLE_ID = re.compile(rb"[a-z_][a-z0-9_$]*")


class Ambiguous(ValueError):
    """A literal whose end psql, the server or another psql version may read elsewhere."""


def _prefix(body: bytes, lo: int, at: int) -> bytes:
    """The name bytes right before `at` (not before `lo`, the end of the last token)."""
    start = at
    while start > lo and body[start - 1] in _NAME_BYTES:
        start -= 1
    return body[start:at]


def _opener(body: bytes, pos: int) -> re.Match[bytes] | None:
    """psql's next literal or comment opener in body[pos:], as psql 15 and others agree.

    A `$tag$` or `E'` ending a name is part of it (`a$b$`, `name'`); after a
    number or a `$1` psql versions differ (`1$$`, `1e'`): refused.
    """
    found = OPEN.search(body, pos)
    while found is not None and found.group()[:1] in b"$eE":
        prefix = _prefix(body, pos, found.start())
        number_dot = not prefix and _NUMBER_DOT.search(body, pos, found.start())
        if not prefix and not number_dot:
            return found
        if number_dot or prefix[:1] in b"0123456789$":
            shown = found.group()[:2].decode(errors="replace")
            raise Ambiguous(f"a {shown} right after a number or $n")
        if found.group()[:1] != b"$":  # `name'`: the name ends, a plain '…' opens
            return OPEN.search(body, found.start() + 1)
        found = OPEN.search(body, found.start() + 1)
    return found


def _check_plain_end(body: bytes, start: int, end: int) -> None:
    """A '…' ending in a backslash would go on if standard_conforming_strings were off."""
    at = end
    while at > start and body[at - 1] == 0x5C:
        at -= 1
    if at == end:
        return
    if (end - at) % 2 or (at > start and body[at - 1] >= 0x80):
        raise Ambiguous("a '…' string ending in a backslash")


def scan_line(
    body: bytes, quote: bytes | None, depth: int, *, mark: bool
) -> tuple[bytes, bytes | None, int]:
    """Blank literals and comments of one line, starting in lexer state `quote`.

    With `mark`, a literal leaves a marker token instead of a blank (LIT, or
    UNICODE_ID for a U&"…" identifier) and a quoted simple lowercase
    identifier leaves its name ("pg_catalog" is pg_catalog): the token view
    of the statement-level rules. Returns the code and the state at line end.
    Raises `Ambiguous` where psql and the server could read a literal differently.
    """
    out: list[bytes] = []
    pos = 0
    size = len(body)
    opened = -1  # where the open literal started on this line (-1: on an earlier line)
    if quote == E_ENDED:
        rest = body.lstrip(b" \t\r\f\v")
        if not rest or (rest.startswith(b"--") and b"\r" not in rest):
            return b"", quote, depth
        if rest[:1] == b"'":
            raise Ambiguous("a '…' on the line after an E'…' (the server joins them)")
        quote = None
    while pos < size:
        if quote is None:
            found = _opener(body, pos)
            if found is None:
                out.append(body[pos:])
                break
            out.append(body[pos : found.start()])
            token = found.group()
            opened = found.start()
            pos = found.end()
            if token == b"--":
                out.append(b" ")
                end_at = body.find(b"\r", pos)  # psql ends a -- comment at \r too
                if end_at < 0 or not body[end_at + 1 :].strip():
                    break
                # ...and the parallel import's splitter (engines/psql_lexer.py) does not.
                raise Ambiguous("a carriage return inside a -- comment")
            if token == b"/*":
                out.append(b" ")
                quote, depth = token, 1
                continue
            if mark:
                unicode = (
                    token == b'"'
                    and body[max(0, opened - 2) : opened].lower() == b"u&"
                    and (opened < 3 or not re.match(ID, body[opened - 3 : opened - 2]))
                )
                out.append(b" " + (UNICODE_ID if unicode else LIT) + b" ")
            else:
                out.append(b" ")
            quote = b"E" if token[:1] in (b"e", b"E") else token
        elif quote == b"/*":
            mark_at = COMMENT_MARK.search(body, pos)
            if mark_at is None:
                break
            pos = mark_at.end()
            depth += 1 if mark_at.group() == b"/*" else -1
            if depth == 0:
                quote = None
        elif quote[:1] == b"$":
            close = body.find(quote, pos)
            if close < 0:
                break
            pos = close + len(quote)
            quote = None
        else:
            closing = CLOSE[quote].match(body, pos)
            end = closing.end() if closing is not None else size
            if quote == b"E" and _HIGH_BACKSLASH.search(body, max(0, pos - 1), end):
                raise Ambiguous("a backslash after a non-ASCII byte in an E'…' string")
            if closing is None:
                break
            if quote == b"'":
                _check_plain_end(body, pos, end - 1)
            if mark and quote == b'"' and opened >= 0 and out[-1] == b" " + LIT + b" ":
                name = body[opened + 1 : closing.end() - 1]
                if SIMPLE_ID.fullmatch(name):
                    out[-1] = b" " + name + b" "
            pos = closing.end()
            ended_e = quote == b"E"
            quote = None
            opened = -1
            if ended_e and _AFTER_E.fullmatch(body, pos):
                return b"".join(out), E_ENDED, depth
    return b"".join(out), quote, depth


def depth_zero(tokens: list[bytes]) -> list[bytes]:
    """The tokens outside parentheses (a routine's own clauses, not its arguments)."""
    kept: list[bytes] = []
    depth = 0
    for token in tokens:
        if token == b"(":
            depth += 1
        elif token == b")":
            depth = max(0, depth - 1)
        elif depth == 0:
            kept.append(token)
    return kept
