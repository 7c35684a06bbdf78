"""Probes: GET /healthz (liveness) and GET /readyz (readiness), without auth.

Liveness answers from the process alone, so a slow database never gets the
API restarted. Readiness runs the same checks as `envrestore health`
(observability/health.py) on the app's own pool and store: 200 when all
pass, 503 with each check's result otherwise, so a load balancer stops
sending requests this process cannot serve.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from envrestore.observability.health import all_ok, check_services

router = APIRouter(tags=["health"])


class Liveness(BaseModel):
    status: Literal["ok"]


class CheckResult(BaseModel):
    name: str
    ok: bool
    code: str
    detail: str


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    checks: list[CheckResult]


@router.get("/healthz", response_model=Liveness, summary="Liveness: the process is up")
async def healthz() -> Liveness:
    return Liveness(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness: ledger, migrations, broker and object store",
    responses={503: {"model": Readiness, "description": "A check failed"}},
)
async def readyz(request: Request) -> JSONResponse:
    state = request.app.state
    checks = await check_services(
        state.settings, getattr(state, "pool", None), getattr(state, "store", None)
    )
    ready = all_ok(checks)
    body = Readiness(
        status="ready" if ready else "not_ready",
        checks=[CheckResult(**check.as_dict()) for check in checks],
    )
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)
