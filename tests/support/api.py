"""The HTTP API in tests: the app on the test's ledger and bucket, tokens, a real uvicorn.

`api_client` runs the app's lifespan and talks to it in-process (httpx's
ASGI transport); `served` runs it under a real uvicorn on a free loopback
port, for what only a real server shows (streaming SSE, disconnects).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import httpx
import uvicorn
from fastapi import FastAPI

from envrestore.api.app import create_app
from envrestore.config.settings import Settings
from envrestore.pipelines.auth.tokens import create_token


@asynccontextmanager
async def api_app(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[FastAPI]:
    app = create_app(settings, pool=pool)
    async with app.router.lifespan_context(app):
        yield app


@asynccontextmanager
async def api_client(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    async with api_app(settings, pool) as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def served(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[str]:
    """A real uvicorn on 127.0.0.1:<free port>; yields its base URL."""
    port = free_port()
    app = create_app(settings, pool=pool)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(200):
            if server.started:
                break
            if task.done():
                task.result()
            await asyncio.sleep(0.05)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


async def bearer(
    pool: asyncpg.Pool, name: str, *, sites: list[str] | None, scopes: list[str]
) -> dict[str, str]:
    """Headers with a new token for `sites` (None: every site) and `scopes`."""
    raw, _grant = await create_token(pool, name=name, sites=sites, scopes=scopes, expires_days=None)
    return {"Authorization": f"Bearer {raw}"}
