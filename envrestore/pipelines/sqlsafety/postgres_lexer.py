"""psql's lexer, as far as the PostgreSQL statement filter needs it.

Literals ('…', E'…', "…", $tag$…$tag$) and comments (nested /* */, --) are
blanked, line by line, with the lexer state carried across lines. The token
view (`scan_line(..., mark=True)`) leaves markers for quoted values so the
statement rules can read `SET x = '…'` or `LANGUAGE 'c'`.
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
    rb"|--.*"
)
STRIP = re.compile(LITERALS, re.S)
OPENER = (
    rb"(?<!" + ID + rb")[eE]'|'|\""
    rb"|(?<!" + ID + rb")\$(?:[A-Za-z_\x80-\xff][\w\x80-\xff]*)?\$|/\*"
)
LEFTOVER = re.compile(OPENER)
OPEN = re.compile(OPENER + rb"|--")
CLOSE = {
    b"'": re.compile(rb"[^']*'"),
    b"E": re.compile(rb"[^'\\]*(?:\\.[^'\\]*)*'", re.S),
    b'"': re.compile(rb'[^"]*"'),
}
COMMENT_MARK = re.compile(rb"/\*|\*/")

# Literal markers of the token view: a quoted value, a U&"…" identifier.
LIT = b"\x01"
UNICODE_ID = b"\x02"
TOKEN = re.compile(rb"[A-Za-z_\x80-\xff][\w$\x80-\xff]*|\d+|[^\s\w]")
SIMPLE_ID = re.compile(rb"[a-z_][a-z0-9_$]*")


def scan_line(
    body: bytes, quote: bytes | None, depth: int, *, mark: bool
) -> tuple[bytes, bytes | None, int]:
    """Blank literals and comments of one line, starting in lexer state `quote`.

    With `mark`, a literal leaves a marker token instead of a blank (LIT, or
    UNICODE_ID for a U&"…" identifier) and a quoted simple lowercase
    identifier leaves its name ("pg_catalog" is pg_catalog): the token view
    of the statement-level rules. Returns the code and the state at line end.
    """
    out: list[bytes] = []
    pos = 0
    size = len(body)
    opened = -1  # where the open literal started on this line (-1: on an earlier line)
    while pos < size:
        if quote is None:
            found = OPEN.search(body, pos)
            if found is None:
                out.append(body[pos:])
                break
            out.append(body[pos : found.start()])
            token = found.group()
            opened = found.start()
            pos = found.end()
            if token == b"--":
                out.append(b" ")
                break
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
            if closing is None:
                break
            if mark and quote == b'"' and opened >= 0 and out[-1] == b" " + LIT + b" ":
                name = body[opened + 1 : closing.end() - 1]
                if SIMPLE_ID.fullmatch(name):
                    out[-1] = b" " + name + b" "
            pos = closing.end()
            quote = None
            opened = -1
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
