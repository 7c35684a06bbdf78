"""Where the `mariadb` client ends statements, so a dump can be cut between sessions.

The parallel import (`mariadb_split`) gives whole statements to different client
sessions. A cut is safe only where the client reading the *whole* dump would be
between two statements: outside every '…', "…", `…` and /* … */, with nothing
of the next statement read yet. Anywhere else, a session would run text that
the statement filter saw inside a string literal, never checked as SQL (a
line-based guess is not enough: `INSERT INTO t VALUES ('x;⏎` is one line that
ends in `;` and inside a literal).

`ClientLexer` follows `add_line()` of the client (client/mysql.cc) in
--binary-mode, line by line: backslash escapes in '…' and "…" (none in `…`),
`#` and `-- ` comments, /* */ comments except the executed /*! and /*M!, the
DELIMITER command. Plain INSERT rows take the statement filter's C scan
(`fastscan.rows_tail`), which reads them the same way. What it does not model
makes it `lost` (a backslash outside a literal, or ending a line inside one,
which the client joins to the next line; a DELIMITER it cannot read; a statement
that is a DELIMITER command): the caller then cuts nowhere any more.
"""

from __future__ import annotations

import re

from envrestore.pipelines.sqlsafety.fastscan import rows_tail

_CLOSE = {
    b"'": re.compile(rb"[^'\\]*(?:\\.[^'\\]*)*'", re.S),
    b'"': re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*"', re.S),
    b"`": re.compile(rb"[^`]*`"),
}
#: The client's own order: backslash, delimiter, comments, quotes.
_OPENERS = rb"\\|{delimiter}|\#|--|/\*(?!M?!)|['\"`]"
_DELIMITER_LINE = re.compile(rb"(?i)\s*delimiter[ \t]+([;$|%&~^@/]{1,16})[ \t\r]*\n?")
_SPACE = b" \t\n\r\x0b\x0c"
#: A statement that may change the client's session (settings, transactions,
#: the default database, prepared statements, locks): `session_statements`.
_SESSION_VERB = re.compile(
    rb"(?i)(?:/\*M?!\d*\s*)?(?:SET|START|BEGIN|XA|USE|CALL|PREPARE|EXECUTE|LOCK|UNLOCK|HANDLER"
    rb"|CHARSET)\b"
)
#: (A compiled search is ~3x faster than `in` for this two-byte needle.)
_BACKSLASH_EOL = re.compile(rb"\\\n")


class ClientLexer:
    """The client's statement boundaries over a dump fed line by line (see the module doc).

    `at_boundary`: the client has read a whole number of statements and nothing
    of the next one. `lost` says why it stopped following (None while it follows).
    """

    def __init__(self) -> None:
        self.delimiter = b";"
        self.quote: bytes | None = None  # ', ", ` or /* when a line ends inside one
        self.empty = True  # nothing of the current statement read yet
        self.lost: str | None = None
        self._delimiter_statement = False  # the current statement starts with "delimiter"
        #: How many statements began with a _SESSION_VERB (the parallel import must
        #: not spread a session change it cannot replay).
        self.session_statements = 0
        self._openers = re.compile(_OPENERS.replace(b"{delimiter}", re.escape(self.delimiter)))

    @property
    def at_boundary(self) -> bool:
        return self.lost is None and self.quote is None and self.empty

    def rows(self, data: bytes, start: int = 0) -> bool:
        """Fast path: data[start:] (whole lines) are plain INSERT rows that start or
        continue the current statement. True when so (the state is updated); False
        leaves the state as it was, for `line`."""
        if self.lost is not None or self.quote is not None or self.delimiter != b";":
            return False
        if _BACKSLASH_EOL.search(data, start) is not None:
            return False  # the client joins a line ending in a backslash to the next
        verdict = rows_tail(data, start)
        if verdict < 0:
            return False
        self.empty = verdict == 1
        self._delimiter_statement = False
        return True

    def line(self, line: bytes) -> None:
        """Follow one line (with its line break) exactly."""
        if self.lost is not None:
            return
        if self.quote is None and self.empty and line.lstrip(_SPACE)[:9].lower() == b"delimiter":
            found = _DELIMITER_LINE.fullmatch(line)
            if found is None:
                self.lost = "a DELIMITER line it cannot read"
                return
            self._set_delimiter(found.group(1))
            return
        pos, size = 0, len(line)
        while pos < size:
            if self.quote is None:
                found = self._openers.search(line, pos)
                stop = size if found is None else found.start()
                if line[pos:stop].strip(_SPACE):
                    self._started(line, pos)
                if found is None:
                    return
                token, pos = found.group(), found.end()
                if token == b"\\":
                    if line[pos : pos + 1] != b"N":  # \N is NULL; other \x are client commands
                        self.lost = "a backslash outside a string literal"
                        return
                    self._started(line, pos - 1)
                    pos += 1
                elif token == self.delimiter:
                    if self._delimiter_statement:
                        self.lost = "a statement that is a DELIMITER command"
                        return
                    self.empty = True
                elif token == b"#":
                    return
                elif token == b"--":
                    if pos >= size or line[pos] in _SPACE or self.empty:
                        return  # a comment to the end of the line
                    pos -= 1  # `--x` is code: the second `-` may start a comment
                elif token == b"/*":
                    self.quote = token
                else:
                    self._started(line, pos - 1)
                    self.quote = token
            elif self.quote == b"/*":
                close = line.find(b"*/", pos)
                if close < 0:
                    return
                pos, self.quote = close + 2, None
            else:
                closing = _CLOSE[self.quote].match(line, pos)
                if closing is None:
                    if self.quote != b"`" and _odd_backslashes_before_eol(line):
                        self.lost = "a line that ends in a backslash inside a string literal"
                    return
                pos, self.quote = closing.end(), None

    def _started(self, line: bytes, pos: int) -> None:
        if self.empty:
            self.empty = False
            text = line[pos:].lstrip(_SPACE)
            self._delimiter_statement = text[:9].lower() == b"delimiter"
            if _SESSION_VERB.match(text) is not None:
                self.session_statements += 1

    def _set_delimiter(self, delimiter: bytes) -> None:
        self.delimiter = delimiter
        self._openers = re.compile(_OPENERS.replace(b"{delimiter}", re.escape(delimiter)))


def _odd_backslashes_before_eol(line: bytes) -> bool:
    body = line[:-1] if line.endswith(b"\n") else line
    run = len(body) - len(body.rstrip(b"\\"))
    return run % 2 == 1
