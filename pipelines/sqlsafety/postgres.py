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

from pipelines.sqlsafety.lines import FilterReport, LineFilter, excerpt, refusal, strip_eol

#: Extensions a dump may create: trusted or data-only ones, nothing reaching files or servers.
DEFAULT_EXTENSIONS = frozenset(
    {
        "plpgsql", "pg_trgm", "unaccent", "hstore", "uuid-ossp", "citext", "pgcrypto",
        "fuzzystrmatch", "btree_gin", "btree_gist", "intarray", "ltree", "cube",
        "earthdistance", "tablefunc", "isn", "seg", "tsm_system_rows", "tsm_system_time",
        "postgis", "postgis_topology", "vector", "bloom", "dict_int", "pg_stat_statements",
    }
)

_ID = rb"[\w$\x80-\xff]"
_LITERALS = (
    rb"(?<!" + _ID + rb")[eE]'[^'\\]*(?:\\.[^'\\]*)*'"
    rb"|'[^']*'"
    rb'|"[^"]*"'
    rb"|(?<!" + _ID + rb")\$(?P<tag>[A-Za-z_\x80-\xff][\w\x80-\xff]*|)\$.*?\$(?P=tag)\$"
    rb"|/\*(?:[^*/]|\*(?!/)|/(?!\*))*\*/"
    rb"|--.*"
)
_STRIP = re.compile(_LITERALS, re.S)
_OPENER = (
    rb"(?<!" + _ID + rb")[eE]'|'|\""
    rb"|(?<!" + _ID + rb")\$(?:[A-Za-z_\x80-\xff][\w\x80-\xff]*)?\$|/\*"
)
_LEFTOVER = re.compile(_OPENER)
_OPEN = re.compile(_OPENER + rb"|--")
_CLOSE = {
    b"'": re.compile(rb"[^']*'"),
    b"E": re.compile(rb"[^'\\]*(?:\\.[^'\\]*)*'", re.S),
    b'"': re.compile(rb'[^"]*"'),
}
_COMMENT_MARK = re.compile(rb"/\*|\*/")
_RESTRICT = re.compile(rb"\\(?:un)?restrict [A-Za-z0-9]+[ \t]*")

_SAFE_ENCODINGS = frozenset(
    {"UTF8", "UNICODE", "SQLASCII", "EUCJP", "EUCKR", "EUCCN", "EUCTW", "EUCJIS2004",
     "MULEINTERNAL", "KOI8R", "KOI8U", "WIN866", "WIN874"}
    | {f"LATIN{n}" for n in range(1, 11)}
    | {f"WIN{n}" for n in range(1250, 1259)}
    | {f"ISO8859{n}" for n in range(5, 9)}
)

# What a statement may start with, and what happens to it.
_DROP_START = re.compile(
    rb"(?i)(?:GRANT|REVOKE|ALTER\s+DEFAULT\s+PRIVILEGES)\b|ALTER\b.*\bOWNER\s+TO\b"
)
_REFUSE_START: dict[str, tuple[bytes, str]] = {
    "do": (rb"DO\b", "an anonymous code block (DO)"),
    "call": (rb"CALL\b", "CALL of a procedure"),
    "load": (rb"LOAD\b", "LOAD of a server library"),
    "import_foreign": (rb"IMPORT\s+FOREIGN\b", "IMPORT FOREIGN SCHEMA"),
}
_REFUSE_START_RE = re.compile(
    b"|".join(b"(?P<" + k.encode() + b">" + rx + b")" for k, (rx, _) in _REFUSE_START.items()),
    re.I,
)
_SELECT = re.compile(rb"(?i)SELECT\b")
_SELECT_OK = re.compile(
    rb"(?i)SELECT\s+pg_catalog\.(?:set_config|setval|lo_create|lo_open|lowrite|lo_close"
    rb"|lo_unlink)\s*\("
)
_COPY = re.compile(rb"(?i)COPY\b")
_COPY_IN = re.compile(rb"(?is)COPY\s+.+?\s+FROM\s+STDIN\b")
_COPY_OUT = re.compile(rb"(?is)COPY\s+.+?\s+TO\s+STDOUT\b")
_EXTENSION = re.compile(
    rb'(?i)\s*CREATE\s+EXTENSION\s+(?:IF\s+NOT\s+EXISTS\s+)?(?:"(?P<q>[^"]+)"|(?P<n>[\w-]+))'
)
_EXTENSION_START = re.compile(rb"(?i)CREATE\s+EXTENSION\b")

