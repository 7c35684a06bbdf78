"""Live progress of a real restore over Server-Sent Events, through a real uvicorn server.

A client reads the first events, drops the connection while the restore is
still running, and reconnects with `Last-Event-ID`: together the two
streams hold every ledger event of the job exactly once, in order, and the
second ends with the job's final status.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from envrestore.pipelines.jobs.runtime import Runtime
from tests.support.api import bearer, served
from tests.support.driver import drive
from tests.support.environments import add_env
from tests.support.producing import submit_backup

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(settings: Any) -> Any:
    return settings.model_copy(update={"api_sse_poll_seconds": 0.05})


async def _events(lines: AsyncIterator[str]) -> AsyncIterator[dict[str, str]]:
    """SSE messages as {field: value} (comments and retry-only messages skipped)."""
    message: dict[str, str] = {}
    async for line in lines:
        if line == "":
            if "event" in message or "data" in message:
                yield message
            message = {}
            continue
        field, _, value = line.partition(":")
        message[field] = value.removeprefix(" ")


async def test_sse_follows_a_restore_and_resumes_with_last_event_id(
    settings: Any, runtime: Runtime, tmp_path: Any, make_postgres_db: Any
) -> None:
    dev = await add_env(runtime, tmp_path / "envs", "shop.dev", make_postgres_db)
    backed_up = await submit_backup(runtime, "shop.dev")
    assert (await drive(runtime, backed_up.job_id))["status"] == "succeeded"
    before = await dev.snapshot()
    async with served(settings, runtime.pool) as base:
        token = await bearer(runtime.pool, "dash", sites=["shop"], scopes=["read", "restore"])
        async with httpx.AsyncClient(base_url=base, headers=token, timeout=60) as http:
            queued = await http.post("/sites/shop/envs/dev/restores", json={"in_place": False})
            assert queued.status_code == 202, queued.text
            job_id = queued.json()["id"]
            location = queued.headers["location"]
            polled = await http.get(location)
            unchanged = await http.get(location, headers={"If-None-Match": polled.headers["etag"]})
            assert unchanged.status_code == 304

            driving = asyncio.create_task(drive(runtime, uuid.UUID(job_id)))
            first: list[dict[str, str]] = []
            async with http.stream("GET", f"/jobs/{job_id}/events") as sse:
                assert sse.status_code == 200
                async for message in _events(sse.aiter_lines()):
                    first.append(message)
                    if sum("id" in m for m in first) == 3:
                        break
            status_at_drop = await runtime.pool.fetchval(
                "SELECT status FROM jobs WHERE id = $1", uuid.UUID(job_id)
            )
            assert status_at_drop in ("queued", "running")

            second: list[dict[str, str]] = []
            resume = {"Last-Event-ID": [m for m in first if "id" in m][-1]["id"]}
            async with http.stream("GET", f"/jobs/{job_id}/events", headers=resume) as sse:
                async for message in _events(sse.aiter_lines()):
                    second.append(message)
            view = await driving
    assert view["status"] == "succeeded"
    assert second[-1]["event"] == "end"
    assert json.loads(second[-1]["data"]) == {"id": job_id, "status": "succeeded"}
    streamed = [int(m["id"]) for m in first + second if "id" in m]
    ledger = [
        r["id"]
        for r in await runtime.pool.fetch(
            "SELECT id FROM job_events WHERE job_id = $1 ORDER BY id", uuid.UUID(job_id)
        )
    ]
    assert streamed == ledger
    assert any("id" in m for m in second)  # the resumed stream carried events of its own
    for message in first + second:
        if "id" in message:
            data = json.loads(message["data"])
            assert data["event"] == message["event"] and data["id"] == int(message["id"])
    # progress between events: steps done grow to all, and the restore's bytes are counted
    progress = [json.loads(m["data"]) for m in first + second if m["event"] == "progress"]
    done = [p["steps_done"] for p in progress]
    assert done == sorted(done) and done[-1] == progress[-1]["steps_total"]
    assert progress[-1]["bytes_done"] > 0 and progress[-1]["status"] == "succeeded"
    assert (await dev.snapshot()).rows == before.rows
