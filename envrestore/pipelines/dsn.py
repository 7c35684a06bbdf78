"""Database DSNs: parsed once, shown only masked, passwords resolved at use time.

A DSN may name its password indirectly (`?password_env=VAR`, `?password_file=/path`)
so the ledger, job payloads and logs never need to hold it (DESIGN.md, secrets).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from envrestore.pipelines.errors import BadInput

Engine = Literal["mariadb", "postgresql"]

_SCHEMES: dict[str, Engine] = {
    "mariadb": "mariadb",
    "mysql": "mariadb",
    "postgresql": "postgresql",
    "postgres": "postgresql",
}
_DEFAULT_PORTS: dict[Engine, int] = {"mariadb": 3306, "postgresql": 5432}
_DEFAULT_HOST = "127.0.0.1"


@dataclass(frozen=True)
class Dsn:
    """Where a site database lives; `str()` and `repr()` never show the password."""

    engine: Engine
    host: str
    port: int
    user: str | None
    password: str | None = field(default=None, repr=False)
    database: str = ""
    socket: str | None = None
    params: dict[str, str] = field(default_factory=dict, hash=False)

    def __str__(self) -> str:
        return self.masked()

    @property
    def has_password(self) -> bool:
        return (
            self.password is not None
            or "password_env" in self.params
            or "password_file" in self.params
        )

    def masked(self) -> str:
        """The DSN as a URL with the password shown as `***` (safe for logs and errors)."""
        userinfo = ""
        if self.user is not None:
            userinfo = quote(self.user, safe="")
            if self.has_password:
                userinfo += ":***"
            userinfo += "@"
        elif self.has_password:
            userinfo = ":***@"
        query = dict(self.params)
        if self.socket is not None:
            query["host" if self.engine == "postgresql" else "socket"] = self.socket
        suffix = f"?{urlencode(query)}" if query else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (
            f"{self.engine}://{userinfo}{host}:{self.port}/{quote(self.database, safe='')}{suffix}"
        )

    def with_database(self, name: str) -> Dsn:
        """The same server and credentials, another database (shadow databases, tests)."""
        _check_database_name(name, self.masked())
        return dataclasses.replace(self, database=name)

    def resolve_password(self) -> str | None:
        """The password, read now from the DSN, an environment variable or a file."""
        if self.password is not None:
            return self.password
        var = self.params.get("password_env")
        if var is not None:
            value = os.environ.get(var)
            if value is None:
                raise BadInput(
                    f"DSN {self.masked()} takes its password from environment variable "
                    f"{var}, which is not set; export it for the workers",
                    variable=var,
                )
            return value
        path = self.params.get("password_file")
        if path is not None:
            try:
                text = Path(path).expanduser().read_text(encoding="utf-8")
            except OSError as exc:
                raise BadInput(
                    f"DSN {self.masked()} takes its password from {path}, which cannot be "
                    f"read ({exc.strerror}); create it readable by the workers",
                    path=path,
                ) from exc
            return text.rstrip("\r\n")
        return None


def mask_dsn_text(text: str) -> str:
    """Mask the password of a DSN string that may not even parse (for error messages)."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        return text
    head, qmark, query = rest.partition("?")
    userinfo, at, hostpart = head.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    masked_query = "&".join(
        f"{part.split('=', 1)[0]}=***" if part.lower().startswith("password=") else part
        for part in query.split("&")
    )
    return f"{scheme}://{userinfo}{at}{hostpart}{qmark}{masked_query}"


def _bad(text: str, problem: str) -> BadInput:
    return BadInput(f"invalid database DSN {mask_dsn_text(text)!r}: {problem}")


def _check_database_name(name: str, shown: str) -> None:
    if not name or "/" in name or "\0" in name:
        raise BadInput(
            f"invalid database name {name!r} for {shown}: it must be non-empty, without '/' or NUL"
        )


def parse_dsn(text: str) -> Dsn:
    """Parse `mariadb://`, `mysql://`, `postgresql://` or `postgres://` URLs.

    Unix sockets: `?host=/dir` (PostgreSQL socket directory) or `?socket=/path`
    (MariaDB socket file). Other query parameters are kept in `params`.
    """
    try:
        parts = urlsplit(text.strip())
    except ValueError as exc:
        raise _bad(text, str(exc)) from exc
    engine = _SCHEMES.get(parts.scheme.lower())
    if engine is None:
        raise _bad(
            text,
            f"unknown scheme {parts.scheme!r}; use mariadb://, mysql://, postgresql:// "
            "or postgres://",
        )
    try:
        port = parts.port or _DEFAULT_PORTS[engine]
    except ValueError as exc:
        raise _bad(text, "the port is not a number between 0 and 65535") from exc
    database = unquote(parts.path.lstrip("/"))
    if not database:
        raise _bad(text, "the database name is missing; add it as the path, e.g. .../sitedb")
    if "/" in database or "\0" in database:
        raise _bad(text, "the database name must not contain '/' or NUL")
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    password = unquote(parts.password) if parts.password is not None else None
    if "password" in params:
        if password is not None:
            raise _bad(text, "the password is given twice (in the URL and as ?password=)")
        password = params.pop("password")
    indirect = [key for key in ("password_env", "password_file") if key in params]
    if len(indirect) + (password is not None) > 1:
        raise _bad(
            text, "give the password one way only: in the URL, ?password_env= or ?password_file="
        )
    for key in indirect:
        if not params[key]:
            raise _bad(text, f"?{key}= is empty")
    socket: str | None = None
    socket_key = "host" if engine == "postgresql" else "socket"
    if socket_key in params:
        socket = params.pop(socket_key)
        if not socket.startswith("/"):
            raise _bad(text, f"?{socket_key}= must be an absolute socket path")
    host = parts.hostname or _DEFAULT_HOST
    user = unquote(parts.username) if parts.username else None
    return Dsn(
        engine=engine,
        host=host,
        port=port,
        user=user,
        password=password,
        database=database,
        socket=socket,
        params=params,
    )