_DANGERS: dict[str, tuple[bytes, str]] = {
    "server_files": (
        rb"\b(?:lo_import|lo_export|pg_read_file|pg_read_binary_file|pg_ls_dir|pg_stat_file"
        rb"|pg_file_write|pg_file_rename|pg_file_unlink|pg_logdir_ls|pg_ls_logdir|pg_ls_waldir"
        rb"|pg_ls_tmpdir|pg_ls_archive_statusdir)\s*\(",
        "a function reading or writing server files",
    ),
    "dblink": (rb"\bdblink\w*\s*\(", "dblink (connections to other databases)"),
    "server_admin": (
        rb"\b(?:pg_terminate_backend|pg_cancel_backend|pg_reload_conf|pg_rotate_logfile"
        rb"|pg_promote)\s*\(",
        "a server administration function",
    ),
    "copy_program": (rb"\bCOPY\b[^;]*\bPROGRAM\b", "COPY … PROGRAM (runs a shell command)"),
    "alter_system": (rb"\bALTER\s+SYSTEM\b", "ALTER SYSTEM"),
    "role": (
        rb"\b(?:CREATE|ALTER|DROP)\s+(?:ROLE|USER|GROUP)\b|\bSET\s+(?:SESSION\s+|LOCAL\s+)?ROLE\b"
        rb"|\bSESSION\s+AUTHORIZATION\b",
        "a role statement (roles belong to the target server)",
    ),
    "database": (rb"\b(?:CREATE|ALTER|DROP)\s+DATABASE\b", "a statement on a database"),
    "server_objects": (
        rb"\b(?:CREATE|ALTER|DROP)\s+(?:FOREIGN\s+DATA\s+WRAPPER|SERVER|TABLESPACE|SUBSCRIPTION"
        rb"|PUBLICATION)\b|\bUSER\s+MAPPING\b"
        rb"|\bCREATE\s+(?:OR\s+REPLACE\s+)?(?:TRUSTED\s+)?(?:PROCEDURAL\s+)?LANGUAGE\b",
        "a server-level object (foreign server, tablespace, language, …)",
    ),
    "quoting_mode": (
        rb"\bstandard_conforming_strings\b|\bclient_encoding\b|\bSET\s+NAMES\b|\bset_config\s*\(",
        "",  # checked against the raw line: see _check_setting
    ),
}
_DANGER = re.compile(
    b"|".join(b"(?P<" + k.encode() + b">" + rx + b")" for k, (rx, _) in _DANGERS.items()),
    re.I,
)
_SETTING_OK = re.compile(
    rb"(?i)\s*(?:SET\s+standard_conforming_strings\s*(?:=|TO)\s*'?on'?"
    rb"|SELECT\s+pg_catalog\.set_config\('search_path',\s*'[^']*',\s*false\)"
    rb"|SET\s+(?:client_encoding\s*(?:=|TO)|NAMES)\s*'?(?P<enc>[\w-]+)'?)\s*;\s*"
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

    def feed_block(self, block: bytes) -> bytes:
        pieces: list[bytes] = []
        done = 0
        start = 0
        size = len(block)
        while start < size:
            if self.in_copy:
                end = _copy_end(block, start)
                stop = size if end < 0 else end
                rows = block.count(b"\n", start, stop)
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
        self.report.lines = self.line_no
        if not pieces:
            return block
        pieces.append(block[done:])
        return b"".join(pieces)

    def check_line(self, line: bytes) -> bytes | None:
        body = strip_eol(line)
        if self.quote is None and self.statement_empty and body[:1] == b"\\":
            if _RESTRICT.fullmatch(body):
                return None
            raise self._meta(body)
        if self.quote is None:
            code = _STRIP.sub(b" ", body)
            if _LEFTOVER.search(code):
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
        danger = _DANGER.search(code)
        if danger is not None:
            name = danger.lastgroup or "unsafe"
            if name == "quoting_mode":
                self._check_setting(body)
            else:
                raise refusal(
                    self.line_no,
                    f'{_DANGERS[name][1]} "{excerpt(code[danger.start() :])}"',
                    body,
                    name,
                )
        for index, part in enumerate(parts):
            head = part.lstrip()
            if not head or not (index or self.statement_empty):
                continue
            if _DROP_START.match(head):
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
        self.report.statements += len(parts) - 1
        if len(parts) > 1:
            self.statement_empty = not parts[-1].strip()
        elif parts[0].strip():
            self.statement_empty = False
        return result

    def _check_start(self, head: bytes, body: bytes, index: int, count: int) -> None:
        refused = _REFUSE_START_RE.match(head)
        if refused is not None:
            name = refused.lastgroup or "unsafe"
            raise refusal(
                self.line_no, f'{_REFUSE_START[name][1]} "{excerpt(head)}"', body, name
            )
        if _SELECT.match(head) and not _SELECT_OK.match(head):
            raise refusal(
                self.line_no,
                f'a top-level SELECT other than pg_dump\'s own "{excerpt(head)}"',
                body,
                "select",
            )
        if _COPY.match(head):
            self._check_copy(head, body, index, count)
        if _EXTENSION_START.match(head):
            found = _EXTENSION.match(body) if index == 0 else None
            raw = (found.group("q") or found.group("n")) if found else b""
            name = raw.decode("utf-8", "replace")
            if name.lower() not in self.extensions:
                raise refusal(
                    self.line_no,
                    f'CREATE EXTENSION of {name or "an unreadable name"!r} (not in the '
                    "allowed list)",
                    body,
                    "extension",
                )

    def _check_copy(self, head: bytes, body: bytes, index: int, count: int) -> None:
        if _COPY_OUT.match(head):
            return
        if not _COPY_IN.match(head) or re.search(rb"(?i)\bbinary\b", body):
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
        found = _SETTING_OK.fullmatch(body)
        encoding = found.group("enc") if found is not None else None
        normalized = encoding.upper().replace(b"_", b"").replace(b"-", b"") if encoding else b""
        if found is None or (encoding is not None and normalized.decode() not in _SAFE_ENCODINGS):
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
        out: list[bytes] = []
        pos = 0
        size = len(body)
        quote = self.quote
        while pos < size:
            if quote is None:
                found = _OPEN.search(body, pos)
                if found is None:
                    out.append(body[pos:])
                    break
                out.append(body[pos : found.start()])
                out.append(b" ")
                token = found.group()
                pos = found.end()
                if token == b"--":
                    break
                if token == b"/*":
                    quote, self.depth = token, 1
                elif token[:1] in (b"e", b"E"):
                    quote = b"E"
                else:
                    quote = token
            elif quote == b"/*":
                mark = _COMMENT_MARK.search(body, pos)
                if mark is None:
                    break
                pos = mark.end()
                self.depth += 1 if mark.group() == b"/*" else -1
                if self.depth == 0:
                    quote = None
            elif quote[:1] == b"$":
                close = body.find(quote, pos)
                if close < 0:
                    break
                pos = close + len(quote)
                quote = None
            else:
                closing = _CLOSE[quote].match(body, pos)
                if closing is None:
                    break
                pos = closing.end()
                quote = None
        self.quote = quote
        return b"".join(out)

    def _meta(self, text: bytes) -> Exception:
        return refusal(self.line_no, f'psql meta-command "{excerpt(text)}"', text, "psql_meta")

    def finish(self) -> None:
        """EOF ends a COPY data block for psql too; nothing is left to check."""


def _copy_end(block: bytes, start: int) -> int:
    """Index just after psql's end-of-data line (`\\.`) in block[start:], or -1."""
    at = start
    while True:
        if block.startswith(b"\\.", at):
            rest = block[at + 2 : at + 4]
            if rest[:1] == b"\n":
                return at + 3
            if rest == b"\r\n":
                return at + 4
            if at + 2 == len(block):  # `\.` as the unterminated last line
                return at + 2
        found = block.find(b"\n\\.", at)
        if found < 0:
            return -1
        at = found + 1
