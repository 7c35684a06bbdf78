"""The statement filter for plain `pg_dump` output fed to `psql -X -v ON_ERROR_STOP=1`.

psql runs any backslash outside a literal as a meta-command (`\\!` runs a shell),
so the filter reads the dump as psql does: '…' (standard_conforming_strings
on), E'…' with escapes, "…", $tag$…$tag$ (across lines), -- and nested /* */
comments; COPY … FROM stdin data blocks are passed through unread, at memory
speed, up to psql's own end marker (a line that is exactly `\\.`).

Privileges and ownership belong to the target server: GRANT, REVOKE,
ALTER DEFAULT PRIVILEGES and ALTER … OWNER TO are dropped, not refused, so
dumps made without --no-owner/--no-privileges restore too. Dropped lines are
emitted as empty lines so psql's error line numbers still match the dump.
"""

from __future__ import annotations

import re
from collections.abc import Collection

from envrestore.pipelines.sqlsafety.fastscan import copy_end
from envrestore.pipelines.sqlsafety.lines import (
    FilterReport,
    LineFilter,
    excerpt,
    refusal,
    strip_eol,
)
from envrestore.pipelines.sqlsafety.postgres_lexer import (
    LEFTOVER,
    LIT,
    SIMPLE_ID,
    SLOW,
    STRIP,
    TOKEN,
    UNICODE_ID,
    Ambiguous,
    depth_zero,
    scan_line,
)
from envrestore.pipelines.sqlsafety.postgres_rules import (
    ALLOWED_SETTINGS,
    COPY,
    COPY_IN,
    COPY_OUT,
    DANGER,
    DANGERS,
    DEFAULT_EXTENSIONS,
    DROP_START,
    EXTENSION,
    EXTENSION_START,
    HEAD_RULES,
    HEAD_TOKENS,
    MARKED_START,
    MARKED_VERBS,
    MAX_ROUTINE_TOKENS,
    REFUSE_START,
    REFUSE_START_RE,
    RESTRICT,
    ROUTINE_HEAD,
    ROUTINE_LANGUAGES,
    SAFE_ENCODINGS,
    SELECT,
    SELECT_OK,
    SETTING_OK,
    SYSTEM_QUOTED,
    SYSTEM_SCHEMAS,
    TIMEOUT_ZERO,
    WRITE_VERBS,
    search_path_problem,
)


def _blank(line: bytes) -> bytes:
    return b"\n" if line.endswith(b"\n") else b""


