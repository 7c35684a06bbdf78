"""API bearer tokens: made once, stored as a digest, scoped to sites and actions.

A token reads `envr_<id>_<secret>`. The prefix makes a leaked token easy to
recognise (secret scanners, logs); the 16-hex id finds its row with one
primary-key lookup; the secret is 256 random bits (`secrets.token_urlsafe(32)`).
The ledger keeps only SHA-256 of the secret: a secret of that entropy cannot
be guessed from its digest, so a slow password hash would only cost every
request time without making a stolen table more useful (docs/architecture.md,
"API tokens"). Digests are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import structlog

from envrestore.pipelines.errors import BadInput, Conflict, NotFound
from envrestore.pipelines.jobs.principal import Principal
from envrestore.pipelines.ledger.queries import sql
from envrestore.pipelines.ledger.types import Conn

log = structlog.get_logger(__name__)

SCOPES = ("read", "backup", "restore", "import", "link", "admin")
PREFIX = "envr_"
#: Longest lifetime `--expires` accepts (ten years); no expiry at all is None.
MAX_EXPIRES_DAYS = 3650

_ID_HEX = 16
_SECRET_BYTES = 32
_TOKEN = re.compile(rf"^{PREFIX}(?P<id>[0-9a-f]{{{_ID_HEX}}})_(?P<secret>[A-Za-z0-9_-]{{43}})$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,99}$")  # a Principal's name
# Hashed when the id is unknown, so an unknown id costs what a known one does.
_DUMMY_DIGEST = hashlib.sha256(b"envrestore-no-such-token").hexdigest()


@dataclass(frozen=True)
class TokenGrant:
    """What an authenticated token may do: which sites (None: all) and which actions."""

    token_id: str
    name: str
    sites: frozenset[str] | None
    scopes: frozenset[str]
    principal: Principal

    def may_see(self, site: str) -> bool:
        """Whether the token reaches `site` at all (outside it, a site does not exist)."""
        return self.sites is None or site in self.sites

    def may(self, scope: str) -> bool:
        """Whether the token may do `scope`; `admin` implies every scope."""
        return scope in self.scopes or "admin" in self.scopes


@dataclass(frozen=True)
class TokenInfo:
    """A token as `token list` shows it: never the token, never its digest."""

    id: str
    name: str
    sites: tuple[str, ...] | None
    scopes: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    created_by: str

    def status(self, now: datetime) -> str:
        """active, expired or revoked."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


@dataclass(frozen=True)
class Revoked:
    """The outcome of `revoke_token`."""

    id: str
    name: str
    revoked_at: datetime
    already: bool


def digest(secret: str) -> str:
    """SHA-256 of a token's secret, hex: what the ledger stores."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def parse_token(raw: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed token, or None (checked before any query)."""
    match = _TOKEN.match(raw.strip()) if len(raw) < 200 else None
    return (match.group("id"), match.group("secret")) if match else None


def validate_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """The scopes, in SCOPES order, deduplicated; BadInput for an unknown or empty list."""
    given = {scope.strip() for scope in scopes if scope.strip()}
    unknown = sorted(given - set(SCOPES))
    if unknown:
        raise BadInput(
            f"unknown scope(s): {', '.join(unknown)}; scopes are {', '.join(SCOPES)}",
            scopes=unknown,
        )
    if not given:
        raise BadInput(f"a token needs at least one scope: {', '.join(SCOPES)}")
    return tuple(scope for scope in SCOPES if scope in given)


def _grant(row: asyncpg.Record) -> TokenGrant:
    sites = row["sites"]
    return TokenGrant(
        token_id=row["id"],
        name=row["name"],
        sites=None if sites is None else frozenset(sites),
        scopes=frozenset(row["scopes"]),
        principal=Principal("token", row["name"]),
    )


async def _check_sites(conn: Conn, sites: Sequence[str]) -> tuple[str, ...]:
    wanted = sorted({site.strip() for site in sites if site.strip()})
    if not wanted:
        raise BadInput("a token needs at least one site (or every site: '*')")
    found = {row["name"] for row in await conn.fetch(sql("existing_site_names"), wanted)}
    missing = [site for site in wanted if site not in found]
    if missing:
        raise NotFound(
            f"no such site(s): {', '.join(missing)}; see `envrestore site list`", sites=missing
        )
    return tuple(wanted)


