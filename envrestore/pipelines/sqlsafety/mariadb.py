"""The statement filter for mysqldump/mariadb-dump output fed to `mariadb --binary-mode`.

It reads the dump the way the `mariadb` client does (line by line, tracking
'…', "…", `…` and comments across lines, and the current DELIMITER) and looks
only at what lies outside string literals and plain comments: executable
comments (`/*!40101 … */`, `/*M!100616 … */`) are run by the server, so their
content is inspected like any SQL.

Speed: most of a dump is INSERT … VALUES rows. Only each statement's head is
matched in Python; the rows lines after it are skipped by `fastscan.rows_span`
(C, memchr from quote to backslash to quote, ~2 GB/s on one core), which stops
at the statement's `;` and hands back any line it is unsure of (a `"` literal,
a literal across lines, a comment, anything but numbers, NULL and 0x hex
outside literals) to the full line check below.

Where the client and the server could read quotes differently, the filter
refuses instead of guessing: backslashes in `identifiers` (the client treats
them as escapes, the server does not), sql_mode values that change quoting
(ANSI_QUOTES, NO_BACKSLASH_ESCAPES), connection charsets whose multibyte
characters can end in a backslash (GBK, SJIS, BIG5, CP932, GB18030), and
DELIMITERs that could start a literal or comment.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from envrestore.pipelines.sqlsafety.fastscan import rows_span, rows_tail
from envrestore.pipelines.sqlsafety.lines import (
    FilterReport,
    LineFilter,
    excerpt,
    refusal,
    strip_eol,
)
from envrestore.pipelines.sqlsafety.mariadb_rules import (
    BACKSLASH,
    BAD_MODE,
    CLAUSE,
    CLIENT_WORD,
    CLOSE,
    COMMENT_END,
    CURRENT_DATABASE,
    DANGER,
    DANGERS,
    DB_STATEMENT,
    DEFAULT_COLLATION_MAP,
    DEFINER,
    DELIMITER_OK,
    EXEC_MARK,
    EXEC_OPEN,
    IDENT,
    IDENT_OR_LITERAL,
    INSERT_PREFIX,
    LEFTOVER,
    LITERALS,
    MYSQL8,
    NESTED_HINT,
    OPEN,
    QUALIFIED,
    SAFE_ROWS,
    SANDBOX_LINE,
    SANE_IDENT,
    SENSITIVE_SET,
    STRIP,
    SYSTEM_SCHEMAS,
    TABLE_LISTS,
    TABLE_POSITION,
    USE,
)


def _keep_ident(match: re.Match[bytes]) -> bytes:
    text = match.group()
    if text[:1] == b"`":
        return b"`" + SANE_IDENT.sub(b"_", text[1:-1]) + b"`"
    return b" "


def _bare(token: bytes) -> str:
    return token.strip(b"`").decode("utf-8", "replace")


def _blank(line: bytes) -> bytes:
    """A dropped line: its line break is kept so later line numbers do not move."""
    return b"\n" if line.endswith(b"\n") else b""


class MariaDbFilter(LineFilter):
    """Checks and normalises a mysqldump stream line by line (see the module doc)."""

    def __init__(
        self, report: FilterReport, collation_map: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(report)
        self.delimiter = b";"
        self.quote: bytes | None = None  # ', ", ` or /* when a line ends inside one
        self.statement_empty = True
        self.after_semicolon = False
        self.own_db: bytes | None = None
        self.tail = b""  # the end of the current statement's code, for multi-line context
        mapping = DEFAULT_COLLATION_MAP if collation_map is None else collation_map
        self.collations = {k.lower().encode(): v.encode() for k, v in mapping.items()}
        names = b"|".join(re.escape(k) for k in self.collations)
        hint = rb"\bDEFINER\s*="
        rewrite = LITERALS + rb"|(?P<definer>" + DEFINER + b")"
        if names:
            hint += rb"|\b(?:" + names + rb")\b"
            rewrite += rb"|(?P<coll>\b(?:" + names + rb")\b)"
        self._rewrite_hint = re.compile(hint, re.I)
        self._rewrite = re.compile(rewrite, re.I | re.S)

    # ------------------------------------------------------------------ lines

    def feed_block(self, block: bytes) -> bytes:
        """Like LineFilter's, but runs of plain INSERT rows lines (most of a dump) are
        skipped by one `rows_span` call each, not a Python step per line."""
        pieces: list[bytes] = []
        done = 0  # block[:done] is already in pieces
        start = 0
        size = len(block)
        while start < size:
            if self.quote is None and self.delimiter == b";":
                stop = self._rows_run(block, start)
                if stop > start:
                    start = stop
                    continue
            end = block.find(b"\n", start) + 1 or size
            self.line_no += 1
            new = self.check_line(block[start:end] if start or end < size else block)
            if new is not None:
                pieces.append(block[done:start])
                pieces.append(new)
                done = end
            start = end
        return self.joined(block, pieces, done)

    def _rows_run(self, block: bytes, start: int) -> int:
        """Skip the plain rows lines from block[start] (a line start): an INSERT head
        line and its rows, or rows lines of the statement under way. Returns where
        the line-by-line check goes on (`start` when it must take this line)."""
        scan = start
        if self.statement_empty:
            end = block.find(b"\n", start) + 1 or len(block)
            head = INSERT_PREFIX.match(block, start, end)
            if head is None:
                return start
            scan = head.end()
        status, stop, newlines = rows_span(block, scan)
        if stop == start or (status < 0 and scan > start and stop == scan):
            return start
        self.line_no += newlines + (block[stop - 1 : stop] != b"\n")
        if status == 1:
            self.report.statements += 1
            self.statement_empty = True
            self.after_semicolon = True
        else:
            self.statement_empty = False
            self.after_semicolon = False
        return stop

    def check_line(self, line: bytes) -> bytes | None:
        started_normal = self.quote is None
        if started_normal and self.delimiter == b";" and self._plain_rows(line):
            return None
        body = strip_eol(line)
        if started_normal and self.statement_empty:
            if body.startswith(b"-- Current Database: "):
                self._learn_database(body)
            elif body.rstrip() == SANDBOX_LINE:
                self.report.note("dropped the sandbox-mode line of MariaDB 11 dumps")
                return _blank(line)
            else:
                lead = body.lstrip()
                if lead[:1] == b"\\":
                    raise self._client_command(lead)
                word = CLIENT_WORD.match(lead)
                if word is not None:
                    if word.group(1).lower() != b"delimiter":
                        raise self._client_command(lead)
                    self._set_delimiter(lead[len(b"delimiter") :])
                    return None
        ids: bytes | None = None
        if started_normal:
            if body.startswith(b"-- MySQL dump") and MYSQL8.match(body):
                self.report.note("a MySQL 8 dump: its collations are mapped to ones MariaDB has")
            code = STRIP.sub(b" ", body)
            if LEFTOVER.search(code) or (b"/*" in code and NESTED_HINT.search(body)):
                ids = self._scan(body)
                code = IDENT.sub(b" ", ids)
        else:
            ids = self._scan(body)
            code = IDENT.sub(b" ", ids)
        if self.delimiter == b";" and SAFE_ROWS.fullmatch(code):
            end = code.rstrip()
            if end.endswith(b";"):
                self.report.statements += 1
                self.statement_empty = True
                self.after_semicolon = True
            elif end:
                self.statement_empty = False
                self.after_semicolon = False
            return None
        if b"." in code:
            if ids is None:
                ids = IDENT_OR_LITERAL.sub(_keep_ident, body)
            self._check_names(body, ids)
        return self._check_code(line, body, code, started_normal)

    def _check_names(self, body: bytes, ids: bytes) -> None:
        """Refuse names that reach another database: `db`.`table` where a table goes,
        `a`.`b`.`c`, `db`.`routine`(…), and any name in the server's own schemas.

        `table`.`column` (and NEW./OLD. in triggers) stays allowed: only a name in a
        table position, or in a comma list after FROM/JOIN/TABLE(S)/UPDATE, is a table.
        """
        flat = EXEC_MARK.sub(b" ", ids) if b"/*" in ids or b"*/" in ids else ids
        for found in QUALIFIED.finditer(flat):
            first, second = _bare(found.group("a")), _bare(found.group("b"))
            name = f"{first}.{second}"
            if first.lower() in SYSTEM_SCHEMAS:
                raise refusal(
                    self.line_no,
                    f'a statement on the server\'s own schema "{name}"',
                    body,
                    "system_schema",
                )
            if found.group("c"):
                raise refusal(
                    self.line_no, f'a name in another database "{name}.…"', body, "qualified"
                )
            if found.group("call"):
                raise refusal(
                    self.line_no,
                    f'a call of a routine in another database "{name}(…)"',
                    body,
                    "qualified",
                )
            before = (self.tail + flat[: found.start()])[-240:]
            in_table_position = TABLE_POSITION.search(before) is not None
            if not in_table_position and before.rstrip().endswith(b","):
                clauses = CLAUSE.findall(before)
                in_table_position = bool(clauses) and clauses[-1].upper() in TABLE_LISTS
            if in_table_position:
                raise refusal(
                    self.line_no,
                    f'a table in another database "{name}" (a dump names its tables '
                    "without a database)",
                    body,
                    "qualified",
                )

    def _plain_rows(self, body: bytes) -> bool:
        """The hot path: True for an INSERT … VALUES line (or a continuation row line)
        whose unquoted parts are only numbers, NULL and 0x hex.

        Only the statement's head is matched by a regex; the rows after it are
        skipped by `fastscan.rows_tail` (memchr from quote to backslash to quote, in
        C), which reads the literals as the client does. Anything it is unsure of
        goes to the full line check.
        """
        if self.statement_empty:
            prefix = INSERT_PREFIX.match(body)
            if prefix is None:
                return False
            start = prefix.end()
        else:
            start = 0
        ends = rows_tail(body, start)
        if ends < 0:
            return False
        if ends:
            self.report.statements += 1
            self.statement_empty = True
            self.after_semicolon = True
        else:
            self.statement_empty = False
            self.after_semicolon = False
        return True

    def _scan(self, body: bytes) -> bytes:
        """Blank literals and comments char-state by char-state (lines that need it)."""
        out: list[bytes] = []
        pos = 0
        size = len(body)
        quote = self.quote
        while pos < size:
            if quote is None:
                found = OPEN.search(body, pos)
                if found is None:
                    out.append(body[pos:])
                    break
                out.append(body[pos : found.start()])
                out.append(b" ")
                token = found.group()
                if token == b"--" and body[found.end() : found.end() + 1] not in COMMENT_END:
                    raise refusal(
                        self.line_no,
                        "a -- not followed by a space (the client, the server and the filter "
                        "disagree on where such a comment starts)",
                        body,
                        "dash_comment",
                    )
                if token[:1] in (b"#", b"-"):
                    break
                if token == b"/*":
                    self._refuse_nested_comment(b"".join(out), body)
                quote = token
                pos = found.end()
            elif quote == b"/*":
                close = body.find(b"*/", pos)
                if close < 0:
                    break
                pos = close + 2
                quote = None
            else:
                closing = CLOSE[quote].match(body, pos)
                content = body[pos:] if closing is None else closing.group()
                if quote == b"`":
                    if b"\\" in content:
                        raise refusal(
                            self.line_no,
                            "a backslash in a `quoted identifier` (the client and the server "
                            "read it differently)",
                            body,
                            "backslash_identifier",
                        )
                    if closing is None:
                        raise refusal(
                            self.line_no,
                            "a `quoted identifier` that spans lines",
                            body,
                            "identifier_lines",
                        )
                    out[-1] = b"`" + SANE_IDENT.sub(b"_", content[:-1]) + b"`"
                if closing is None:
                    if (len(content) - len(content.rstrip(b"\\"))) & 1:
                        # The client joins such a line to the next and the backslash
                        # escapes that line's first byte: a quote there would not close.
                        raise refusal(
                            self.line_no,
                            "a backslash escaping the end of a line inside a string literal "
                            "(the client joins the lines and reads the quotes differently)",
                            body,
                            "backslash_line_end",
                        )
                    break
                pos = closing.end()
                quote = None
        self.quote = quote
        return b"".join(out)

    def _refuse_nested_comment(self, code_before: bytes, body: bytes) -> None:
        """A /* … */ inside a /*! … */ opened on the same line: the client strips up to
        the second `*/` (a quote or # there is code for the filter, not for it)."""
        opened = [m.end() for m in EXEC_OPEN.finditer(code_before)]
        if opened and b"*/" not in code_before[opened[-1] :]:
            raise refusal(
                self.line_no,
                "a /* comment */ inside an executable /*! comment */ (the client reads "
                "where it ends differently)",
                body,
                "nested_comment",
            )

    # ------------------------------------------------------------- statements

    def _check_code(
        self, line: bytes, body: bytes, code: bytes, started_normal: bool
    ) -> bytes | None:
        backslash = BACKSLASH.search(code)
        if backslash is not None:
            raise self._client_command(code[backslash.start() :])
        delimiter = self.delimiter
        if delimiter.endswith(b"/") and delimiter + b"*" in body:
            raise refusal(
                self.line_no,
                f'"{delimiter.decode()}*" with DELIMITER {delimiter.decode()} (ambiguous)',
                body,
                "delimiter",
            )
        flat = EXEC_MARK.sub(b" ", code) if b"*/" in code or b"/*" in code else code
        parts = flat.split(delimiter)
        result: bytes | None = None
        if not self.statement_empty and self.after_semicolon and USE.match(parts[0]):
            # `…;` ends a statement for the server even inside a DELIMITER ;; block.
            raise refusal(self.line_no, f'USE "{excerpt(parts[0])}"', body, "use")
        for index, part in enumerate(parts):
            head = part.lstrip()
            if not head or not (index or self.statement_empty):
                continue
            found = DB_STATEMENT.match(head)
            if found is not None:
                alone = index == 0 and len(parts) == 2 and not parts[1].strip()
                result = self._database_statement(line, body, found.group("kind"), alone)
        danger = DANGER.search(flat)
        if danger is not None and not (result is not None and danger.lastgroup == "database"):
            name = danger.lastgroup or "unsafe"
            raise refusal(
                self.line_no,
                f'{DANGERS[name][1]} "{excerpt(flat[danger.start() :])}"',
                body,
                name,
            )
        if SENSITIVE_SET.search(flat) and BAD_MODE.search(body):
            raise refusal(
                self.line_no,
                f'an sql_mode or character set that changes how quotes are read "{excerpt(body)}"',
                body,
                "quoting_mode",
            )
        self.report.statements += len(parts) - 1
        if len(parts) > 1:
            self.statement_empty = not parts[-1].strip()
        elif parts[0].strip():
            self.statement_empty = False
        self.after_semicolon = flat.rstrip().endswith(b";")
        self.tail = b"" if self.statement_empty else (self.tail + flat)[-240:]
        if result is None and self._rewrite_hint.search(flat):
            if not started_normal:
                raise refusal(
                    self.line_no,
                    "a DEFINER or collation on a line that starts inside a string literal",
                    body,
                    "definer",
                )
            new_body = self._rewrite.sub(self._rewrite_one, body)
            if new_body != body:
                result = new_body + line[len(body) :]
        return result

    def _rewrite_one(self, match: re.Match[bytes]) -> bytes:
        text = match.group()
        if match.lastgroup == "definer":
            if b"CURRENT_USER" in text.upper():
                return text
            self.report.note("rewrote DEFINER= clauses to CURRENT_USER")
            return b"DEFINER=CURRENT_USER"
        if match.lastgroup == "coll":
            target = self.collations[text.lower()]
            self.report.note(f"rewrote collation {text.decode()} to {target.decode()}")
            return target
        return text

    def _database_statement(self, line: bytes, body: bytes, kind: bytes, alone: bool) -> bytes:
        """CREATE/USE/ALTER/DROP DATABASE are refused, naming the statement: the dump's
        statements would run somewhere else than the database being restored."""
        verb = kind.split()[0].upper()
        what = "USE" if verb == b"USE" else f"{verb.decode()} DATABASE"
        raise refusal(
            self.line_no,
            f'{what} "{excerpt(body)}" (a dump holds one database\'s tables and never '
            "names a database: re-dump it without --databases/--all-databases/-B)",
            body,
            "database",
        )

    def _learn_database(self, body: bytes) -> None:
        found = CURRENT_DATABASE.match(body)
        if found is None:
            return
        name = _name_of(found)
        if self.own_db is None:
            self.own_db = name
        elif name != self.own_db:
            raise refusal(
                self.line_no,
                "a second database in one dump (restore one database at a time)",
                body,
                "multiple_databases",
            )

    def _set_delimiter(self, rest: bytes) -> None:
        arg = rest.strip()
        if arg[:1] in (b"'", b'"', b"`"):
            end = arg.find(arg[:1], 1)
            arg = arg[1:end] if end > 0 else b""
        else:
            arg = arg.split(None, 1)[0] if arg else b""
        if not DELIMITER_OK.fullmatch(arg):
            raise refusal(
                self.line_no,
                f'DELIMITER "{excerpt(arg)}" (only ;$|%&~^@/ characters can be delimiters)',
                b"DELIMITER " + rest,
                "delimiter",
            )
        self.delimiter = arg

    def _client_command(self, text: bytes) -> Exception:
        return refusal(
            self.line_no, f'mysql client command "{excerpt(text)}"', text, "client_command"
        )


def _name_of(found: re.Match[bytes]) -> bytes:
    quoted = found.group("q")
    return quoted.replace(b"``", b"`") if quoted is not None else found.group("n")