class PostgresFilter(LineFilter):
    """Checks and normalises a plain pg_dump stream line by line (see the module doc)."""

    def __init__(
        self, report: FilterReport, extensions: Collection[str] = DEFAULT_EXTENSIONS
    ) -> None:
        super().__init__(report)
        self.extensions = frozenset(e.lower() for e in extensions)
        self.quote: bytes | None = None  # ', E, ", a $tag$, or /* (with depth)
        self.depth = 0
        self.statement_empty = True
        self.dropping = False
        self.in_copy = False
        # Statement-level view: the first tokens of the statement (across lines) and,
        # for CREATE FUNCTION/PROCEDURE, all its tokens up to its end.
        self.head: list[bytes] = []
        self.head_done = False
        self.routine: list[bytes] | None = None

    def feed_block(self, block: bytes) -> bytes:
        pieces: list[bytes] = []
        done = 0
        start = 0
        size = len(block)
        while start < size:
            if self.in_copy:
                end, rows = copy_end(block, start)
                self.line_no += rows
                self.report.copy_rows += rows - (end >= 0)
                if end < 0:
                    break
                self.in_copy = False
                start = end
                continue
            end = block.find(b"\n", start) + 1 or size
            self.line_no += 1
            new = self.check_line(block[start:end])
            if new is not None:
                pieces.append(block[done:start])
                pieces.append(new)
                done = end
            start = end
        return self.joined(block, pieces, done)

    def check_line(self, line: bytes) -> bytes | None:
        body = strip_eol(line)
        if b"\0" in body:  # psql reads a line only up to a NUL: the rest would go unseen
            raise refusal(self.line_no, "a NUL byte in a statement line", body, "nul_byte")
        if self.quote is None and self.statement_empty and body[:1] == b"\\":
            if RESTRICT.fullmatch(body):
                return None
            raise self._meta(body)
        if (
            self.quote is None
            and self.statement_empty
            and not self.dropping
            and TIMEOUT_ZERO.fullmatch(body)
        ):
            self.report.note(
                "dropped SET statement_timeout = 0 (the restore sets the import's time limits)"
            )
            self.report.statements += 1
            return _blank(line)
        state = (self.quote, self.depth)
        if self.quote is None and not SLOW.search(body):
            code = STRIP.sub(b" ", body)
            if LEFTOVER.search(code):
                code = self._scan(body)
        else:
            code = self._scan(body)
        backslash = code.find(b"\\")
        if backslash >= 0:
            raise self._meta(code[backslash:])
        parts = code.split(b";")
        result: bytes | None = None
        if self.dropping:
            result = _blank(line)
            if len(parts) > 1:
                self._only_blank_after(parts, 1, body)
                self.dropping = False
                self.statement_empty = True
                self.report.statements += 1
            return result
        danger = DANGER.search(code)
        if danger is not None:
            name = danger.lastgroup or "unsafe"
            if name == "quoting_mode":
                self._check_setting(body)
            else:
                raise refusal(
                    self.line_no,
                    f'{DANGERS[name][1]} "{excerpt(code[danger.start() :])}"',
                    body,
                    name,
                )
        for index, part in enumerate(parts):
            head = part.lstrip()
            if not head or not (index or self.statement_empty):
                continue
            if DROP_START.match(head):
                if index:
                    raise refusal(
                        self.line_no,
                        f'a GRANT/REVOKE/OWNER TO sharing its line "{excerpt(head)}"',
                        body,
                        "mixed_line",
                    )
                what = "GRANT/REVOKE" if b"OWNER" not in head.upper() else "ALTER … OWNER TO"
                self.report.note(f"dropped {what} statements (they belong to the target server)")
                result = _blank(line)
                if len(parts) > 1:
                    self._only_blank_after(parts, 1, body)
                    self.report.statements += 1
                    self.statement_empty = True
                else:
                    self.dropping = True
                    self.statement_empty = False
                return result
            self._check_start(head, body, index, len(parts))
        self._track(body, state, parts)
        self.report.statements += len(parts) - 1
        if len(parts) > 1:
            self.statement_empty = not parts[-1].strip()
        elif parts[0].strip():
            self.statement_empty = False
        return result

    def _check_start(self, head: bytes, body: bytes, index: int, count: int) -> None:
        refused = REFUSE_START_RE.match(head)
        if refused is not None:
            name = refused.lastgroup or "unsafe"
            raise refusal(self.line_no, f'{REFUSE_START[name][1]} "{excerpt(head)}"', body, name)
        if SELECT.match(head) and not SELECT_OK.match(head):
            raise refusal(
                self.line_no,
                f'a top-level SELECT other than pg_dump\'s own "{excerpt(head)}"',
                body,
                "select",
            )
        if COPY.match(head):
            self._check_copy(head, body, index, count)
        if EXTENSION_START.match(head):
            found = EXTENSION.match(body) if index == 0 else None
            raw = (found.group("q") or found.group("n")) if found else b""
            name = raw.decode("utf-8", "replace")
            if name.lower() not in self.extensions:
                raise refusal(
                    self.line_no,
                    f"CREATE EXTENSION of {name or 'an unreadable name'!r} (not in the "
                    "allowed list)",
                    body,
                    "extension",
                )

    # ------------------------------------------------------------ statement-level rules

    def _wants_marks(self, body: bytes, parts: list[bytes]) -> bool:
        """Whether this line needs the token view with literal markers (rare lines only)."""
        if self.routine is not None or b'&"' in body:
            return True
        if not self.head_done and any(name in body for name in SYSTEM_QUOTED):
            return True
        if self.head and not self.head_done and self.head[0] in MARKED_VERBS:
            return True
        return any(
            MARKED_START.match(part) for index, part in enumerate(parts) if index or not self.head
        )

    def _track(self, body: bytes, state: tuple[bytes | None, int], parts: list[bytes]) -> None:
        """Feed the line's tokens to the statement-level rules; check each statement at its end."""
        view_parts = parts
        if self._wants_marks(body, parts):
            view, _, _ = self._lex(body, state[0], state[1], mark=True)
            if UNICODE_ID in view:
                raise refusal(
                    self.line_no,
                    f'a Unicode-escaped identifier (U&"…") "{excerpt(view)}"',
                    body,
                    "unicode_identifier",
                )
            view_parts = view.split(b";")
        last = len(view_parts) - 1
        for index, part in enumerate(view_parts):
            self._feed(part, body)
            if index < last:
                self._end_statement(body)

    def _feed(self, part: bytes, body: bytes) -> None:
        if self.routine is not None:
            self.routine.extend(token.lower() for token in TOKEN.findall(part))
            if len(self.routine) > MAX_ROUTINE_TOKENS:
                raise refusal(
                    self.line_no,
                    f"a CREATE FUNCTION/PROCEDURE longer than {MAX_ROUTINE_TOKENS} tokens "
                    "outside its quoted body",
                    body,
                    "routine_too_long",
                )
            return
        if self.head_done:
            return
        tokens = TOKEN.finditer(part)
        for found in tokens:
            self.head.append(found.group().lower())
            if len(self.head) >= HEAD_TOKENS:
                break
        if ROUTINE_HEAD.match(b" ".join(self.head[:4])):
            self.routine = [*self.head, *(found.group().lower() for found in tokens)]
            return
        if len(self.head) >= HEAD_TOKENS:
            self.head_done = True
            self._check_head(self.head, body)

    def _end_statement(self, body: bytes) -> None:
        if self.routine is not None:
            self._check_head(self.routine[:HEAD_TOKENS], body)
            self._check_routine(self.routine, body)
        elif not self.head_done and self.head:
            self._check_head(self.head, body)
        self.head = []
        self.head_done = False
        self.routine = None

    def _refuse_statement(self, what: str, tokens: list[bytes], body: bytes, problem: str) -> None:
        shown = excerpt(b" ".join(tokens[:24]).replace(LIT, b"'...'"))
        raise refusal(self.line_no, f'{what} "{shown}"', body, problem)

    def _check_head(self, tokens: list[bytes], body: bytes) -> None:
        head = b" ".join(tokens)
        for rule, what, problem in HEAD_RULES:
            if rule.search(head):
                self._refuse_statement(what, tokens, body, problem)
        if UNICODE_ID in tokens:
            self._refuse_statement(
                'a Unicode-escaped identifier (U&"…")', tokens, body, "unicode_identifier"
            )
        if b"statement_timeout" in tokens:
            self._refuse_statement(DANGERS["timeout"][1], tokens, body, "timeout")
        first = tokens[0] if tokens else b""
        if first == b"set":
            self._check_set(tokens, body)
        if first in WRITE_VERBS:
            for index, token in enumerate(tokens[:-1]):
                if token == b"(":
                    break
                if tokens[index + 1] == b"." and token in SYSTEM_SCHEMAS:
                    self._refuse_statement(
                        "a statement that writes or defines objects in a system schema "
                        f"({token.decode()})",
                        tokens,
                        body,
                        "system_catalog",
                    )
        if first == b"create" and b"extension" in tokens[:3] and b"schema" in tokens:
            at = tokens.index(b"schema")
            name = tokens[tokens.index(b"extension") + 1 :][:4]
            if (
                tokens[at + 1 : at + 2]
                and tokens[at + 1] in SYSTEM_SCHEMAS
                and (b"plpgsql" not in name)
            ):
                self._refuse_statement(
                    "CREATE EXTENSION into a system schema", tokens, body, "system_catalog"
                )

    def _check_set(self, tokens: list[bytes], body: bytes) -> None:
        at = 1
        if tokens[1:2] == [b"local"] or (
            tokens[1:2] == [b"session"] and tokens[2:3] != [b"characteristics"]
        ):
            at = 2
        name = tokens[at] if len(tokens) > at else b""
        if name not in ALLOWED_SETTINGS or (at == 2 and name == b"session"):
            shown = "a quoted name" if not SIMPLE_ID.fullmatch(name) else repr(name.decode())
            allowed = ", ".join(sorted(n.decode() for n in ALLOWED_SETTINGS))
            self._refuse_statement(
                f"SET of {shown} (a dump may set only: {allowed})", tokens, body, "setting"
            )
        if name in (b"standard_conforming_strings", b"client_encoding") and (
            SETTING_OK.fullmatch(body) is None
        ):  # a quoted name hides the setting from DANGER: only pg_dump's own line
            self._refuse_statement(
                "a setting that changes how psql reads quotes", tokens, body, "quoting_mode"
            )
        if name == b"search_path":
            value = tokens[at + 2 :] if tokens[at + 1 : at + 2] in ([b"="], [b"to"]) else []
            problem = search_path_problem(b" ".join(value).split(b","))
            if LIT in value:
                problem = "gives search_path quoted names"
            if problem:
                self._refuse_statement(
                    f"a SET search_path that {problem}", tokens, body, "search_path"
                )

    def _check_routine(self, tokens: list[bytes], body: bytes) -> None:
        """CREATE FUNCTION/PROCEDURE: only in sql or plpgsql, never a C object file."""
        allowed = " and ".join(sorted(n.decode() for n in ROUTINE_LANGUAGES))
        zero = depth_zero(tokens)
        for index, token in enumerate(zero):
            after = zero[index + 1 : index + 3]
            if token == b"language" and (index == 0 or zero[index - 1] != b"."):
                language = after[0] if after else b""
                if language not in ROUTINE_LANGUAGES:
                    shown = (
                        repr(language.decode("utf-8", "replace"))
                        if SIMPLE_ID.fullmatch(language)
                        else "a quoted or missing name"
                    )
                    self._refuse_statement(
                        f"a function or procedure in language {shown} (only {allowed} are allowed)",
                        tokens,
                        body,
                        "routine_language",
                    )
            elif token == b"as" and after == [LIT, b","]:
                self._refuse_statement(
                    "a function loaded from a server library (AS 'file', 'symbol')",
                    tokens,
                    body,
                    "routine_language",
                )
            elif token == b"statement_timeout":
                self._refuse_statement(DANGERS["timeout"][1], tokens, body, "timeout")

    def _check_copy(self, head: bytes, body: bytes, index: int, count: int) -> None:
        if COPY_OUT.match(head):
            return
        if not COPY_IN.match(head) or re.search(rb"(?i)\bbinary\b", body):
            raise refusal(
                self.line_no,
                f'COPY from or to a server file (only COPY … FROM stdin is) "{excerpt(head)}"',
                body,
                "copy_file",
            )
        if index != count - 2:
            raise refusal(
                self.line_no,
                f'a COPY … FROM stdin that does not end its line "{excerpt(head)}"',
                body,
                "copy_layout",
            )
        self.in_copy = True

    def _check_setting(self, body: bytes) -> None:
        found = SETTING_OK.fullmatch(body)
        path = found.group("path") if found is not None else None
        problem = search_path_problem(path.split(b",")) if path else ""
        if problem:
            raise refusal(
                self.line_no, f'a set_config that {problem} "{excerpt(body)}"', body, "search_path"
            )
        encoding = found.group("enc") if found is not None else None
        normalized = encoding.upper().replace(b"_", b"").replace(b"-", b"") if encoding else b""
        if found is None or (encoding is not None and normalized.decode() not in SAFE_ENCODINGS):
            raise refusal(
                self.line_no,
                "a setting that changes how psql reads quotes (standard_conforming_strings, "
                f'client_encoding or set_config) "{excerpt(body)}"',
                body,
                "quoting_mode",
            )

    def _only_blank_after(self, parts: list[bytes], first: int, body: bytes) -> None:
        if any(part.strip() for part in parts[first:]):
            raise refusal(
                self.line_no,
                "a statement sharing its line with a GRANT/REVOKE/OWNER TO",
                body,
                "mixed_line",
            )

    def _scan(self, body: bytes) -> bytes:
        """Blank literals and comments, tracking psql's lexer state across lines."""
        code, self.quote, self.depth = self._lex(body, self.quote, self.depth, mark=False)
        return code

    def _lex(
        self, body: bytes, quote: bytes | None, depth: int, *, mark: bool
    ) -> tuple[bytes, bytes | None, int]:
        """scan_line, a literal psql and the server could end differently refused."""
        try:
            return scan_line(body, quote, depth, mark=mark)
        except Ambiguous as error:
            raise refusal(
                self.line_no,
                f"{error} (psql and the server could read where it ends differently)",
                body,
                "ambiguous_quote",
            ) from None

    def _meta(self, text: bytes) -> Exception:
        return refusal(self.line_no, f'psql meta-command "{excerpt(text)}"', text, "psql_meta")

    def finish(self) -> None:
        """EOF ends a COPY data block for psql too; psql runs an unterminated last statement."""
        if not self.in_copy and not self.dropping and (self.head or self.routine):
            self._end_statement(b"")
