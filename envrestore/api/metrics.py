"""GET /metrics: the API process's Prometheus metrics and the ledger's queue gauges.

Unauthenticated like the probes (scrapers rarely carry tokens); no label
names a site, an environment or a token, so nothing scoped leaks. The queue
gauges are one indexed query per scrape on the app's pool.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from envrestore.observability.ledger_gauges import QueueSnapshot, exposition, read_queue

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    summary="Prometheus metrics (text exposition format)",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def metrics(request: Request) -> Response:
    pool = getattr(request.app.state, "pool", None)
    snapshot = await read_queue(pool) if pool is not None else QueueSnapshot(None, None)
    return Response(exposition(snapshot), media_type=CONTENT_TYPE_LATEST)
