"""What the MariaDB filter allows, refuses and rewrites: the rule tables mariadb.py
applies (dangerous statements, quoting modes, database statements, DEFINERs,
collations), kept apart from the reading of the stream so the policy reads as
one list.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

#: Collations of newer servers rewritten to one MariaDB 10.x and MySQL 5.7+ both have.
DEFAULT_COLLATION_MAP: Mapping[str, str] = {
    "utf8mb4_0900_ai_ci": "utf8mb4_unicode_ci",
    "utf8mb4_0900_as_ci": "utf8mb4_unicode_ci",
    "utf8mb4_0900_as_cs": "utf8mb4_bin",
    "utf8mb4_0900_bin": "utf8mb4_bin",
    "utf8mb4_uca1400_ai_ci": "utf8mb4_unicode_ci",
    "utf8mb4_uca1400_as_ci": "utf8mb4_unicode_ci",
    "utf8mb4_uca1400_as_cs": "utf8mb4_bin",
    "utf8mb3_uca1400_ai_ci": "utf8mb3_unicode_ci",
}

#: MariaDB 11's first line; we pass --sandbox to the client ourselves where it exists.
SANDBOX_LINE = b"/*M!999999\\- enable the sandbox mode */"

# Complete literals and plain comments on one line, blanked to one space each.
LITERALS = (
    rb"'[^'\\]*(?:\\.[^'\\]*)*'"
    rb'|"[^"\\]*(?:\\.[^"\\]*)*"'
    rb"|`[^`\\]*`"
    rb"|/\*(?!M?!)[^*]*\*+(?:[^/*][^*]*\*+)*/"
    rb"|--(?:[ \t\r\n]|$).*"
    rb"|\#.*"
)
STRIP = re.compile(LITERALS, re.S)
# Anything left that opens a literal or comment: this line needs the slow scanner.
# A `--` left over is not followed by a space: refused by the scanner (see COMMENT_END).
LEFTOVER = re.compile(rb"['\"`]|/\*(?!M?!)|--")
OPEN = re.compile(rb"['\"`]|/\*(?!M?!)|--|\#")
#: What may follow `--` for the filter to read a comment. The client reads one after
#: any whitespace (and `--x` too at a statement's start), the server after whitespace
#: or a control byte: only these bytes make all three agree, any other is refused.
COMMENT_END = (b"", b" ", b"\t", b"\r", b"\n")
CLOSE = {
    b"'": re.compile(rb"[^'\\]*(?:\\.[^'\\]*)*'", re.S),
    b'"': re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*"', re.S),
    b"`": re.compile(rb"[^`]*`", re.S),
}
EXEC_MARK = re.compile(rb"/\*M?!\d*|\*/")
# The client ends a plain comment opened inside a /*! … */ on the same line only at
# the second `*/` (its "ss_comment" flag): such lines are read by the scanner.
EXEC_OPEN = re.compile(rb"/\*M?!")
NESTED_HINT = re.compile(rb"/\*M?!.*/\*(?!M?!)", re.S)
# The hot path: INSERT … VALUES rows whose unquoted parts are numbers, NULL and 0x hex.
# Letters only in NULL, 0x hex and exponents, `.` only inside a number: never a name.
SAFE_ROWS = re.compile(
    rb"(?:\s*INSERT\s+INTO\s+(?:\([\s,]*\)\s*)?VALUES\b)?"
    rb"(?:[\s,()+\-]|(?:NULL|0[xX][0-9a-fA-F]+|\d+(?:\.\d+)?(?:[eE][+\-]?\d+)?)(?![\w.$]))*"
    rb"(?:;\s*)?"
)
INSERT_PREFIX = re.compile(
    rb"INSERT\s+(?:IGNORE\s+)?INTO\s+`[^`'\"\\]*`\s*(?:\([^'\"\\;#/-]*\)\s*)?VALUES\b"
)
BACKSLASH = re.compile(rb"\\(?!N(?![A-Za-z0-9_]))")
CLIENT_WORD = re.compile(
    rb"(?i)(delimiter|system|source|connect|pager|nopager|tee|notee|charset|edit|exit|quit"
    rb"|go|ego|print|rehash|status|warnings|nowarning|prompt|clear|help|query_attributes"
    rb"|resetconnection|sandbox)(?=[\s;]|$)"
)
# Identifiers kept (sanitised to one token), string literals and comments blanked.
IDENT_OR_LITERAL = re.compile(LITERALS, re.S)
SANE_IDENT = re.compile(rb"[^\w$]")
IDENT = re.compile(rb"`[^`]*`")
TOKEN = rb"(?:`[^`]*`|[A-Za-z_$][\w$]*)"
QUALIFIED = re.compile(
    rb"(?<![\w$.`])(?P<a>" + TOKEN + rb")\s*\.\s*(?P<b>" + TOKEN + rb")"
    rb"(?P<c>\s*\.\s*" + TOKEN + rb")?(?P<call>\s*\()?"
)
#: A qualified name right after one of these names a table (or routine) in a database.
TABLE_POSITION = re.compile(
    rb"(?i)\b(?:FROM|JOIN|INTO|UPDATE|TABLE|TABLES|REFERENCES|CALL|DELETE|VIEW|TRIGGER"
    rb"|PROCEDURE|FUNCTION|EVENT|EXISTS|LIKE|TO|IGNORE|STRAIGHT_JOIN|HANDLER|DESCRIBE"
    rb"|EXPLAIN|ON\s+SCHEDULE)\s*\(?\s*$"
)
CLAUSE = re.compile(
    rb"(?i)\b(SELECT|FROM|JOIN|WHERE|SET|ON|GROUP|ORDER|HAVING|LIMIT|VALUES|USING|INTO"
    rb"|UPDATE|TABLE|TABLES|RETURN|THEN|ELSE|DO|BEGIN|WHEN|WRITE|READ)\b"
)
TABLE_LISTS = {b"FROM", b"JOIN", b"TABLE", b"TABLES", b"UPDATE", b"WRITE", b"READ"}
#: Schemas a dump never touches: the server's own.
SYSTEM_SCHEMAS = frozenset({"mysql", "information_schema", "performance_schema", "sys"})
MYSQL8 = re.compile(rb"-- MySQL dump [\d.]+\s+Distrib (8|9)\.")

DELIMITER_OK = re.compile(rb"[;$|%&~^@/]{1,16}")
NAME = rb"(?:`(?P<q>(?:[^`]|``)+)`|(?P<n>[A-Za-z0-9_$]+))"
DB_STATEMENT = re.compile(
    rb"(?i)(?P<kind>USE|CREATE\s+(?:DATABASE|SCHEMA)|DROP\s+(?:DATABASE|SCHEMA)"
    rb"|ALTER\s+(?:DATABASE|SCHEMA))\b"
)
DB_NAME = {
    b"USE": re.compile(rb"(?i)\s*USE\s+" + NAME),
    b"CREATE": re.compile(
        rb"(?i)\s*CREATE\s+(?:DATABASE|SCHEMA)\s+(?:IF\s+NOT\s+EXISTS\s+)?" + NAME
    ),
    b"DROP": re.compile(rb"(?i)\s*DROP\s+(?:DATABASE|SCHEMA)\s+(?:IF\s+EXISTS\s+)?" + NAME),
    b"ALTER": re.compile(rb"(?i)\s*ALTER\s+(?:DATABASE|SCHEMA)\s+" + NAME),
}
USE = re.compile(rb"(?i)\s*USE\b")
CURRENT_DATABASE = re.compile(rb"-- Current Database: " + NAME)

SAVED_VARS = rb"(?:OLD_SQL_MODE|SAVED_SQL_MODE|OLD_CHARACTER_SET_CLIENT|SAVED_CS_CLIENT)"
DANGERS: dict[str, tuple[bytes, str]] = {
    "grant": (rb"\bGRANT\b", "GRANT (privileges belong to the target server)"),
    "revoke": (rb"\bREVOKE\b", "REVOKE (privileges belong to the target server)"),
    "account": (
        rb"\b(?:CREATE|ALTER|DROP|RENAME)\s+(?:USER|ROLE)\b|\bSET\s+(?:DEFAULT\s+)?ROLE\b",
        "a user or role statement",
    ),
    "password": (rb"\bSET\s+PASSWORD\b", "SET PASSWORD"),
    "outfile": (rb"\bINTO\s+(?:OUTFILE|DUMPFILE)\b", "writing a server file (INTO OUTFILE)"),
    "load_data": (rb"\bLOAD\s+(?:DATA|XML)\b", "LOAD DATA/LOAD XML (reads files)"),
    "load_file": (rb"\bLOAD_FILE\s*\(", "LOAD_FILE() (reads server files)"),
    "plugin": (rb"\b(?:UN)?INSTALL\s+(?:PLUGIN|SONAME)\b|\bSONAME\b", "loading a plugin or UDF"),
    "shutdown": (rb"\bSHUTDOWN\b", "SHUTDOWN"),
    "kill": (rb"\bKILL\b", "KILL"),
    # The client changes its delimiter at `delimiter ` anywhere outside literals and
    # comments, and at a line starting `delimiterX`: only a line of its own (read by
    # the filter, with the statement empty) may do that.
    "client_delimiter": (
        rb"(?<![\w$@.])DELIMITER",
        "a DELIMITER command inside a statement (the client would change its delimiter there)",
    ),
    "database": (
        rb"\b(?:CREATE|DROP|ALTER)\s+(?:DATABASE|SCHEMA)\b",
        "a statement on another database",
    ),
    "use": (rb";\s*USE\b", "USE of another database"),
    "global": (
        rb"\bSET\s+(?:GLOBAL|PERSIST|PERSIST_ONLY)\b|@@(?:GLOBAL|PERSIST)\s*\.",
        "changing server-wide settings",
    ),
    "dynamic_sql": (
        rb"\bPREPARE\b|\bEXECUTE\b",
        "dynamic SQL (PREPARE/EXECUTE cannot be checked)",
    ),
    "call": (rb"\bCALL\b", "CALL of a stored procedure"),
    "server": (
        rb"\b(?:CREATE|ALTER|DROP)\s+(?:SERVER|TABLESPACE)\b",
        "a server or tablespace statement",
    ),
    "engine": (
        rb"\bENGINE\s*=?\s*(?:CONNECT|FEDERATED|FEDERATEDX|SPIDER|OQGRAPH)\b",
        "a table engine reaching outside the database",
    ),
    "directory": (rb"\b(?:DATA|INDEX)\s+DIRECTORY\b", "DATA/INDEX DIRECTORY"),
    "replication": (
        rb"\b(?:CHANGE\s+(?:MASTER|REPLICATION)|(?:START|STOP)\s+(?:SLAVE|REPLICA|ALL\s+SLAVES)"
        rb"|RESET\s+(?:MASTER|SLAVE|REPLICA)|PURGE\s+(?:BINARY|MASTER)\s+LOGS)\b"
        rb"|\bBINLOG\s*(?:;|$)",
        "a replication or binlog statement",
    ),
    "quoting_mode": (
        rb"@" + SAVED_VARS + rb"\s*:?=(?!\s*@@)\s*|\bINTO\b[^;]*@" + SAVED_VARS + rb"\b"
        rb"|\b(?:SQL_MODE|CHARACTER_SET_CLIENT)\s*:?=(?!\s*@@)\s*"
        rb"(?:@(?!" + SAVED_VARS + rb"\b)|[\w.]+\s*\(|\()",
        "an sql_mode or client charset that is not a plain value",
    ),
}
DANGER = re.compile(
    b"|".join(b"(?P<" + name.encode() + b">" + rx + b")" for name, (rx, _) in DANGERS.items()),
    re.I,
)
SENSITIVE_SET = re.compile(
    rb"(?i)\bSET\b[^;]*?\b(?:SQL_MODE|CHARACTER_SET_CLIENT|NAMES|CHARSET|CHARACTER\s+SET)\b"
)
BAD_MODE = re.compile(
    rb"(?i)\b(?:ANSI|ANSI_QUOTES|NO_BACKSLASH_ESCAPES|ORACLE|MSSQL|DB2|POSTGRESQL|MAXDB"
    rb"|BIG5|CP932|GBK|SJIS|GB18030)\b"
)
USER = rb"(?:`(?:[^`]|``)*`|'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[\w$.]+)"
HOST = rb"(?:`(?:[^`]|``)*`|'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[\w$.%:-]+)"
DEFINER = (
    rb"\bDEFINER\s*=\s*(?:CURRENT_USER(?:\s*\(\s*\))?|" + USER + rb"(?:\s*@\s*" + HOST + rb")?)"
)
