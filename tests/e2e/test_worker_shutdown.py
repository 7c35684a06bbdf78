"""SIGTERM stops a worker within ENVRESTORE_SHUTDOWN_GRACE_SECONDS, and a step it was
running is handed back and resumed at once by another worker (issue 9).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import asyncpg
import pytest

from tests.e2e.conftest import snap
from tests.support.workers import SHUTDOWN_GRACE_SECONDS, run_cli, run_json, wait_for

pytestmark = pytest.mark.e2e


def events(env: dict[str, str], job_id: str) -> list[dict[str, Any]]:
    async def read() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(env["ENVRESTORE_DATABASE_URL"])
        try:
            rows = await conn.fetch(
                "SELECT step, event, at FROM job_events WHERE job_id = $1 ORDER BY id",
                uuid.UUID(job_id),
            )
        finally:
            await conn.close()
        return [dict(row) for row in rows]

    return asyncio.run(read())


def ready(worker_pool, proc) -> bool:
    """This worker (its own log, not the pool's) has booted."""
    log = worker_pool.logs / f"worker-{worker_pool.procs.index(proc)}.log"
    return proc.poll() is None and "Worker process is ready" in log.read_text(errors="replace")


@pytest.mark.parametrize("group", [False, True], ids=["main-process", "process-group"])
def test_idle_worker_stops_within_the_grace(cli_env, worker_pool, group):
    assert run_cli(cli_env, "db", "migrate").returncode == 0
    proc = worker_pool.start()
    wait_for(lambda: ready(worker_pool, proc), timeout=60, what="the worker to boot")
    seconds = worker_pool.terminate(proc, group=group)
    assert seconds < SHUTDOWN_GRACE_SECONDS, worker_pool.log_text()[-3000:]
    assert proc.returncode == 0, worker_pool.log_text()[-3000:]
    assert "shutdown_overran" not in worker_pool.log_text()


@pytest.mark.parametrize("site", ["postgresql"], indirect=True)
def test_sigterm_mid_restore_hands_the_step_back(cli_env, worker_pool, site):
    for proc in list(worker_pool.procs):
        worker_pool.kill(proc)
    paused = {**cli_env, "ENVRESTORE_FAILPOINTS": json.dumps({"import_db.mid_stream": "sleep:60"})}
    worker_pool.env = paused
    stopping = worker_pool.start()
    job_id = run_json(paused, "restore", "shop.dev")["id"]

    def paused_in_step() -> bool:
        steps = {s["name"]: s for s in run_json(paused, "job", "show", job_id)["steps"]}
        return steps["import_db"]["status"] == "running" and "failpoint.sleep" in (
            worker_pool.log_text()
        )

    wait_for(paused_in_step, timeout=90, what="import_db to reach its pause")
    worker_pool.env = cli_env  # the rescuer runs at full speed, without pauses
    rescuer = worker_pool.start()
    wait_for(lambda: ready(worker_pool, rescuer), timeout=60, what="the rescuer to boot")

    seconds = worker_pool.terminate(stopping, group=True)
    assert seconds < SHUTDOWN_GRACE_SECONDS, worker_pool.log_text()[-4000:]

    done = run_cli(cli_env, "job", "show", job_id, "--wait", "--json", timeout=180)
    assert done.returncode == 0, done.stderr + worker_pool.log_text()[-4000:]
    job = json.loads(done.stdout)
    assert job["status"] == "succeeded", job
    import_db = {s["name"]: s for s in job["steps"]}["import_db"]
    assert import_db["attempts"] == 2
    assert snap(site) == site["before"]

    # Handed back, not left to go stale: released, then started again within the
    # stale-after time, and the heartbeat never expired.
    seen = [e for e in events(cli_env, job_id) if e["step"] == "import_db"]
    kinds = [e["event"] for e in seen]
    assert "step.released" in kinds, kinds
    assert "step.heartbeat_expired" not in kinds, kinds
    released = next(e["at"] for e in seen if e["event"] == "step.released")
    restarted = [e["at"] for e in seen if e["event"] == "step.started" and e["at"] > released]
    assert restarted, kinds
    stale_after = float(cli_env["ENVRESTORE_STALE_AFTER_SECONDS"])
    assert (restarted[0] - released).total_seconds() < stale_after, seen