async def create_token(
    pool: asyncpg.Pool,
    *,
    name: str,
    sites: list[str] | None,
    scopes: list[str],
    expires_days: int | None,
    created_by: str | None = None,
) -> tuple[str, TokenGrant]:
    """Make a token; returns the raw token (the only time it exists) and its grant.

    `sites` None reaches every site. Unknown sites and scopes, a name in use, and
    a lifetime outside 1..MAX_EXPIRES_DAYS days are refused before anything is stored.
    """
    if not _NAME.match(name):
        raise BadInput(
            f"token name {name!r} is not valid: up to 100 letters, digits and ._@+- "
            "(starting with a letter or digit)",
            name=name,
        )
    principal = Principal("token", name)
    clean_scopes = validate_scopes(scopes)
    if expires_days is not None and not 1 <= expires_days <= MAX_EXPIRES_DAYS:
        raise BadInput(
            f"--expires must be between 1 and {MAX_EXPIRES_DAYS} days (got {expires_days})"
        )
    token_id = secrets.token_hex(_ID_HEX // 2)
    secret = secrets.token_urlsafe(_SECRET_BYTES)
    raw = f"{PREFIX}{token_id}_{secret}"
    async with pool.acquire() as conn, conn.transaction():
        clean_sites = None if sites is None else await _check_sites(conn, sites)
        row = await conn.fetchrow(
            sql("insert_token"),
            token_id,
            name,
            digest(secret),
            None if clean_sites is None else list(clean_sites),
            list(clean_scopes),
            expires_days,
            created_by or str(Principal.operator()),
        )
    if row is None:
        raise Conflict(
            f"a token named {name!r} exists already (revoked tokens keep their names, "
            "so job records stay unambiguous); choose another name",
            name=name,
        )
    log.info("token.created", token_id=token_id, name=name, sites=clean_sites, scopes=clean_scopes)
    grant = TokenGrant(
        token_id=token_id,
        name=name,
        sites=None if clean_sites is None else frozenset(clean_sites),
        scopes=frozenset(clean_scopes),
        principal=principal,
    )
    return raw, grant


async def authenticate(pool: asyncpg.Pool, raw_token: str) -> TokenGrant | None:
    """The grant of a valid token; None for a malformed, unknown, revoked or expired one.

    One primary-key lookup; `last_used_at` is written at most once a minute.
    """
    parsed = parse_token(raw_token)
    if parsed is None:
        return None
    token_id, secret = parsed
    async with pool.acquire() as conn:
        row = await conn.fetchrow(sql("get_token_for_auth"), token_id)
        stored = row["hash"] if row is not None else _DUMMY_DIGEST
        matches = hmac.compare_digest(stored, digest(secret))
        if row is None or not matches or not row["usable"]:
            return None
        if row["touch"]:
            await conn.execute(sql("touch_token"), token_id)
    return _grant(row)


async def list_tokens(pool: asyncpg.Pool) -> list[TokenInfo]:
    """Every token, oldest first, without secrets."""
    rows = await pool.fetch(sql("list_tokens"))
    return [
        TokenInfo(
            id=row["id"],
            name=row["name"],
            sites=None if row["sites"] is None else tuple(row["sites"]),
            scopes=tuple(row["scopes"]),
            created_at=row["created_at"],
            expires_at=row["expires_at"],
            revoked_at=row["revoked_at"],
            last_used_at=row["last_used_at"],
            created_by=row["created_by"],
        )
        for row in rows
    ]


async def revoke_token(pool: asyncpg.Pool, id_or_name: str) -> Revoked:
    """Revoke a token by id (else by name); it never authenticates again. NotFound if none."""
    row = await pool.fetchrow(sql("revoke_token"), id_or_name.strip())
    if row is None:
        raise NotFound(
            f"no token with id or name {id_or_name!r}; see `envrestore token list`",
            token=id_or_name,
        )
    log.info("token.revoked", token_id=row["id"], name=row["name"], already=row["already"])
    return Revoked(
        id=row["id"], name=row["name"], revoked_at=row["revoked_at"], already=row["already"]
    )
