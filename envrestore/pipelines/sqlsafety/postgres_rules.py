"""What the PostgreSQL filter allows and refuses: the rule tables postgres.py applies.

Kept apart from the filter's reading of the stream (postgres.py) so the policy
reads as one list: extensions, encodings, settings, dangerous functions and
statement heads.
"""

from __future__ import annotations

import re

#: Extensions a dump may create: trusted or data-only ones, nothing reaching files or servers.
DEFAULT_EXTENSIONS = frozenset(
    {
        "plpgsql",
        "pg_trgm",
        "unaccent",
        "hstore",
        "uuid-ossp",
        "citext",
        "pgcrypto",
        "fuzzystrmatch",
        "btree_gin",
        "btree_gist",
        "intarray",
        "ltree",
        "cube",
        "earthdistance",
        "tablefunc",
        "isn",
        "seg",
        "tsm_system_rows",
        "tsm_system_time",
        "postgis",
        "postgis_topology",
        "vector",
        "bloom",
        "dict_int",
        "pg_stat_statements",
    }
)

RESTRICT = re.compile(rb"\\(?:un)?restrict [A-Za-z0-9]+[ \t]*")

SAFE_ENCODINGS = frozenset(
    {
        "UTF8",
        "UNICODE",
        "SQLASCII",
        "EUCJP",
        "EUCKR",
        "EUCCN",
        "EUCTW",
        "EUCJIS2004",
        "MULEINTERNAL",
        "KOI8R",
        "KOI8U",
        "WIN866",
        "WIN874",
    }
    | {f"LATIN{n}" for n in range(1, 11)}
    | {f"WIN{n}" for n in range(1250, 1259)}
    | {f"ISO8859{n}" for n in range(5, 9)}
)

# What a statement may start with, and what happens to it.
DROP_START = re.compile(
    rb"(?i)(?:GRANT|REVOKE|ALTER\s+DEFAULT\s+PRIVILEGES)\b|ALTER\b.*\bOWNER\s+TO\b"
)
REFUSE_START: dict[str, tuple[bytes, str]] = {
    "do": (rb"DO\b", "an anonymous code block (DO)"),
    "call": (rb"CALL\b", "CALL of a procedure"),
    "load": (rb"LOAD\b", "LOAD of a server library"),
    "import_foreign": (rb"IMPORT\s+FOREIGN\b", "IMPORT FOREIGN SCHEMA"),
}
REFUSE_START_RE = re.compile(
    b"|".join(b"(?P<" + k.encode() + b">" + rx + b")" for k, (rx, _) in REFUSE_START.items()),
    re.I,
)
SELECT = re.compile(rb"(?i)SELECT\b")
SELECT_OK = re.compile(
    rb"(?i)SELECT\s+pg_catalog\.(?:set_config|setval|lo_create|lo_open|lowrite|lo_close"
    rb"|lo_unlink)\s*\("
)
COPY = re.compile(rb"(?i)COPY\b")
COPY_IN = re.compile(rb"(?is)COPY\s+.+?\s+FROM\s+STDIN\b")
COPY_OUT = re.compile(rb"(?is)COPY\s+.+?\s+TO\s+STDOUT\b")
EXTENSION = re.compile(
    rb'(?i)\s*CREATE\s+EXTENSION\s+(?:IF\s+NOT\s+EXISTS\s+)?(?:"(?P<q>[^"]+)"|(?P<n>[\w-]+))'
)
EXTENSION_START = re.compile(rb"(?i)CREATE\s+EXTENSION\b")

DANGERS: dict[str, tuple[bytes, str]] = {
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
    "timeout": (
        rb"\bstatement_timeout\b",
        "a change of statement_timeout (the restore sets the import's time limits)",
    ),
    "reset": (
        rb"\bRESET\s+(?:ALL|ROLE|SESSION)\b|\bDISCARD\s+ALL\b",
        "a reset of the session's role or settings (RESET ALL/ROLE, DISCARD ALL)",
    ),
    "system_catalog": (
        rb"\bSET\s+SCHEMA\s+(?:pg_catalog|information_schema)\b",
        "a statement that moves an object into a system schema",
    ),
    "quoting_mode": (
        rb"\bstandard_conforming_strings\b|\bclient_encoding\b|\bSET\s+NAMES\b|\bset_config\s*\(",
        "",  # checked against the raw line: see _check_setting
    ),
}
DANGER = re.compile(
    b"|".join(b"(?P<" + k.encode() + b">" + rx + b")" for k, (rx, _) in DANGERS.items()),
    re.I,
)
SETTING_OK = re.compile(
    rb"(?i)\s*(?:SET\s+standard_conforming_strings\s*(?:=|TO)\s*'?on'?"
    rb"|SELECT\s+pg_catalog\.set_config\('search_path',\s*'(?P<path>[^']*)',\s*false\)"
    rb"|SET\s+(?:client_encoding\s*(?:=|TO)|NAMES)\s*'?(?P<enc>[\w-]+)'?)\s*;\s*"
)


