"""The workers' metrics endpoint, scraped as Prometheus would after a real restore.

`envrestore worker` with ENVRESTORE_WORKER_METRICS_PORT: the scrape sums what
every worker process recorded (prometheus_client multiprocess files, in a
directory the worker empties at start), adds the ledger's queue gauges, and
stops with the workers.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from envrestore.observability.worker_exposition import multiproc_dir
from tests.e2e.conftest import dsn_text
from tests.integration.test_backup_job import fill
from tests.support.sites import make_files, make_repo
from tests.support.workers import ENVRESTORE, run_cli, wait_for

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def metrics_port() -> int:
    return _free_port()


@pytest.fixture
def cli_env(cli_env: dict[str, str], metrics_port: int) -> Iterator[dict[str, str]]:
    """The shared e2e environment, with the worker metrics endpoint on a free port."""
    env = {**cli_env, "ENVRESTORE_WORKER_METRICS_PORT": str(metrics_port)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    folder = multiproc_dir(metrics_port, env)
    folder.mkdir(parents=True, exist_ok=True)
    # A file left by an earlier run on this port: the worker must empty the directory.
    (folder / "counter_999999.db").write_bytes(b"stale")
    yield env
    shutil.rmtree(folder, ignore_errors=True)


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _get(samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.mark.parametrize("site", ["postgresql"], indirect=True)
def test_a_restore_through_real_workers_is_scraped(cli_env, site, worker_pool, metrics_port):
    assert not (multiproc_dir(metrics_port, cli_env) / "counter_999999.db").exists()
    done = run_cli(cli_env, "restore", "shop.dev", "--backup", "latest", "--wait", "--json")
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)

    samples = scrape(metrics_port)
    assert (
        _get(samples, "envrestore_job_duration_seconds_count", kind="restore", outcome="succeeded")
        == 1
    )
    assert (
        _get(samples, "envrestore_job_duration_seconds_count", kind="backup", outcome="succeeded")
        == 1
    )
    for step in job["steps"]:
        if step["status"] != "done":
            continue
        labels = {"kind": "restore", "step": step["name"]}
        assert (
            _get(samples, "envrestore_step_duration_seconds_count", outcome="succeeded", **labels)
            == 1
        )
        assert _get(samples, "envrestore_step_bytes_sum", **labels) == step["bytes_done"]
    assert _get(samples, "envrestore_switch_window_seconds_count", kind="restore") == 1
    assert _get(samples, "envrestore_ledger_up") == 1
    assert _get(samples, "envrestore_queue_depth") == 0


def test_two_worker_processes_are_summed_and_the_endpoint_stops_with_them(
    cli_env, worker_pool, metrics_port, tmp_path: Path, make_postgres_db
):
    """Backups of two environments on a worker of two processes: one scrape counts both,
    whichever process ran each step; SIGTERM to the worker stops the endpoint too."""
    assert run_cli(cli_env, "db", "migrate").returncode == 0
    assert run_cli(cli_env, "site", "add", "shop").returncode == 0
    for env in ("dev", "test"):
        dsn = make_postgres_db()
        asyncio.run(fill(dsn))
        files = make_files(tmp_path / env / "files")
        code = make_repo(tmp_path / env / "code")
        added = run_cli(
            cli_env,
            "env",
            "add",
            f"shop.{env}",
            *("--db", dsn_text(dsn), "--files", str(files), "--code", str(code)),
        )
        assert added.returncode == 0, added.stderr
    with (tmp_path / "worker.log").open("wb") as log:
        proc = subprocess.Popen(
            [ENVRESTORE, "worker", "--processes", "2", "--threads", "2"],
            env=cli_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker_pool.procs.append(proc)  # stopped (and its group killed) by the fixture
    jobs = [
        run_cli(cli_env, "backup", "create", f"shop.{env}", "--json") for env in ("dev", "test")
    ]
    for submitted in jobs:
        assert submitted.returncode == 0, submitted.stderr
        job_id = json.loads(submitted.stdout)["id"]
        done = run_cli(cli_env, "job", "show", job_id, "--wait")
        assert done.returncode == 0, done.stderr
    wait_for(lambda: _reachable(metrics_port), timeout=20, what="the metrics endpoint")
    samples = scrape(metrics_port)
    succeeded = {"kind": "backup", "outcome": "succeeded"}
    assert _get(samples, "envrestore_job_duration_seconds_count", **succeeded) == 2
    worker_pool.terminate(proc)
    wait_for(lambda: not _reachable(metrics_port), timeout=5, what="the endpoint to stop")


def _reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
