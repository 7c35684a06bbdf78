"""Sites, environments and backups: what a token may read."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from envrestore.api.deps import Client, Grant, require_scope, require_site

router = APIRouter(tags=["sites"])


@router.get("/sites", summary="The sites this token may see")
async def list_sites(client: Client, grant: Grant) -> list[dict[str, Any]]:
    require_scope(grant, "read")
    return [s.public() for s in await client.sites() if grant.may_see(s.name)]


@router.get("/sites/{site}/envs", summary="A site's environments (DSN passwords masked)")
async def list_envs(site: str, client: Client, grant: Grant) -> list[dict[str, Any]]:
    await require_site(client, grant, site, "read")
    return [e.public() for e in await client.environments(site)]


@router.get("/sites/{site}/envs/{env}", summary="One environment (DSN password masked)")
async def get_env(site: str, env: str, client: Client, grant: Grant) -> dict[str, Any]:
    await require_site(client, grant, site, "read")
    return (await client.environment(f"{site}.{env}")).public()


@router.get("/sites/{site}/envs/{env}/backups", summary="Backups, newest first")
async def list_backups(site: str, env: str, client: Client, grant: Grant) -> list[dict[str, Any]]:
    await require_site(client, grant, site, "read")
    return [b.public() for b in await client.backups(f"{site}.{env}")]


@router.get("/sites/{site}/envs/{env}/backups/{backup_id}", summary="One backup")
async def get_backup(
    site: str, env: str, backup_id: str, client: Client, grant: Grant
) -> dict[str, Any]:
    await require_site(client, grant, site, "read")
    await client.environment(f"{site}.{env}")
    return (await client.backup(backup_id, target=f"{site}.{env}")).public()
