"""Jobs: read (cheap to poll, with an ETag), cancel, and follow as Server-Sent Events.

`GET /jobs/{id}` is one primary-key query; its `ETag` is a hash of what it
answers, so `If-None-Match` with an unchanged job is `304` without a body.
`GET /jobs/{id}/events` streams the job's ledger events as SSE, each with
`id:` the ledger event id: a client that reconnects with `Last-Event-ID`
gets every later event, none twice. Between them, `event: progress`
messages (no id: they are a state, not history) carry steps and bytes done
whenever they change, and a comment keeps an idle connection open through
proxies. The stream ends (`event: end`) once the job has ended and its last
events are sent.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response
from fastapi.responses import JSONResponse, StreamingResponse

from envrestore.api.deps import KIND_SCOPES, Client, Grant, require_scope
from envrestore.client import Envrestore, JobSnapshot
from envrestore.pipelines.auth.tokens import TokenGrant
from envrestore.pipelines.errors import BadInput, NotFound

router = APIRouter(tags=["jobs"])


def _no_job(job_id: str) -> NotFound:
    return NotFound(f"job {job_id} does not exist", job_id=job_id)


async def visible_job(client: Envrestore, grant: TokenGrant, job_id: str) -> JobSnapshot:
    """The job, or the same 404 as a job that does not exist when its site is not the token's."""
    try:
        uid = uuid.UUID(job_id)
    except ValueError:
        raise _no_job(job_id) from None
    snapshot = await client.job(uid)
    site = job_site(snapshot.view)
    if (grant.sites is not None and site is None) or (site is not None and not grant.may_see(site)):
        raise _no_job(str(uid))
    return snapshot


def job_site(view: dict[str, Any]) -> str | None:
    """The job's site, or for a job without one (delete_backup takes no environment
    lease) the site of the `SITE.ENV` target it names, so its maker can follow it."""
    site = view["site"]
    if site is None and isinstance(target := view["params"].get("target"), str):
        site = target.split(".", 1)[0] or None
    return site if isinstance(site, str) else None


@router.get("/jobs", summary="Recent jobs of the sites this token may see")
async def list_jobs(
    client: Client,
    grant: Grant,
    site: Annotated[str | None, Query(max_length=63)] = None,
    env: Annotated[str | None, Query(max_length=63)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[dict[str, Any]]:
    require_scope(grant, "read")
    if site is not None and not grant.may_see(site):
        return []
    # The token's sites filter in SQL, so `limit` counts only jobs it may see.
    sites = None if grant.sites is None else sorted(grant.sites)
    return await client.jobs(site=site, env=env, limit=limit, sites=sites)


@router.get(
    "/jobs/{job_id}",
    summary="A job with its steps and progress",
    responses={304: {"description": "Unchanged since the ETag given in If-None-Match"}},
)
async def get_job(
    job_id: str,
    client: Client,
    grant: Grant,
    if_none_match: Annotated[str | None, Header(alias="If-None-Match")] = None,
) -> Response:
    require_scope(grant, "read")
    snapshot = await visible_job(client, grant, job_id)
    etag = snapshot.etag
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if if_none_match is not None and etag in {t.strip() for t in if_none_match.split(",")}:
        return Response(status_code=304, headers=headers)
    body = {**snapshot.view, "progress": snapshot.progress}
    return JSONResponse(body, headers=headers)


@router.post("/jobs/{job_id}/cancel", summary="Cancel a job (until a restore's switch begins)")
async def cancel(job_id: str, client: Client, grant: Grant) -> dict[str, Any]:
    snapshot = await visible_job(client, grant, job_id)
    require_scope(grant, KIND_SCOPES.get(snapshot.view["kind"], "admin"))
    await client.cancel(snapshot.view["id"])
    return (await client.job(snapshot.view["id"])).view


#: Event ids are PostgreSQL bigints: a larger one would break the stream after its 200.
MAX_EVENT_ID = 2**63 - 1


def _last_event_id(header: str | None, after: int | None) -> int:
    if header is None:
        return after or 0
    try:
        value = int(header.strip())
    except ValueError:
        raise BadInput("Last-Event-ID must be an event id (a whole number)") from None
    if not 0 <= value <= MAX_EVENT_ID:
        raise BadInput("Last-Event-ID must be an event id (a whole number)")
    return value


@router.get(
    "/jobs/{job_id}/events",
    summary="The job's events as Server-Sent Events, until it ends",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "An SSE stream"}},
)
async def events(
    job_id: str,
    client: Client,
    grant: Grant,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=20)] = None,
    after: Annotated[
        int | None, Query(ge=0, le=MAX_EVENT_ID, description="Start after this event id")
    ] = None,
) -> StreamingResponse:
    require_scope(grant, "read")
    snapshot = await visible_job(client, grant, job_id)
    start = _last_event_id(last_event_id, after)
    poll = float(client.settings.api_sse_poll_seconds)

    return StreamingResponse(
        _stream(client, uuid.UUID(snapshot.view["id"]), start, poll),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


#: An idle stream sends a comment this often, so proxies keep it open.
KEEPALIVE_SECONDS = 15.0


def _message(event: str, data: Any, event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    body = json.dumps(data, separators=(",", ":"))
    return f"{head}event: {event}\ndata: {body}\n\n".encode()


async def _stream(
    client: Envrestore, job_id: uuid.UUID, after: int, poll: float
) -> AsyncIterator[bytes]:
    """Events after `after`, progress when it changes, until the job ended and all is sent.

    The job's state is read before each batch: the stream stops only after a
    batch read once the job had ended came back empty, so no last event is lost.
    """
    yield b"retry: 2000\n\n"
    last_progress: dict[str, Any] | None = None
    quiet = 0.0
    while True:
        snapshot = await client.job(job_id)
        batch = await client.events(job_id, after=after)
        for event in batch:
            after = event.id
            yield _message(event.event, event.public(), event.id)
        progress = snapshot.progress
        if progress != last_progress:
            last_progress = progress
            yield _message("progress", progress)
        elif not batch and quiet >= KEEPALIVE_SECONDS:
            quiet = 0.0
            yield b": keepalive\n\n"
        if snapshot.final and not batch:
            break
        if not batch:
            await asyncio.sleep(poll)
            quiet += poll
    yield _message("end", {"id": str(job_id), "status": snapshot.status})
