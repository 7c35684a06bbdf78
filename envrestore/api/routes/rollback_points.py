"""Rollback points of an environment: list them (`read`), drop one (`restore`, 202).

The same calls as `envrestore rollback list|drop` (`pipelines/restore/points.py`):
a drop is refused while another job holds or waits for the environment's
lease, and is otherwise an `expire_rollback` job run by the workers.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from envrestore.api.deps import Client, Grant, require_site
from envrestore.api.responses import JOB_RESPONSES, IdempotencyKey, accepted, clean_key
from envrestore.pipelines.errors import NotFound
from envrestore.pipelines.jobs import views
from envrestore.pipelines.ledger.queries import sql
from envrestore.pipelines.restore import points

router = APIRouter(tags=["rollback points"])
POINTS = "/sites/{site}/envs/{env}/rollback-points"


@router.get(POINTS, summary="Kept rollback points: sizes, elements, expiry; newest first")
async def list_points(site: str, env: str, client: Client, grant: Grant) -> list[dict[str, Any]]:
    await require_site(client, grant, site, "read")
    found = await points.list_points(client.pool, f"{site}.{env}", settings=client.settings)
    return [p.public() for p in found]


@router.delete(
    f"{POINTS}/{{job_id}}",
    status_code=202,
    summary="Drop a rollback point now (its restore can no longer be undone)",
    responses=JOB_RESPONSES,
)
async def drop_point(
    site: str,
    env: str,
    job_id: str,
    client: Client,
    grant: Grant,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    await require_site(client, grant, site, "restore")
    environment = await client.environment(f"{site}.{env}")
    uid = views.parse_job_id(job_id)
    # Only this environment's points: another's (maybe another site's) is not found
    # here, before any other answer could tell what state it is in.
    point = await client.pool.fetchrow(sql("get_rollback_point"), uid)
    if point is None or point["environment_id"] != environment.id:
        raise NotFound(f"job {uid} has no rollback point of {environment.target}", job_id=str(uid))
    await points.check_droppable(client.pool, uid)
    submitted = await points.submit_drop(client.producer, uid, key=clean_key(idempotency_key))
    return await accepted(client, submitted)
