"""The answer to a request that queued work: `202 Accepted`, the job, and its `Location`.

A replay (same `Idempotency-Key`, same body) answers `200` with the job it
made the first time.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Header
from fastapi.responses import JSONResponse

from envrestore.client import Envrestore
from envrestore.pipelines.errors import BadInput
from envrestore.pipelines.jobs.submit import Submitted

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="The same key and body give the same job; another body with it is a 409.",
        max_length=200,
    ),
]

#: What 202/200 job answers look like in the OpenAPI document.
JOB_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"description": "Queued; `Location` is the job", "model": dict[str, Any]},
    200: {"description": "The job this Idempotency-Key already made", "model": dict[str, Any]},
}


def clean_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not key.strip() or not key.isprintable():
        raise BadInput("Idempotency-Key must be non-empty printable text")
    return key


async def accepted(client: Envrestore, submitted: Submitted) -> JSONResponse:
    view = (await client.job(submitted.job_id)).view
    return JSONResponse(
        view,
        status_code=202 if submitted.created else 200,
        headers={"Location": f"/jobs/{submitted.job_id}"},
    )
