"""Uploads straight to the object store: presigned part URLs, then complete → import job.

No byte of the file passes through the API: `POST .../uploads` answers an
upload id and one presigned `UploadPart` URL per part; the client PUTs each
part there and sends the ETags S3 answered to `.../uploads/{id}/complete`,
which completes the object and queues its import (`202`, `Location`).
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from envrestore.api.deps import Client, Grant, require_site
from envrestore.api.models import CompleteBody, UploadBody, pairs
from envrestore.api.responses import JOB_RESPONSES, IdempotencyKey, accepted, clean_key
from envrestore.pipelines.errors import NotFound

router = APIRouter(tags=["uploads"])
ENV = "/sites/{site}/envs/{env}"


@router.post(f"{ENV}/uploads", status_code=201, summary="Start an upload: presigned part URLs")
async def start_upload(
    site: str, env: str, body: UploadBody, client: Client, grant: Grant
) -> dict[str, Any]:
    await require_site(client, grant, site, "import")
    started = await client.start_upload(
        f"{site}.{env}", element=body.element, size=body.size, filename=body.filename
    )
    return started.public()


@router.post(
    f"{ENV}/uploads/{{upload_id}}/complete",
    status_code=202,
    responses=JOB_RESPONSES,
    summary="Complete an upload and start its import",
)
async def complete_upload(
    site: str,
    env: str,
    upload_id: str,
    body: CompleteBody,
    client: Client,
    grant: Grant,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    await require_site(client, grant, site, "import")
    missing = NotFound(f"upload {upload_id} does not exist", upload_id=upload_id)
    try:
        uid = uuid.UUID(upload_id)
    except ValueError:
        raise missing from None
    upload = await client.upload(uid)
    if (upload.site, upload.env) != (site, env):
        raise missing
    if upload.requested_by != str(grant.principal) and not grant.may("admin"):
        raise missing  # another token's upload: as if it did not exist
    options = body.options.model_dump()
    options["replace_pairs"] = pairs(body.options.replace_pairs)
    submitted = await client.complete_upload(
        upload,
        etags={p.number: p.etag for p in body.parts},
        sha256=body.sha256,
        options=options,
        idempotency_key=clean_key(idempotency_key),
    )
    return await accepted(client, submitted)
