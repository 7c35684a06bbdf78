"""Connections to the ledger (PostgreSQL through asyncpg), with JSON codecs.

Connection failures become `Unavailable` with the DSN masked, so a user sees
which ledger could not be reached without seeing its password.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from envrestore.pipelines.errors import Unavailable
from envrestore.pipelines.secrets import mask_url


async def _init_connection(conn: asyncpg.Connection) -> None:
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


def _unavailable(url: str, exc: BaseException) -> Unavailable:
    return Unavailable(
        f"cannot reach the ledger database at {mask_url(url)}: {exc}. "
        "Check ENVRESTORE_DATABASE_URL and that PostgreSQL is running.",
        url=mask_url(url),
    )


_CONNECT_ERRORS = (OSError, socket.gaierror, asyncpg.PostgresError, TimeoutError)


async def create_pool(url: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    """A pool on the ledger; raises Unavailable when it cannot be reached."""
    try:
        pool: asyncpg.Pool = await asyncpg.create_pool(
            url, min_size=min_size, max_size=max_size, init=_init_connection, timeout=10
        )
    except _CONNECT_ERRORS as exc:
        raise _unavailable(url, exc) from exc
    return pool


async def connect(url: str) -> asyncpg.Connection:
    """One connection on the ledger (for LISTEN, migrations); raises Unavailable."""
    try:
        conn: asyncpg.Connection = await asyncpg.connect(url, timeout=10)
    except _CONNECT_ERRORS as exc:
        raise _unavailable(url, exc) from exc
    await _init_connection(conn)
    return conn


@asynccontextmanager
async def open_pool(url: str, **kwargs: Any) -> AsyncIterator[asyncpg.Pool]:
    """A pool for the length of a block."""
    pool = await create_pool(url, **kwargs)
    try:
        yield pool
    finally:
        await pool.close()
