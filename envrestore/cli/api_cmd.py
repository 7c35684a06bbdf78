"""`envrestore api`: the HTTP API (envrestore/api) under uvicorn, until SIGTERM/SIGINT."""

from __future__ import annotations

import os
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer

from envrestore.cli.common import from_setting, load_cli_settings, run_command, with_ledger

if TYPE_CHECKING:  # uvicorn, FastAPI and asyncpg are imported when the API starts
    import asyncpg


def api(
    host: Annotated[
        str | None, typer.Option("--host", help=from_setting("Address to listen on.", "api_host"))
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            "--port", help=from_setting("Port to listen on.", "api_port"), min=1, max=65535
        ),
    ] = None,
) -> None:
    """Serve the HTTP API (OpenAPI document at /openapi.json) for dashboard backends.

    Clients authenticate with a bearer token (envrestore token create).
    """
    import uvicorn

    from envrestore.config.logging import configure_logging

    settings = load_cli_settings()
    level = os.environ.get("ENVRESTORE_LOG_LEVEL") or "INFO"
    configure_logging(level=level)

    async def ready(pool: asyncpg.Pool) -> None:
        return None  # with_ledger has checked the ledger is reachable and migrated

    run_command(lambda: with_ledger(settings, ready))
    from envrestore.api.app import create_app

    config = uvicorn.Config(
        create_app(settings),
        host=host or settings.api_host,
        port=port or settings.api_port,
        log_level=level.lower(),
        access_log=False,
        timeout_graceful_shutdown=10,
        **proxy_options(settings.api_forwarded_allow_ips),
    )
    server = _server(config)
    server.run()
    if not server.started:
        raise typer.Exit(1)  # uvicorn has said why (the port in use, ...)


def proxy_options(allowed: str) -> dict[str, Any]:
    """uvicorn's proxy settings: X-Forwarded-* believed only from `allowed` proxies
    (ENVRESTORE_API_FORWARDED_ALLOW_IPS); none by default, so a client cannot pick
    the address the failed-auth limiter counts it under."""
    allowed = allowed.strip()
    if not allowed:
        return {"proxy_headers": False}
    return {"proxy_headers": True, "forwarded_allow_ips": allowed}


def _server(config: Any) -> Any:
    """uvicorn, except that a stop by SIGTERM/SIGINT ends with exit 0 like `envrestore
    worker` (uvicorn re-raises the signal after its graceful shutdown: exit -15)."""
    import uvicorn

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            self._captured_signals.clear()

    return _Server(config)