#: pg_dump's own first statement: the restore sets the import's time limits itself.
TIMEOUT_ZERO = re.compile(rb"(?i)\s*SET\s+statement_timeout\s*(?:=|TO)\s*'?0'?\s*;\s*")
#: How many tokens of each statement the statement-level rules read (across lines).
HEAD_TOKENS = 64
#: Longest CREATE FUNCTION/PROCEDURE outside its quoted body the filter reads (tokens).
MAX_ROUTINE_TOKENS = 100_000
#: Languages a dumped function may be written in (trusted, no file or shell access).
ROUTINE_LANGUAGES = frozenset({b"sql", b"plpgsql"})
#: Settings a dump may SET (what pg_dump and common tools emit); anything else is refused.
ALLOWED_SETTINGS = frozenset(
    {
        b"lock_timeout",
        b"idle_in_transaction_session_timeout",
        b"transaction_timeout",
        b"client_encoding",
        b"names",
        b"standard_conforming_strings",
        b"check_function_bodies",
        b"xmloption",
        b"client_min_messages",
        b"row_security",
        b"default_tablespace",
        b"default_table_access_method",
        b"default_with_oids",
        b"search_path",
        b"escape_string_warning",
        b"timezone",
        b"time",
        b"datestyle",
        b"intervalstyle",
        b"extra_float_digits",
        b"bytea_output",
        b"synchronous_commit",
        b"transaction",
        b"constraints",
        b"session",
    }
)
SYSTEM_SCHEMAS = frozenset({b"pg_catalog", b"information_schema"})
SYSTEM_QUOTED = (b'"pg_catalog"', b'"information_schema"')
#: Statements whose rules read quoted names and values (the token view with markers).
MARKED_VERBS = frozenset({b"set", b"create", b"alter", b"reset"})
MARKED_START = re.compile(rb"(?i)\s*(?:SET|CREATE|ALTER|RESET)\b")
ROUTINE_HEAD = re.compile(rb"create (?:or replace )?(?:function|procedure)\b")
WRITE_VERBS = frozenset(
    {
        b"insert",
        b"update",
        b"delete",
        b"truncate",
        b"merge",
        b"copy",
        b"lock",
        b"alter",
        b"create",
        b"drop",
        b"comment",
        b"security",
        b"refresh",
        b"reindex",
        b"cluster",
        b"vacuum",
        b"analyze",
        b"import",
    }
)
HEAD_RULES: tuple[tuple[re.Pattern[bytes], str, str], ...] = tuple(
    (re.compile(rx), what, problem)
    for rx, what, problem in (
        (rb"^(?:create|alter|drop) (?:role|user|group)\b", "a role statement", "role"),
        (
            rb"^(?:set|reset) (?:session |local )?(?:role|session_authorization"
            rb"|session authorization)\b",
            "a change of the session's role",
            "role",
        ),
        (rb"^reset (?:all|role|statement_timeout)\b|^discard\b", "a reset of the session", "reset"),
        (rb"^alter system\b", "ALTER SYSTEM", "alter_system"),
        (rb"^(?:create|alter|drop) database\b", "a statement on a database", "database"),
        (
            rb"^(?:create|alter|drop) (?:foreign data wrapper|server|tablespace|subscription"
            rb"|publication|user mapping|event trigger)\b"
            rb"|^create (?:or replace )?(?:trusted )?(?:procedural )?language\b"
            rb"|^(?:create|alter|drop) (?:or replace )?(?:procedural )?language\b"
            rb"|^create (?:or replace )?transform\b",
            "a server-level object (foreign server, tablespace, language, event trigger, …)",
            "server_objects",
        ),
        (
            rb"^(?:create|alter|drop) schema (?:if (?:not )?exists )?"
            rb"(?:pg_catalog|information_schema)\b"
            rb"|\bset schema (?:pg_catalog|information_schema)\b",
            "a statement on a system schema (pg_catalog, information_schema)",
            "system_catalog",
        ),
    )
)


def search_path_problem(items: list[bytes]) -> str:
    """Why a search_path value is refused ('' when it is fine).

    Unqualified CREATEs go to the first schema of the path: a system schema may
    only come last, after another one (old pg_dump: `SET search_path = public, pg_catalog`).
    """
    names = [item.strip().strip(b"'\"").strip().lower() for item in items]
    for position, name in enumerate(names):
        if name in SYSTEM_SCHEMAS and (position == 0 or position != len(names) - 1):
            return "puts a system schema (pg_catalog, information_schema) first in search_path"
    return ""
