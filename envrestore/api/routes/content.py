"""Work on an environment: backups, restores, imports (URLs), clones, rollbacks.

Each route builds the typed request the CLI builds and submits it through
the producer API; the answer is `202` with the job and its `Location`.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from envrestore.api.deps import (
    Client,
    Grant,
    require_backup_visible,
    require_site,
    require_target,
)
from envrestore.api.models import (
    BackupBody,
    CloneBody,
    ImportBody,
    RestoreBody,
    RollbackBody,
    pairs,
)
from envrestore.api.responses import JOB_RESPONSES, IdempotencyKey, accepted, clean_key
from envrestore.pipelines.errors import NotFound
from envrestore.pipelines.requests import (
    ELEMENTS,
    BackupRequest,
    CloneRequest,
    DeleteBackupRequest,
    ImportRequest,
    PartInput,
    RestoreRequest,
    RollbackRequest,
)

router = APIRouter(tags=["work"], responses=JOB_RESPONSES)
ENV = "/sites/{site}/envs/{env}"


@router.post(f"{ENV}/backups", status_code=202, summary="Back up the environment")
async def create_backup(
    site: str,
    env: str,
    client: Client,
    grant: Grant,
    idempotency_key: IdempotencyKey = None,
    body: BackupBody | None = None,
) -> JSONResponse:
    await require_site(client, grant, site, "backup")
    body = body or BackupBody()
    request = BackupRequest(
        target=f"{site}.{env}",
        keep_days=body.keep_days,
        elements=tuple(body.elements or ELEMENTS),
    )
    return await accepted(
        client, await client.submit(request, idempotency_key=clean_key(idempotency_key))
    )


@router.delete(f"{ENV}/backups/{{backup_id}}", status_code=202, summary="Delete a backup")
async def delete_backup(
    site: str,
    env: str,
    backup_id: str,
    client: Client,
    grant: Grant,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    await require_site(client, grant, site, "backup")
    await client.backup(backup_id, target=f"{site}.{env}")
    request = DeleteBackupRequest(target=f"{site}.{env}", backup_id=backup_id)
    return await accepted(
        client, await client.submit(request, idempotency_key=clean_key(idempotency_key))
    )


@router.post(f"{ENV}/restores", status_code=202, summary="Restore a backup into the environment")
async def create_restore(
    site: str,
    env: str,
    body: RestoreBody,
    client: Client,
    grant: Grant,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    await require_site(client, grant, site, "restore")
    if body.source is not None:
        await require_target(client, grant, body.source, "read")
    await require_backup_visible(client, grant, body.backup)
    request = RestoreRequest(
        target=f"{site}.{env}",
        backup=body.backup,
        source=body.source,
        elements=tuple(body.elements or ELEMENTS),
        in_place=body.in_place,
        force_live=body.force_live,
        allow_incomplete_dump=body.allow_incomplete_dump,
        code_strategy=body.code_strategy,
        replace_pairs=pairs(body.replace_pairs),
        search_replace=body.search_replace,
    )
    return await accepted(
        client, await client.submit(request, idempotency_key=clean_key(idempotency_key))
    )


@router.post(f"{ENV}/imports", status_code=202, summary="Import content from URLs")
async def create_import(
    site: str,
    env: str,
    body: ImportBody,
    client: Client,
    grant: Grant,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Files go through `POST .../uploads` instead (straight to the object store)."""
    await require_site(client, grant, site, "import")
    request = ImportRequest(
        target=f"{site}.{env}",
        parts=tuple(PartInput(p.element, url=p.url) for p in body.parts),
        force_live=body.force_live,
        allow_incomplete_dump=body.allow_incomplete_dump,
        code_strategy=body.code_strategy,
        replace_pairs=pairs(body.replace_pairs),
        search_replace=body.search_replace,
    )
    return await accepted(
        client, await client.submit(request, idempotency_key=clean_key(idempotency_key))
    )


@router.post(
    f"{ENV}/clones", status_code=202, summary="Copy another environment's live content here"
)
async def create_clone(
    site: str,
    env: str,
    body: CloneBody,
    client: Client,
    grant: Grant,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    await require_site(client, grant, site, "restore")
    await require_target(client, grant, body.source, "read")
    request = CloneRequest(
        source=body.source,
        target=f"{site}.{env}",
        elements=tuple(body.elements or ("database", "files")),
        keep_snapshot=body.keep_snapshot,
        replace_pairs=pairs(body.replace_pairs),
        search_replace=body.search_replace,
        allow_incomplete_dump=body.allow_incomplete_dump,
    )
    return await accepted(
        client, await client.submit(request, idempotency_key=clean_key(idempotency_key))
    )


@router.post(f"{ENV}/rollbacks", status_code=202, summary="Undo a restore or import")
async def create_rollback(
    site: str,
    env: str,
    body: RollbackBody,
    client: Client,
    grant: Grant,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    await require_site(client, grant, site, "restore")
    request = RollbackRequest(restore_job_id=body.job_id)
    restored = (await client.job(request.restore_job_id)).view
    if (restored["site"], restored["env"]) != (site, env):
        raise NotFound(f"job {request.restore_job_id} does not exist", job_id=body.job_id)
    return await accepted(
        client, await client.submit(request, idempotency_key=clean_key(idempotency_key))
    )
