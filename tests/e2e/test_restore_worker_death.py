"""A worker SIGKILLed during import_db, import_files or switch: the restore still completes.

The job ends with the same content as an undisturbed run, resumed by another
worker through the reconciler once the dead attempt's heartbeat expires.
"""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import snap
from tests.support.workers import run_cli, run_json, wait_for

pytestmark = pytest.mark.e2e


def pause(failpoint: str) -> dict[str, str]:
    """The doomed worker stops for a while at this point, where it is killed."""
    return {"ENVRESTORE_FAILPOINTS": json.dumps({failpoint: "sleep:30"})}


@pytest.mark.parametrize(
    ("step", "extra"),
    [
        ("import_db", pause("import_db.mid_stream")),
        ("import_files", pause("import_files.mid_stream")),
        ("switch", pause("switch.after_database")),
    ],
)
@pytest.mark.parametrize("site", ["mariadb", "postgresql"], indirect=True)
def test_sigkill_mid_step_then_the_restore_completes(cli_env, worker_pool, site, step, extra):
    for proc in list(worker_pool.procs):
        worker_pool.kill(proc)
    env = {**cli_env, **extra}
    worker_pool.env = env
    doomed = worker_pool.start()
    job_id = run_json(env, "restore", "shop.dev")["id"]

    def paused_in_step():
        steps = {s["name"]: s for s in run_json(env, "job", "show", job_id)["steps"]}
        return steps[step]["status"] == "running" and "failpoint.sleep" in worker_pool.log_text()

    wait_for(paused_in_step, timeout=90, what=f"{step} to reach its pause")
    worker_pool.kill(doomed)

    worker_pool.env = cli_env  # the rescuer runs at full speed, without pauses
    worker_pool.start()
    done = run_cli(cli_env, "job", "show", job_id, "--wait", "--json", timeout=180)
    assert done.returncode == 0, done.stderr + worker_pool.log_text()[-4000:]
    job = json.loads(done.stdout)
    assert {s["name"]: s for s in job["steps"]}[step]["attempts"] == 2
    assert snap(site) == site["before"]
    leftovers = sorted(
        p.name
        for p in site["files"].parent.iterdir()
        if "envrestore" in p.name and "rollback" not in p.name
    )
    assert leftovers == []
