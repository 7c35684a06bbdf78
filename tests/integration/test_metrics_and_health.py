"""Metrics and health on real services: a real restore scraped, probes, `envrestore health`.

The API's routers are mounted on an app of the test's own (the state the
API's lifespan sets: settings, pool, store) and called over ASGI; the
scrape is parsed as Prometheus would parse it. Counters live in this
process's registry for the whole session, so each assertion compares a
scrape after the job with one before it.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from envrestore.api import health as health_api
from envrestore.api import metrics as metrics_api
from envrestore.observability import metrics
from envrestore.pipelines.jobs.cancel import cancel_job
from envrestore.pipelines.jobs.runner import run_step
from envrestore.pipelines.objectstore import open_object_store
from tests.integration import test_restore_job
from tests.support.driver import drive
from tests.support.environments import add_env
from tests.support.producing import submit_backup, submit_restore
from tests.support.workers import ENVRESTORE

pytestmark = pytest.mark.integration

#: shop.dev with content and one backup of it (the restore tests' fixture).
backed_up = test_restore_job.backed_up

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    """A loopback port nothing listens on (bound once, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def api_app(settings: Any, pool: Any, store: Any) -> FastAPI:
    app = FastAPI()
    app.include_router(health_api.router)
    app.include_router(metrics_api.router)
    app.state.settings = settings
    app.state.pool = pool
    app.state.store = store
    return app


@pytest.fixture
async def client(runtime, redis_url) -> AsyncIterator[httpx.AsyncClient]:
    settings = runtime.settings.model_copy(update={"redis_url": redis_url})
    app = api_app(settings, runtime.pool, runtime.store)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        yield http


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


@pytest.mark.parametrize("backed_up", ["postgresql"], indirect=True)
async def test_a_restore_is_in_the_histograms_after_it_ran(runtime, backed_up, client):
    before = await scrape(client)
    job = await submit_restore(runtime, "shop.dev", backup=backed_up["backup"].id)
    view = await drive(runtime, job.job_id)
    assert view["status"] == "succeeded", view
    after = await scrape(client)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("envrestore_job_duration_seconds_count", kind="restore", outcome="succeeded") == 1
    steps = [s["name"] for s in view["steps"] if s["status"] == "done"]
    assert "switch" in steps and "import_db" in steps
    for step in steps:
        labels = {"kind": "restore", "step": step}
        assert grew("envrestore_step_duration_seconds_count", outcome="succeeded", **labels) == 1
        assert grew("envrestore_step_bytes_count", **labels) == 1
    db_step = next(s for s in view["steps"] if s["name"] == "import_db")
    assert grew("envrestore_step_bytes_sum", kind="restore", step="import_db") == pytest.approx(
        db_step["bytes_done"]
    )
    assert db_step["bytes_done"] > 0
    assert grew("envrestore_switch_window_seconds_count", kind="restore") == 1
    assert grew("envrestore_switch_window_seconds_sum", kind="restore") == pytest.approx(
        view["outputs"]["switch_window_seconds"], abs=1e-6
    )
    assert value(after, "envrestore_ledger_up") == 1
    assert value(after, "envrestore_queue_depth") == 0


async def test_queue_depth_and_oldest_age_follow_the_ledger(
    runtime, client, tmp_path, make_postgres_db
):
    await add_env(runtime, tmp_path / "envs", "shop.dev", make_postgres_db)
    await add_env(runtime, tmp_path / "envs", "shop.test", make_postgres_db)
    empty = await scrape(client)
    assert value(empty, "envrestore_queue_depth") == 0
    assert value(empty, "envrestore_oldest_queued_job_age_seconds") == 0
    first = await submit_backup(runtime, "shop.dev")
    second = await submit_backup(runtime, "shop.test")
    await runtime.pool.execute(
        "UPDATE jobs SET created_at = now() - interval '90 seconds' WHERE id = $1", first.job_id
    )
    queued = await scrape(client)
    assert value(queued, "envrestore_queue_depth") == 2
    assert 90 <= value(queued, "envrestore_oldest_queued_job_age_seconds") < 150

    await cancel_job(runtime.pool, first.job_id, runtime.kinds)
    one_left = await scrape(client)
    assert value(one_left, "envrestore_queue_depth") == 1
    assert value(one_left, "envrestore_oldest_queued_job_age_seconds") < 60

    assert (await drive(runtime, second.job_id))["status"] == "succeeded"
    assert value(await scrape(client), "envrestore_queue_depth") == 0


async def test_lease_waits_and_failures_are_counted(runtime, client, tmp_path, make_postgres_db):
    """A step whose environment another job holds is put off (counted); a job whose files
    are gone fails, counting its error class and the job's failed outcome."""
    site = await add_env(runtime, tmp_path / "envs", "shop.dev", make_postgres_db)
    before = await scrape(client)
    holder = await submit_backup(runtime, "shop.dev")
    waiter = await submit_backup(runtime, "shop.dev")
    # The older job is still queued: the newer one may not take the lease before it.
    await run_step(runtime, waiter.job_id, "archive_files")
    waits = {"kind": "backup", "step": "archive_files"}
    after_wait = await scrape(client)
    assert (
        value(after_wait, "envrestore_lease_waits_total", **waits)
        - value(before, "envrestore_lease_waits_total", **waits)
        == 1
    )
    assert value(after_wait, "envrestore_lease_wait_seconds_total", **waits) > value(
        before, "envrestore_lease_wait_seconds_total", **waits
    )

    shutil.rmtree(site.files)
    view = await drive(runtime, holder.job_id)
    assert view["status"] == "failed", view
    after = await scrape(client)
    # The driver delivers both jobs' messages: both end failed, each counted once.
    failed = {"kind": "backup", "outcome": "failed"}
    assert (
        value(after, "envrestore_job_duration_seconds_count", **failed)
        - value(before, "envrestore_job_duration_seconds_count", **failed)
        == 2
    )
    grown = {
        dict(labels)["error_class"]
        for (name, labels), v in after.items()
        if name == "envrestore_step_failures_total"
        and dict(labels).get("step") == "archive_files"
        and v > before.get((name, labels), 0.0)
    }
    assert grown, "the failed step counts its error class"
    attempts = {"kind": "backup", "step": "archive_files", "outcome": "failed"}
    assert value(after, "envrestore_step_duration_seconds_count", **attempts) > value(
        before, "envrestore_step_duration_seconds_count", **attempts
    )


def test_observe_http_counts_by_route_template():
    labels = {"route": "/jobs/{job_id}", "method": "GET", "status": "304"}
    name = "envrestore_http_request_duration_seconds_count"
    before = REGISTRY.get_sample_value(name, labels) or 0.0
    metrics.observe_http("/jobs/{job_id}", "get", 304, 0.002)
    assert REGISTRY.get_sample_value(name, labels) == before + 1


# ----------------------------------------------------------------------- probes


async def test_healthz_and_readyz_with_every_service_up(client):
    live = await client.get("/healthz")
    assert live.status_code == 200 and live.json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["status"] == "ready"
    assert [c["name"] for c in body["checks"]] == ["ledger", "migrations", "broker", "object_store"]
    assert all(c["ok"] and c["code"] == "ok" for c in body["checks"])


async def test_readyz_is_503_with_a_dead_broker_or_store(runtime, redis_url):
    dead = f"http://127.0.0.1:{free_port()}"
    settings = runtime.settings.model_copy(
        update={"redis_url": f"redis://127.0.0.1:{free_port()}/0", "s3_endpoint_url": dead}
    )
    async with open_object_store(settings) as dead_store:
        app = api_app(settings, runtime.pool, dead_store)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
            assert (await http.get("/healthz")).status_code == 200  # liveness touches nothing
            ready = await http.get("/readyz")
    assert ready.status_code == 503
    checks = {c["name"]: c for c in ready.json()["checks"]}
    assert checks["ledger"]["ok"] and checks["migrations"]["ok"]
    assert not checks["broker"]["ok"] and checks["broker"]["code"] == "unavailable"
    assert not checks["object_store"]["ok"]
    assert "Traceback" not in ready.text


# ------------------------------------------------------------- envrestore health


def health(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ENVRESTORE, "health", *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_health_all_good(cli_env):
    done = health(cli_env)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["ledger", "migrations", "broker", "object_store"]
    assert all(line.split()[1] == "ok:" for line in lines)
    report = json.loads(health(cli_env, "--json").stdout)
    assert report["ok"] is True and len(report["checks"]) == 4


def test_health_with_redis_unreachable_exits_6(cli_env):
    env = {**cli_env, "ENVRESTORE_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    done = health(env)
    assert done.returncode == 6
    broker = next(line for line in done.stdout.splitlines() if line.startswith("broker"))
    assert "FAIL (unavailable)" in broker
    assert "Traceback" not in done.stderr
    report = json.loads(health(env, "--json").stdout)
    assert report["ok"] is False
    assert {c["name"]: c["ok"] for c in report["checks"]} == {
        "ledger": True,
        "migrations": True,
        "broker": False,
        "object_store": True,
    }


def test_health_on_a_fresh_unmigrated_database_says_migrate(cli_env, make_postgres_db):
    dsn = make_postgres_db()
    env = {
        **cli_env,
        "ENVRESTORE_DATABASE_URL": f"postgresql://{dsn.user}@{dsn.host}:{dsn.port}/{dsn.database}",
    }
    done = health(env)
    assert done.returncode == 6
    line = next(line for line in done.stdout.splitlines() if line.startswith("migrations"))
    assert "FAIL (not_migrated)" in line and "envrestore db migrate" in line
    report = json.loads(health(env, "--json").stdout)
    codes = {c["name"]: c["code"] for c in report["checks"]}
    assert codes == {
        "ledger": "ok",
        "migrations": "not_migrated",
        "broker": "ok",
        "object_store": "ok",
    }
    migrated = subprocess.run(
        [ENVRESTORE, "db", "migrate"], env=env, capture_output=True, text=True, timeout=60
    )
    assert migrated.returncode == 0, migrated.stderr
    assert health(env).returncode == 0


def test_job_id_is_not_a_label():
    """No label carries a job id, site or token: bounded cardinality, nothing scoped leaks."""
    names = {
        label
        for metric in (
            metrics.JOB_DURATION,
            metrics.STEP_DURATION,
            metrics.STEP_BYTES,
            metrics.FAILURES,
            metrics.LEASE_WAITS,
            metrics.SWITCH_WINDOW,
            metrics.HTTP_DURATION,
        )
        for label in metric._labelnames
    }
    assert names.isdisjoint({"job_id", "site", "env", "token"}), names
