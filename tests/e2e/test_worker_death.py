"""A worker SIGKILLed in the middle of a backup step: the job still completes, once.

The stream rate cap (an operator setting) makes archive_files long enough to
be killed mid-stream; a second worker started afterwards resumes the job
through the reconciler (heartbeat expiry), not through Redis's slow requeue.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.support.sites import make_repo
from tests.support.workers import run_cli, run_json, wait_for

pytestmark = pytest.mark.e2e


def test_sigkilled_worker_mid_step_job_completes_with_one_backup(
    cli_env, worker_pool, tmp_path, postgres_db
):
    env = {**cli_env, "ENVRESTORE_STREAM_RATE_LIMIT": str(512 * 1024)}
    worker_pool.env = env
    files = tmp_path / "files"
    files.mkdir()
    for index in range(4):
        (files / f"upload-{index}.bin").write_bytes(os.urandom(1024 * 1024))
    code = make_repo(tmp_path / "code")
    dsn = f"postgresql://{postgres_db.user}@{postgres_db.host}:{postgres_db.port}/{postgres_db.database}"
    assert run_cli(env, "db", "migrate").returncode == 0
    assert run_cli(env, "site", "add", "shop").returncode == 0
    assert (
        run_cli(
            env, "env", "add", "shop.dev", "--db", dsn, "--files", str(files), "--code", str(code)
        ).returncode
        == 0
    )

    first = worker_pool.start()
    job_id = run_json(env, "backup", "create", "shop.dev")["id"]

    def files_step_streaming():
        job = run_json(env, "job", "show", job_id)
        step = {s["name"]: s for s in job["steps"]}["archive_files"]
        return step["status"] == "running" and step["bytes_done"] > 0

    wait_for(files_step_streaming, timeout=60, what="archive_files to stream")
    worker_pool.kill(first)

    worker_pool.start()
    done = run_cli(env, "job", "show", job_id, "--wait", "--json", timeout=120)
    assert done.returncode == 0, done.stderr + worker_pool.log_text()[-4000:]
    job = json.loads(done.stdout)
    assert job["status"] == "succeeded"
    steps = {s["name"]: s for s in job["steps"]}
    assert steps["archive_files"]["attempts"] == 2
    assert steps["archive_files"]["bytes_done"] >= 4 * 1024 * 1024
    backups = run_json(env, "backup", "list", "shop.dev")
    assert len(backups) == 1
    assert backups[0]["job_id"] == job_id
