"""Submitting jobs in tests the way every caller does: typed requests through a Producer."""

from __future__ import annotations

import uuid
from typing import Any

from envrestore.pipelines.jobs.principal import Principal
from envrestore.pipelines.jobs.runtime import Runtime
from envrestore.pipelines.jobs.submit import Submitted
from envrestore.pipelines.producer import Producer
from envrestore.pipelines.requests import (
    BackupRequest,
    ImportRequest,
    PartInput,
    RestoreRequest,
    RollbackRequest,
    parse_elements,
)
from envrestore.pipelines.restore.expiry import schedule_expiries

TESTER = Principal.operator("tests")


def producer(rt: Runtime, *, preflight: bool = True, principal: Principal = TESTER) -> Producer:
    return Producer(rt.pool, rt.settings, rt.store, principal, preflight=preflight)


async def submit_restore(
    rt: Runtime,
    target: str,
    *,
    element: str = "all",
    idempotency_key: str | None = None,
    **fields: Any,
) -> Submitted:
    request = RestoreRequest(target, elements=parse_elements(element), **fields)
    return await producer(rt).submit(request, idempotency_key=idempotency_key)


async def submit_backup(
    rt: Runtime,
    target: str,
    *,
    idempotency_key: str | None = None,
    check: bool = True,
    **fields: Any,
) -> Submitted:
    return await producer(rt, preflight=check).submit(
        BackupRequest(target, **fields), idempotency_key=idempotency_key
    )


async def submit_rollback(
    rt: Runtime, job_id: uuid.UUID, *, idempotency_key: str | None = None
) -> Submitted:
    return await producer(rt).submit(RollbackRequest(str(job_id)), idempotency_key=idempotency_key)


async def submit_import(
    rt: Runtime,
    target: str,
    *,
    idempotency_key: str | None = None,
    force_live: bool = False,
    allow_incomplete_dump: bool = False,
    **parts: str,
) -> Submitted:
    """`submit_import(rt, "shop.dev", database=url, files=url)`: URLs only (uploads: upload_part)."""
    request = ImportRequest(
        target,
        tuple(PartInput(element, url=url) for element, url in parts.items()),
        force_live=force_live,
        allow_incomplete_dump=allow_incomplete_dump,
    )
    return await producer(rt).submit(request, idempotency_key=idempotency_key)


async def submit_expiries(rt: Runtime) -> int:
    return await schedule_expiries(producer(rt, principal=Principal.system("rollback-expiry")))
