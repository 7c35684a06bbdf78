"""The ASGI app: `create_app(settings)` → FastAPI, served by `envrestore api` (uvicorn).

The lifespan opens what every request shares and puts it on `app.state`:
`settings`, `pool` (the ledger; a pool given to `create_app` is used and not
closed), `store` (the object store), `limiter` (failed-auth counts) and
`client` (the producer API, made to act for each request's token). Health
and metrics routers come from envrestore/api/health.py and metrics.py.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import structlog
from fastapi import Depends, FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from envrestore.api import errors, health, metrics
from envrestore.api.deps import refuse_nul
from envrestore.api.routes import (
    admin,
    content,
    jobs,
    links,
    rollback_points,
    schedules,
    sites,
    uploads,
)
from envrestore.client import Envrestore
from envrestore.config.settings import Settings
from envrestore.observability.metrics import observe_http
from envrestore.pipelines.auth.ratelimit import FailedAuthLimiter
from envrestore.pipelines.jobs.principal import Principal
from envrestore.pipelines.ledger.connection import create_pool
from envrestore.pipelines.objectstore import open_object_store

log = structlog.get_logger(__name__)

API_VERSION = "1"


def create_app(settings: Settings, *, pool: asyncpg.Pool | None = None) -> FastAPI:
    """The API app; `pool` lets tests (and embedders) share one ledger pool."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            shared = pool
            if shared is None:
                shared = await create_pool(settings.database_url, max_size=10)
                stack.push_async_callback(shared.close)
            store = await stack.enter_async_context(open_object_store(settings))
            app.state.settings = settings
            app.state.pool = shared
            app.state.store = store
            app.state.limiter = FailedAuthLimiter.from_settings(settings)
            app.state.client = Envrestore(settings, shared, store, Principal.system("api"))
            log.info("api.started")
            yield
            log.info("api.stopping")

    app = FastAPI(
        title="envrestore",
        version=API_VERSION,
        description="Back up, restore, import and clone site environments; follow the jobs.",
        lifespan=lifespan,
        responses=errors.ERROR_RESPONSES,
        dependencies=[Depends(refuse_nul)],
    )
    errors.install(app)
    for module in (sites, content, uploads, jobs, links):
        app.include_router(module.router)
    for extra in (admin, schedules, rollback_points):  # the CLI's registry, schedules, points
        app.include_router(extra.router)
    _include_operator_routes(app)
    app.add_middleware(_Observed)
    return app


def _include_operator_routes(app: FastAPI) -> None:
    """/healthz, /readyz and /metrics (envrestore/api/health.py and metrics.py)."""
    app.include_router(health.router)
    app.include_router(metrics.router)


class _Observed:
    """Counts every request by route template (not by raw path: ids stay out of labels)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            _observe(scope, status, time.perf_counter() - started)


#: Methods counted under their own label; any other is "OTHER" (bounded labels).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _observe(scope: Scope, status: int, seconds: float) -> None:
    route: Any = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    method = str(scope.get("method", "")).upper()
    observe_http(
        template if isinstance(template, str) else "unmatched",
        method if method in METHODS else "OTHER",
        status,
        seconds,
    )
