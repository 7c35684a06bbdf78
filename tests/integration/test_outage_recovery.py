"""The step protocol across outages, on the real ledger and a real Redis (issue 9).

The ledger is reached through a loopback proxy that the test cuts and opens
again: every connection drops and new ones are refused, as when PostgreSQL
stops. Redis is a server of the test's own, killed and started again.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis

from envrestore.pipelines import registry
from envrestore.pipelines.jobs.outbox import forget_sends_before, relay_once
from envrestore.pipelines.jobs.reconciler import reconcile_once
from envrestore.pipelines.jobs.runner import run_step
from envrestore.pipelines.jobs.views import show_job
from envrestore.pipelines.ledger.connection import create_pool
from envrestore.workers.broker_watch import UPTIME_SLACK_SECONDS, BrokerRestarts
from tests.integration.test_step_protocol import Script, submit, toy_kind
from tests.support.outages import RedisServer, TcpProxy, proxied
from tests.support.sites import make_repo

pytestmark = pytest.mark.integration


@pytest.fixture
def script() -> Script:
    return Script()


@pytest.fixture
async def toy(runtime, script, tmp_path: Path, postgres_db):
    """The toy job kind of test_step_protocol on an environment of its own."""
    kind = toy_kind(script)
    rt = dataclasses.replace(runtime, kinds={"toy": kind})
    await registry.add_site(rt.pool, "toy")
    (tmp_path / "files").mkdir()
    env, _ = await registry.add_environment(
        rt.pool,
        "toy.dev",
        db=f"postgresql://postgres@127.0.0.1:5432/{postgres_db.database}",
        files=tmp_path / "files",
        code=make_repo(tmp_path / "code", commits=1),
    )
    return rt, kind, env


@pytest.fixture
async def cut_off(toy, settings) -> AsyncIterator[tuple[Any, Any, Any, TcpProxy]]:
    """The toy job engine whose ledger pool goes through a proxy the test can cut."""
    rt, kind, env = toy
    with proxied(settings.database_url) as (proxy, url):
        pool = await create_pool(url)
        try:
            yield dataclasses.replace(rt, pool=pool), kind, env, proxy
        finally:
            pool.terminate()


def steps_of(view: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in view["steps"]}


async def test_a_step_that_ends_during_a_ledger_outage_is_recorded_when_it_returns(
    cut_off,
    script,
    toy,
):
    worker_rt, kind, env, proxy = cut_off
    rt = toy[0]  # the test's own view of the ledger, never cut
    script.block["fetch"] = asyncio.Event()
    job = await submit(rt, kind, env)
    await relay_once(rt.pool, lambda j, s: None)
    running = asyncio.create_task(run_step(worker_rt, job.job_id, "fetch"))
    await script.started.setdefault("fetch", asyncio.Event()).wait()

    proxy.cut()
    script.block.pop("fetch").set()  # the work ends while the ledger is away
    await asyncio.sleep(1.5)
    assert not running.done()
    assert steps_of(await show_job(rt.pool, job.job_id))["fetch"]["status"] == "running"
    proxy.open()

    await asyncio.wait_for(running, timeout=10)
    fetch = steps_of(await show_job(rt.pool, job.job_id))["fetch"]
    assert fetch["status"] == "done"
    assert fetch["attempts"] == 1  # recorded, not run again
    assert script.calls == ["fetch"]


async def test_a_message_taken_during_a_ledger_outage_runs_when_it_returns(
    cut_off,
    script,
    toy,
):
    worker_rt, kind, env, proxy = cut_off
    rt = toy[0]
    job = await submit(rt, kind, env)
    await relay_once(rt.pool, lambda j, s: None)

    proxy.cut()
    delivery = asyncio.create_task(run_step(worker_rt, job.job_id, "fetch"))
    await asyncio.sleep(1.5)
    assert not delivery.done()  # waiting for the ledger, not dropped
    proxy.open()

    await asyncio.wait_for(delivery, timeout=10)
    fetch = steps_of(await show_job(rt.pool, job.job_id))["fetch"]
    assert (fetch["status"], fetch["attempts"]) == ("done", 1)
    assert script.calls == ["fetch"]


async def test_stale_heartbeats_are_not_expired_until_allowed(toy, script):
    rt, kind, env = toy
    script.block["fetch"] = asyncio.Event()
    job = await submit(rt, kind, env)
    await relay_once(rt.pool, lambda j, s: None)
    silent = asyncio.create_task(run_step(rt, job.job_id, "fetch"))
    await script.started.setdefault("fetch", asyncio.Event()).wait()
    silent.cancel()  # no more heartbeats: as seen by a reconciler back from an outage
    with pytest.raises(asyncio.CancelledError):
        await silent
    await asyncio.sleep(rt.settings.stale_after_seconds + 0.5)

    assert (await reconcile_once(rt, expire=False)).expired == 0
    assert steps_of(await show_job(rt.pool, job.job_id))["fetch"]["status"] == "running"
    assert (await reconcile_once(rt)).expired == 1


async def test_messages_lost_in_a_redis_restart_are_sent_again_at_once(toy, script):
    rt, kind, env = toy
    server = RedisServer()
    server.start()
    try:
        client = redis.Redis(port=server.port, socket_timeout=2)
        restarts = BrokerRestarts(client)
        # The message below is sent well after this server started.
        await asyncio.sleep(UPTIME_SLACK_SECONDS + 1.2)
        job = await submit(rt, kind, env)
        sent: list[str] = []
        await relay_once(rt.pool, lambda j, s: sent.append(s))
        assert sent == ["fetch"]

        start = restarts.new_start()  # what a worker sees when it boots: nothing lost
        assert start is not None
        assert await forget_sends_before(rt.pool, start.lost_if_sent_before) == 0
        restarts.accounted(start)
        assert restarts.new_start() is None
        # A message sent a moment ago may simply wait its turn: not sent again yet.
        assert (await reconcile_once(rt)).resent == 0

        server.kill()  # the message waiting in Redis is gone
        server.start()
        start = restarts.new_start()
        assert start is not None and start.uptime_seconds < 5
        assert await forget_sends_before(rt.pool, start.lost_if_sent_before) == 1
        restarts.accounted(start)
        assert (await reconcile_once(rt)).resent == 1
        sent.clear()
        await relay_once(rt.pool, lambda j, s: sent.append(s))
        assert sent == ["fetch"]
        client.close()
    finally:
        server.kill()
    assert (await show_job(rt.pool, job.job_id))["status"] == "queued"
