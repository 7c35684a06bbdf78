"""Who is asking, and what they may see: the bearer token, its sites and its scopes.

A token that may not see a site gets the same `404` as for a site that does
not exist (same code, same message), so a site's existence never leaks; a
visible site without the action's scope is `403`. Failed authentication is
counted per client address and answered `429` with `Retry-After` once a
client has failed too often (`FailedAuthLimiter`).
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from envrestore.api.errors import ApiError
from envrestore.client import Envrestore
from envrestore.pipelines.auth.ratelimit import FailedAuthLimiter
from envrestore.pipelines.auth.tokens import TokenGrant, authenticate
from envrestore.pipelines.errors import NotFound
from envrestore.pipelines.ledger.queries import sql
from envrestore.pipelines.registry import parse_target

_bearer = HTTPBearer(auto_error=False, description="An API token: envrestore token create")

#: Job kind → the scope that may act on it (cancel); others need admin.
KIND_SCOPES = {
    "backup": "backup",
    "delete_backup": "backup",
    "restore": "restore",
    "clone": "restore",
    "rollback": "restore",
    "import": "import",
}


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


async def refuse_nul(request: Request) -> None:
    """422 for a NUL character in the path, the query or a JSON body's strings.

    PostgreSQL text cannot hold NUL: without this, such a value reached the
    ledger and came back as a 500. Applied to every route (create_app).
    """
    where = None
    if "\x00" in request.url.path or "\x00" in str(request.scope.get("path", "")):
        where = "the path"
    elif any(_has_nul(k) or _has_nul(v) for k, v in request.query_params.multi_items()):
        where = "the query"
    else:
        body = await request.body()
        if b"\x00" in body:
            where = "the body"
        elif b"\\u0000" in body:
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None  # not JSON: the route's own validation answers
            if _has_nul(parsed):
                where = "the body"
    if where is not None:
        raise ApiError(422, "bad_input", f"{where} holds a NUL character; remove it")


def _client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def grant_of(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> TokenGrant:
    """The token's grant; 401 for a missing or bad token, 429 for a client failing too often."""
    limiter: FailedAuthLimiter = request.app.state.limiter
    address = _client_address(request)
    wait = limiter.blocked(address)
    if wait is not None:
        raise ApiError(
            429,
            "rate_limited",
            "too many failed authentications from this client; try again later",
            {"Retry-After": str(math.ceil(wait))},
        )
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise ApiError(
            401, "unauthorized", "give a token: Authorization: Bearer <token>", challenge
        )
    grant = await authenticate(request.app.state.pool, credentials.credentials)
    if grant is None:
        limiter.failed(address)
        raise ApiError(401, "unauthorized", "the token is unknown, revoked or expired", challenge)
    limiter.succeeded(address)
    return grant


Grant = Annotated[TokenGrant, Depends(grant_of)]


def client_for(request: Request, grant: Grant) -> Envrestore:
    """The producer API acting for the token (jobs and links record its principal).

    Its idempotency keys are the token's own (scope = its principal): another
    token's same key is no conflict and reveals nothing, and cannot be squatted.
    """
    shared: Envrestore = request.app.state.client
    return shared.acting_for(grant.principal, idempotency_scope=str(grant.principal))


Client = Annotated[Envrestore, Depends(client_for)]


def site_not_found(site: str) -> NotFound:
    """The one answer for a site that does not exist or that the token may not see."""
    return NotFound(f"site {site!r} is not registered", site=site)


async def require_site(client: Envrestore, grant: TokenGrant, site: str, scope: str) -> None:
    """404 unless the site exists and the token may see it; then 403 without `scope`."""
    if not grant.may_see(site) or await client.pool.fetchrow(sql("get_site"), site) is None:
        raise site_not_found(site)
    require_scope(grant, scope)


async def require_target(client: Envrestore, grant: TokenGrant, target: str, scope: str) -> None:
    """As `require_site`, for a `SITE.ENV` named in a body (the environment may still be 404)."""
    site, _env = parse_target(target)
    await require_site(client, grant, site, scope)


def require_scope(grant: TokenGrant, scope: str) -> None:
    if not grant.may(scope):
        raise ApiError(403, "forbidden", f"this token may not {scope} (its scopes: "
                       f"{', '.join(sorted(grant.scopes))})")  # fmt: skip


async def require_backup_visible(client: Envrestore, grant: TokenGrant, backup_id: str) -> None:
    """A backup named by id in a body: another site's answers as a missing one, so the
    producer's "belongs to SITE.ENV" hint never names a site the token may not see."""
    if backup_id == "latest":
        return
    record = await client.backup(backup_id)
    if not grant.may_see(record.site):
        raise NotFound(f"backup {backup_id!r} does not exist", backup_id=backup_id)
