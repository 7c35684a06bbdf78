"""Restores as a user runs them: the CLI, real worker processes, real services.

Each test backs an environment up through the queue, changes it, restores
it, and compares what a user would: tables and rows, every file's sha256,
git HEAD and tags.
"""

from __future__ import annotations

import json
import threading

import pytest

from tests.e2e.conftest import dsn_text, snap
from tests.support.workers import run_cli, run_json, wait_for

pytestmark = pytest.mark.e2e


def test_restore_latest_through_the_cli(cli_env, site):
    done = run_cli(cli_env, "restore", "shop.dev", "--backup", "latest", "--wait", "--json")
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["status"] == "succeeded"
    assert snap(site) == site["before"]
    assert job["outputs"]["switch_window_seconds"] >= 0
    steps = {s["name"]: s for s in job["steps"]}
    for name in ("import_db", "import_files", "apply_code"):
        assert steps[name]["bytes_done"] == steps[name]["bytes_total"] > 0

    undone = run_cli(cli_env, "rollback", "run", job["id"], "--wait", "--json")
    assert undone.returncode == 0, undone.stderr
    assert snap(site) == site["changed"]


@pytest.mark.parametrize("site", ["postgresql"], indirect=True)
def test_same_key_twice_is_one_restore(cli_env, site):
    first = run_json(cli_env, "restore", "shop.dev", "--idempotency-key", "click")
    second = run_json(cli_env, "restore", "shop.dev", "--idempotency-key", "click")
    assert first["id"] == second["id"]
    assert second["created"] is False
    other = run_cli(
        cli_env, "restore", "shop.dev", "--idempotency-key", "click", "--element", "files"
    )
    assert other.returncode == 4
    done = run_cli(cli_env, "job", "show", first["id"], "--wait", "--json")
    assert done.returncode == 0, done.stderr
    restores = [j for j in run_json(cli_env, "job", "list") if j["kind"] == "restore"]
    assert len(restores) == 1
    assert snap(site) == site["before"]


@pytest.mark.parametrize("site", ["mariadb"], indirect=True)
def test_two_restores_of_one_environment_never_interleave(cli_env, site, worker_pool):
    worker_pool.start()  # a second worker, so both jobs could run at once
    first = run_json(cli_env, "restore", "shop.dev")["id"]
    second = run_json(cli_env, "restore", "shop.dev", "--element", "database")["id"]
    for job_id in (first, second):
        done = run_cli(cli_env, "job", "show", job_id, "--wait", "--json")
        assert done.returncode == 0, done.stderr
    jobs = {j: run_json(cli_env, "job", "show", j) for j in (first, second)}
    first_end = max(s["finished_at"] for s in jobs[first]["steps"] if s["finished_at"])
    second_start = min(s["started_at"] for s in jobs[second]["steps"] if s["started_at"])
    assert second_start >= first_end
    assert snap(site) == site["before"]


@pytest.mark.parametrize("site", ["postgresql"], indirect=True)
def test_protected_environment_is_refused_with_advice(cli_env, site):
    run_cli(
        cli_env,
        "env",
        "add",
        "shop.dev",
        "--db",
        dsn_text(site["dsn"]),
        "--files",
        str(site["files"]),
        "--code",
        str(site["code"]),
        "--protected",
    )
    refused = run_cli(cli_env, "restore", "shop.dev")
    assert refused.returncode == 4
    assert "--force-live" in refused.stderr
    assert "clone" in refused.stderr
    assert snap(site) == site["changed"]


@pytest.mark.parametrize("site", ["postgresql"], indirect=True)
def test_cancel_before_switch_and_refusal_after(cli_env, worker_pool, site):
    env = {**cli_env, "ENVRESTORE_STREAM_RATE_LIMIT": str(64 * 1024)}
    for proc in list(worker_pool.procs):
        worker_pool.kill(proc)
    worker_pool.env = env
    worker_pool.start()
    job_id = run_json(env, "restore", "shop.dev")["id"]

    def importing():
        steps = {s["name"]: s for s in run_json(env, "job", "show", job_id)["steps"]}
        return steps["import_files"]["status"] == "running"

    wait_for(importing, timeout=60, what="the imports to start")
    cancelled = run_cli(env, "job", "cancel", job_id)
    assert cancelled.returncode == 0, cancelled.stderr
    done = run_cli(env, "job", "show", job_id, "--wait", "--json")
    assert done.returncode == 5
    assert json.loads(done.stdout)["status"] == "cancelled"

    def settled():
        steps = run_json(env, "job", "show", job_id)["steps"]
        return all(s["status"] not in ("pending", "running") for s in steps)

    wait_for(settled, timeout=30, what="the cleanup to finish")
    assert snap(site) == site["changed"]
    leftovers = [p.name for p in site["files"].parent.iterdir() if "envrestore" in p.name]
    assert leftovers == []

    fast = {**cli_env}
    worker_pool.env = fast
    worker_pool.start()
    later = run_cli(fast, "restore", "shop.dev", "--wait", "--json")
    assert later.returncode == 0, later.stderr
    refused = run_cli(fast, "job", "cancel", json.loads(later.stdout)["id"])
    assert refused.returncode == 4


# The progress bar a user sees with --wait is drawn from the same fields.
@pytest.mark.parametrize("site", ["postgresql"], indirect=True)
def test_progress_is_reported_while_importing(cli_env, worker_pool, site):
    # ~7 s for the ~230 KB files part: several CLI polls (~1 s each on a busy
    # 2-core CI machine) land while it runs.
    env = {**cli_env, "ENVRESTORE_STREAM_RATE_LIMIT": str(32 * 1024)}
    for proc in list(worker_pool.procs):
        worker_pool.kill(proc)
    worker_pool.env = env
    worker_pool.start()
    job_id = run_json(env, "restore", "shop.dev")["id"]
    seen: list[int] = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            job = run_json(env, "job", "show", job_id)
            step = {s["name"]: s for s in job["steps"]}["import_files"]
            if step["status"] == "running":
                seen.append(step["bytes_done"])
            if job["status"] in ("succeeded", "failed"):
                return

    watcher = threading.Thread(target=watch)
    watcher.start()
    done = run_cli(env, "job", "show", job_id, "--wait", timeout=180)
    stop.set()
    watcher.join()
    assert done.returncode == 0, done.stderr
    assert "import_files" in done.stderr  # a bar per step, drawn on stderr
    assert len(set(seen)) >= 3  # the counter moved while the step ran
    assert seen == sorted(seen)
