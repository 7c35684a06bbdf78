"""`envrestore token`: make, list and revoke the API's bearer tokens.

The raw token is printed once, by `token create`, on stdout alone (so
`TOKEN=$(envrestore token create ...)` keeps it); the ledger holds only its
digest, so no command can show it again.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from envrestore.cli.common import (
    JsonOpt,
    err,
    load_cli_settings,
    out,
    print_json,
    run_command,
    shown,
    with_ledger,
)
from envrestore.pipelines.jobs.principal import Principal

if TYPE_CHECKING:  # imported where used, for a quick start (cli/common.py)
    import asyncpg

    from envrestore.pipelines.auth.tokens import Revoked, TokenInfo

token_app = typer.Typer(
    help="API bearer tokens: each reaches some sites (or all) for some actions.",
    no_args_is_help=True,
)

#: pipelines.auth.tokens.SCOPES, named here for `--scopes`'s help without importing the
#: token store (asyncpg) at start; tests/unit/test_cli_imports.py checks they agree.
SCOPES = ("read", "backup", "restore", "import", "link", "admin")

#: `--sites '*'`: every site, present and future.
EVERY_SITE = "*"
NOT_AGAIN = "save this token now: it cannot be shown again"


def _split(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _public(info: TokenInfo, now: datetime) -> dict[str, Any]:
    """A token as `--json` shows it: never the token, never its digest."""
    return {
        "id": info.id,
        "name": info.name,
        "sites": None if info.sites is None else list(info.sites),
        "scopes": list(info.scopes),
        "status": info.status(now),
        "created_at": info.created_at.isoformat(),
        "expires_at": info.expires_at.isoformat() if info.expires_at else None,
        "last_used_at": info.last_used_at.isoformat() if info.last_used_at else None,
        "revoked_at": info.revoked_at.isoformat() if info.revoked_at else None,
        "created_by": info.created_by,
    }


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option("--name", help="A unique name; jobs record `token:NAME`.")],
    sites: Annotated[
        str,
        typer.Option("--sites", help="Comma-separated sites the token reaches, or '*' for all."),
    ],
    scopes: Annotated[
        str,
        typer.Option(
            "--scopes",
            help=f"Comma-separated actions: {', '.join(SCOPES)} (admin implies every action).",
        ),
    ],
    expires: Annotated[
        int | None,
        typer.Option("--expires", metavar="DAYS", help="Expire after DAYS days (default: never)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Make a token and print it once (only its SHA-256 digest is stored)."""
    from envrestore.cli.tables import when
    from envrestore.pipelines.auth import tokens

    settings = load_cli_settings()
    site_list = None if sites.strip() == EVERY_SITE else _split(sites)

    async def body() -> tuple[str, TokenInfo]:
        async def make(pool: asyncpg.Pool) -> tuple[str, TokenInfo]:
            raw, grant = await tokens.create_token(
                pool,
                name=name,
                sites=site_list,
                scopes=_split(scopes),
                expires_days=expires,
                created_by=str(Principal.operator()),
            )
            made = [t for t in await tokens.list_tokens(pool) if t.id == grant.token_id]
            return raw, made[0]

        return await with_ledger(settings, make)

    raw, info = run_command(body)
    if as_json:
        print_json({"token": raw, **_public(info, datetime.now(UTC)), "note": NOT_AGAIN})
        return
    out.print(raw, markup=False)
    reach = "every site" if info.sites is None else ", ".join(info.sites)
    until = f"expires {when(info.expires_at)} UTC" if info.expires_at else "never expires"
    err.print(
        f"token {info.id} ({info.name}): {', '.join(info.scopes)} on {reach}; {until}",
        markup=False,
    )
    err.print(NOT_AGAIN, markup=False)


@token_app.command("list")
def token_list(as_json: JsonOpt = False) -> None:
    """List tokens: scope, expiry, last use, revocation (never a token or its digest)."""
    from envrestore.cli.tables import print_table, when
    from envrestore.pipelines.auth import tokens

    settings = load_cli_settings()

    async def body() -> list[TokenInfo]:
        return await with_ledger(settings, tokens.list_tokens)

    found = run_command(body)
    now = datetime.now(UTC)
    if as_json:
        print_json([_public(info, now) for info in found])
        return
    if not found:
        out.print("no tokens; make one with `envrestore token create`", markup=False)
        return
    print_table(
        out,
        ["id", "name", "sites", "scopes", "status", "created", "expires", "last used"],
        [
            (
                info.id,
                shown(info.name),
                EVERY_SITE if info.sites is None else ",".join(info.sites),
                ",".join(info.scopes),
                info.status(now) + (f" {when(info.revoked_at)}" if info.revoked_at else ""),
                when(info.created_at),
                when(info.expires_at) or "never",
                when(info.last_used_at) or "never",
            )
            for info in found
        ],
        ids=("id",),
    )


@token_app.command("revoke")
def token_revoke(
    token: Annotated[str, typer.Argument(metavar="ID|NAME", help="The token's id or name.")],
    as_json: JsonOpt = False,
) -> None:
    """Revoke a token at once: it never authenticates again (revoking twice is harmless)."""
    from envrestore.cli.tables import when
    from envrestore.pipelines.auth import tokens

    settings = load_cli_settings()

    async def body() -> Revoked:
        return await with_ledger(settings, lambda pool: tokens.revoke_token(pool, token))

    done = run_command(body)
    if as_json:
        print_json(
            {
                "id": done.id,
                "name": done.name,
                "revoked_at": done.revoked_at.isoformat(),
                "already": done.already,
            }
        )
        return
    if done.already:
        out.print(
            f"token {done.id} ({done.name}) was already revoked at {when(done.revoked_at)} UTC",
            markup=False,
        )
    else:
        out.print(f"revoked token {done.id} ({done.name})", markup=False)
