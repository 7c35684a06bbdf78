"""Readiness checks shared by `envrestore health` and the API's /readyz.

Four checks, each bounded by a timeout so a dead service answers "not ready"
quickly instead of hanging a probe: the ledger answers a query, its
migrations are those this envrestore ships, the broker (Redis) answers PING,
the object store's bucket exists. Failures carry a stable `code`
(`unavailable`, `not_migrated`, `not_found`) and one line saying why; URLs
in messages are masked.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from envrestore.config.settings import Settings
from envrestore.pipelines.errors import EnvrestoreError, NotFound
from envrestore.pipelines.ledger.connection import connect
from envrestore.pipelines.ledger.migrate import available_migrations
from envrestore.pipelines.objectstore import ObjectStore, open_object_store
from envrestore.pipelines.secrets import mask_url
from envrestore.pipelines.text import clean_text

#: Seconds each check may take before it counts as unreachable.
CHECK_TIMEOUT_SECONDS = 5.0

#: The order checks are reported in.
CHECKS = ("ledger", "migrations", "broker", "object_store")


@dataclass(frozen=True)
class Check:
    """One check's result: `code` is "ok" or why not (unavailable, not_migrated, not_found)."""

    name: str
    ok: bool
    code: str
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


Ledger = asyncpg.Pool | asyncpg.Connection


def _failed(name: str, exc: BaseException, *, url: str | None = None) -> Check:
    if isinstance(exc, TimeoutError):
        text = f"no answer within {CHECK_TIMEOUT_SECONDS:g}s"
    elif isinstance(exc, EnvrestoreError):
        text = exc.message
    else:
        text = f"{type(exc).__name__}: {exc}"
    if url:
        text = text.replace(url, mask_url(url))
        text = f"{text} ({mask_url(url)})" if mask_url(url) not in text else text
    code = "not_found" if isinstance(exc, NotFound) else "unavailable"
    return Check(name, False, code, clean_text(text, 300))


async def check_ledger(ledger: Ledger) -> Check:
    """The ledger answers a query."""
    try:
        await asyncio.wait_for(ledger.fetchval("SELECT 1"), timeout=CHECK_TIMEOUT_SECONDS)
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        return _failed("ledger", exc)
    return Check("ledger", True, "ok", "reachable")


async def check_migrations(ledger: Ledger) -> Check:
    """Every migration this envrestore ships is applied (run `envrestore db migrate`)."""
    try:
        rows = await asyncio.wait_for(
            ledger.fetch("SELECT version FROM schema_migrations"), timeout=CHECK_TIMEOUT_SECONDS
        )
        applied = {row["version"] for row in rows}
    except asyncpg.UndefinedTableError:
        applied = set()
    except Exception as exc:  # noqa: BLE001 - an unreadable ledger is reported by check_ledger
        return _failed("migrations", exc)
    missing = [
        f"{m.version:03d}_{m.name}" for m in available_migrations() if m.version not in applied
    ]
    if missing:
        return Check(
            "migrations",
            False,
            "not_migrated",
            f"not applied: {', '.join(missing)}; run `envrestore db migrate`",
        )
    return Check("migrations", True, "ok", f"{len(applied)} applied, current")


async def check_broker(settings: Settings) -> Check:
    """Redis answers PING (bounded by the socket timeouts, however Redis misbehaves)."""
    timeout = min(settings.redis_socket_timeout, CHECK_TIMEOUT_SECONDS)
    client = aioredis.Redis.from_url(
        settings.redis_url, socket_connect_timeout=timeout, socket_timeout=timeout
    )
    try:
        await asyncio.wait_for(client.ping(), timeout=CHECK_TIMEOUT_SECONDS)
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        return _failed("broker", exc, url=settings.redis_url)
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()
    return Check("broker", True, "ok", "reachable")


async def check_store(store: ObjectStore, bucket: str) -> Check:
    """The bucket exists and the store answers."""
    try:
        await asyncio.wait_for(store.check(), timeout=CHECK_TIMEOUT_SECONDS)
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
        return _failed("object_store", exc)
    return Check("object_store", True, "ok", f"bucket {bucket} exists")


async def check_services(
    settings: Settings, ledger: Ledger | None, store: ObjectStore | None
) -> list[Check]:
    """All four checks at once, on the caller's ledger pool and store (the API's)."""

    async def ledger_checks() -> list[Check]:
        if ledger is None:
            gone = Check("ledger", False, "unavailable", "no ledger pool")
            return [gone, Check("migrations", False, "unavailable", "ledger not reachable")]
        reached = await check_ledger(ledger)
        if not reached.ok:
            return [reached, Check("migrations", False, "unavailable", "ledger not reachable")]
        return [reached, await check_migrations(ledger)]

    async def store_check() -> Check:
        if store is None:
            return Check("object_store", False, "unavailable", "no object store client")
        return await check_store(store, settings.s3_bucket)

    ledger_results, broker, stored = await asyncio.gather(
        ledger_checks(), check_broker(settings), store_check()
    )
    return [*ledger_results, broker, stored]


@contextlib.asynccontextmanager
async def _own_ledger(settings: Settings) -> AsyncIterator[Ledger | Check]:
    try:
        conn = await asyncio.wait_for(connect(settings.database_url), CHECK_TIMEOUT_SECONDS)
    except Exception as exc:  # noqa: BLE001 - reported as the ledger check
        yield _failed("ledger", exc, url=settings.database_url)
        return
    try:
        yield conn
    finally:
        await conn.close()


async def check_everything(settings: Settings) -> list[Check]:
    """The four checks on connections of their own (the CLI: nothing is open yet)."""
    async with _own_ledger(settings) as ledger, contextlib.AsyncExitStack() as stack:
        store: ObjectStore | None = None
        store_failure: Check | None = None
        try:
            store = await stack.enter_async_context(open_object_store(settings))
        except Exception as exc:  # noqa: BLE001 - e.g. a bad endpoint URL
            store_failure = _failed("object_store", exc, url=settings.s3_endpoint_url)
        if isinstance(ledger, Check):
            checks = await check_services(settings, None, store)
            checks[0] = ledger
        else:
            checks = await check_services(settings, ledger, store)
        if store_failure is not None:
            checks[-1] = store_failure
        return checks


def all_ok(checks: list[Check]) -> bool:
    return all(check.ok for check in checks)
