"""Running jobs in-process for integration tests: the outbox relayed straight into `run_step`.

The same ledger protocol as the workers, minus Dramatiq, so tests of the
pipelines need no worker process; e2e tests use real workers.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from envrestore.pipelines.jobs.outbox import relay_once
from envrestore.pipelines.jobs.reconciler import reconcile_once
from envrestore.pipelines.jobs.runner import run_step
from envrestore.pipelines.jobs.runtime import Runtime
from envrestore.pipelines.jobs.views import show_job

TERMINAL = {"succeeded", "failed", "cancelled"}


def settled(view: dict[str, Any]) -> bool:
    return view["status"] in TERMINAL and all(
        s["status"] not in ("pending", "running") for s in view["steps"]
    )


async def drive(runtime: Runtime, job_id: uuid.UUID, *, timeout: float = 120.0) -> dict[str, Any]:
    """Deliver the job's messages (steps of a wave concurrently) until it has settled."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        sent: list[tuple[uuid.UUID, str]] = []
        await relay_once(runtime.pool, lambda j, s: sent.append((j, s)))
        if sent:
            await asyncio.gather(*(run_step(runtime, j, s) for j, s in sent))
            continue
        view = await show_job(runtime.pool, job_id)
        if settled(view):
            return view
        if loop.time() > deadline:
            raise TimeoutError(f"job {job_id} did not settle: {view}")
        await reconcile_once(runtime)
        await asyncio.sleep(0.05)
