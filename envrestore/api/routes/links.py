"""Temporary links to a backup's parts (presigned GETs), recorded with the token."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from envrestore.api.deps import Client, Grant, require_backup_visible, require_target
from envrestore.api.models import LinkBody
from envrestore.pipelines.requests import LinkRequest

router = APIRouter(tags=["links"])


@router.post("/links", status_code=201, summary="Presigned links to a backup's parts")
async def create_links(body: LinkBody, client: Client, grant: Grant) -> list[dict[str, Any]]:
    await require_target(client, grant, body.target, "link")
    await require_backup_visible(client, grant, body.backup)
    request = LinkRequest(
        target=body.target,
        backup=body.backup,
        parts=tuple(body.parts),
        ttl_seconds=body.ttl_seconds,
    )
    return [link.public() for link in await client.link(request)]
