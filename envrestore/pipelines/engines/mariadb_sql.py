"""SQL text for MariaDB's shadow databases: literals, accounts, object definitions.

Pure functions, no server: `MariaDbShadow` builds its scripts from these. Object
definitions (triggers, views, routines, events) are dicts read by
`MariaDbShadow._capture`: `kind`, `name`, `create`, `sql_mode`, `collation`.
"""

from __future__ import annotations

import re
from typing import Any

from envrestore.pipelines.engines.mariadb import quote_identifier
from envrestore.pipelines.engines.shadow import IMPORT_LOGIN_PREFIX
from envrestore.pipelines.errors import BadInput, EnvrestoreError

_q = quote_identifier


def lit(text: str) -> str:
    """A string literal immune to sql_mode (NO_BACKSLASH_ESCAPES) and quoting tricks."""
    return f"_utf8mb4 X'{text.encode('utf-8').hex()}'"


def unhex(value: str) -> str:
    return bytes.fromhex(value).decode("utf-8") if value != "NULL" else ""


def unescape_batch(value: str) -> str:
    """Undo the `mariadb --batch` escaping of \\0, \\t, \\n and \\\\ in a field."""
    out: list[str] = []
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            nxt = value[i + 1]
            out.append({"n": "\n", "t": "\t", "0": "\0", "\\": "\\"}.get(nxt, "\\" + nxt))
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def definer_clause(definer: str) -> str:
    if not definer:
        return ""
    user, at, host = definer.rpartition("@")
    return f"DEFINER={_q(user)}@{_q(host)} " if at else f"DEFINER={_q(definer)} "


#: Import users may connect over TCP (any host) or the socket (localhost).
LOGIN_HOSTS = ("%", "localhost")
_IMPORT_DEFINER = re.compile(
    r"DEFINER\s*=\s*`" + re.escape(IMPORT_LOGIN_PREFIX) + r"[A-Za-z0-9_]*`@`[^`]*`\s*"
)
_SERVER_ERROR = re.compile(r"ERROR (\d+) \(([0-9A-Z]{5})\)(?: at line (\d+))?: (.*)", re.S)


_SAFE_ACCOUNT = re.compile(r"[A-Za-z0-9_]+")


def denied(exc: EnvrestoreError) -> bool:
    """The server refused for lack of a privilege (not a broken statement)."""
    text = str(exc.data.get("stderr", exc.message)).lower()
    return "denied" in text or "privilege" in text


def login_accounts(user: str) -> list[str]:
    """`'user'@'host'` for each login host (account names take no hex literals)."""
    if not _SAFE_ACCOUNT.fullmatch(user):
        raise BadInput(f"invalid import user name {user!r}")
    return [f"'{user}'@'{host}'" for host in LOGIN_HOSTS]


def server_reason(stderr: str) -> tuple[str, dict[str, Any]]:
    """`line N: <server message> (MariaDB error E)` from the client's stderr, and its data."""
    found = _SERVER_ERROR.search(stderr)
    if found is None:
        return stderr.strip()[:500] or "the mariadb client failed", {}
    code, _state, line, message = found.groups()
    text = message.strip()[:300]
    data: dict[str, Any] = {"server_error": int(code)}
    if line:
        data["line"] = int(line)
        return f"line {line}: {text} (MariaDB error {code})", data
    return f"{text} (MariaDB error {code})", data


def without_import_definers(captured: dict[str, Any]) -> dict[str, Any]:
    """Objects the import user defined lose their DEFINER clause, so that when the DSN
    user recreates them (`MariaDbShadow.hand_over`) they are its own: the import
    user is dropped right after."""
    for obj in captured["objects"]:
        obj["create"] = _IMPORT_DEFINER.sub("", obj["create"])
    return captured


_DROP = {
    "TRIGGER": "TRIGGER",
    "VIEW": "VIEW",
    "PROCEDURE": "PROCEDURE",
    "FUNCTION": "FUNCTION",
    "EVENT": "EVENT",
}


def drops(database: str, objects: list[dict[str, str]], end: str = ";") -> str:
    seen: set[tuple[str, str]] = set()
    lines = []
    for obj in objects:
        key = (obj["kind"], obj["name"])
        if key in seen:
            continue
        seen.add(key)
        lines.append(f"DROP {_DROP[obj['kind']]} IF EXISTS {_q(database)}.{_q(obj['name'])}{end}\n")
    return "".join(lines)


def creates(database: str, objects: list[dict[str, str]]) -> str:
    """Statements (delimiter `;;`) recreating objects in `database` as they were defined."""
    lines = [f"USE {_q(database)};;\n"]
    for obj in objects:
        settings = []
        if obj.get("sql_mode") is not None and obj["kind"] != "VIEW":
            settings.append(f"sql_mode = {lit(obj['sql_mode'])}")
        if obj.get("collation"):
            settings.append(f"collation_connection = {lit(obj['collation'])}")
        if obj.get("time_zone"):
            settings.append(f"time_zone = {lit(obj['time_zone'])}")
        if settings:
            lines.append("SET SESSION " + ", ".join(settings) + ";;\n")
        lines.append(obj["create"] + ";;\n")
    return "".join(lines)


def ordered(objects: list[dict[str, str]]) -> list[dict[str, str]]:
    """Creation order: routines (views may call them), views after the views they name,
    then triggers and events."""
    views = [o for o in objects if o["kind"] == "VIEW"]
    done: list[dict[str, str]] = []
    pending = list(views)
    while pending:
        names = {o["name"] for o in pending}
        ready = [
            o
            for o in pending
            if not any(
                other != o["name"] and _q(other) in o["create"].split(" AS ", 1)[-1]
                for other in names
            )
        ]
        if not ready:  # a cycle cannot exist in valid views; keep the rest as listed
            ready = pending
        done += ready
        pending = [o for o in pending if o not in ready]
    routines = [o for o in objects if o["kind"] in ("PROCEDURE", "FUNCTION")]
    rest = [o for o in objects if o["kind"] in ("TRIGGER", "EVENT")]
    return routines + done + rest
