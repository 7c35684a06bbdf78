"""Benchmark: the HTTP API under a real uvicorn (`envrestore api`), what a dashboard feels.

Run with `make bench`, or alone: `.venv/bin/pytest tests/bench -k bench_api -p no:randomly -s`
(naming the file itself collects it twice: once as a test file, once by conftest's hook).
Reports, against baselines measured in the same run on the same server:

- `GET /jobs/{id}` requests per second, answered in full (200 with the job,
  its steps and progress) and unchanged (304 for `If-None-Match` with its
  `ETag`), against `GET /healthz` (no ledger query, no auth): the ratio is what
  a job read costs over the server's and the client's own floor;
- enqueue→done latency of a minimal job (a backup of a small `code` part
  only) through the API: `POST .../backups`, then `GET /jobs/{id}` with
  `If-None-Match` every 20 ms until it ends, p50 and p95; the baseline is the
  job's own `created_at` → `finished_at` in the ledger, so the difference is
  what the API and the polling add.

The client is httpx in this process with CONCURRENCY connections; the server
is one `envrestore api` process, the worker one `envrestore worker` process.
Nothing here asserts a speed: it prints a table and writes
`.envrestore/bench/api-<date>.json`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import dsn_text
from tests.support.sites import make_files, make_repo
from tests.support.workers import ENVRESTORE, WorkerPool, run_cli, wait_for

pytestmark = pytest.mark.timeout(0)

SECONDS = float(os.environ.get("ENVRESTORE_BENCH_API_SECONDS", "5"))
CONCURRENCY = int(os.environ.get("ENVRESTORE_BENCH_API_CONCURRENCY", "8"))
JOBS = int(os.environ.get("ENVRESTORE_BENCH_API_JOBS", "30"))
POLL_SECONDS = 0.02
RESULTS_DIR = Path(os.environ.get("ENVRESTORE_BENCH_RESULTS", ".envrestore/bench"))
FINAL = ("succeeded", "failed", "cancelled")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def api_server(cli_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """`envrestore api` as an operator starts it, on a free loopback port."""
    port = _free_port()
    log = (tmp_path / "api.log").open("wb")
    proc = subprocess.Popen(
        [ENVRESTORE, "api"],
        env={**cli_env, "ENVRESTORE_API_HOST": "127.0.0.1", "ENVRESTORE_API_PORT": str(port)},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, (tmp_path / "api.log").read_text()[-3000:]
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, timeout=30, what="the API to answer /healthz")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


@pytest.fixture
def registered(
    cli_env: dict[str, str], worker_pool: WorkerPool, tmp_path: Path, make_postgres_db: Any
) -> dict[str, str]:
    """shop.dev registered through the CLI, a worker running, an admin token's header."""
    assert run_cli(cli_env, "db", "migrate").returncode == 0
    assert run_cli(cli_env, "site", "add", "shop").returncode == 0
    added = run_cli(
        cli_env, "env", "add", "shop.dev", "--db", dsn_text(make_postgres_db()),
        "--files", str(make_files(tmp_path / "site" / "files")),
        "--code", str(make_repo(tmp_path / "site" / "code")),
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    made = run_cli(cli_env, "token", "create", "--name", "bench", "--sites", "*",
                   "--scopes", "admin")  # fmt: skip
    assert made.returncode == 0, made.stderr
    worker_pool.start(threads=4)
    return {"Authorization": f"Bearer {made.stdout.strip()}"}


async def _hammer(
    client: httpx.AsyncClient, path: str, headers: dict[str, str], expect: int
) -> dict[str, float]:
    """CONCURRENCY loops GETting `path` for SECONDS; requests per second and latency."""
    latencies: list[float] = []
    deadline = time.perf_counter() + SECONDS

    async def loop() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            reply = await client.get(path, headers=headers)
            latencies.append(time.perf_counter() - started)
            assert reply.status_code == expect, (path, reply.status_code, reply.text[:300])

    started = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50_ms": _quantile(latencies, 0.50) * 1000,
        "p95_ms": _quantile(latencies, 0.95) * 1000,
    }


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _one_job(client: httpx.AsyncClient, auth: dict[str, str]) -> dict[str, float]:
    """POST a code-only backup and poll it to the end: seconds seen by the client and the job."""
    started = time.perf_counter()
    reply = await client.post("/sites/shop/envs/dev/backups", headers=auth,
                              json={"elements": ["code"]})  # fmt: skip
    assert reply.status_code == 202, reply.text
    location = reply.headers["location"]
    etag = ""
    while True:
        polled = await client.get(location, headers={**auth, "If-None-Match": etag})
        if polled.status_code == 200:
            etag, job = polled.headers["etag"], polled.json()
            if job["status"] in FINAL:
                break
        else:
            assert polled.status_code == 304, polled.text
        await asyncio.sleep(POLL_SECONDS)
    seen = time.perf_counter() - started
    assert job["status"] == "succeeded", job
    created = dt.datetime.fromisoformat(job["created_at"])
    finished = dt.datetime.fromisoformat(job["finished_at"])
    return {"seen": seen, "ledger": (finished - created).total_seconds()}


async def _measure(url: str, auth: dict[str, str]) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        # Warm up: the worker's first job loads its actors; the API's first requests its pool.
        await _one_job(client, auth)
        jobs = [await _one_job(client, auth) for _ in range(JOBS)]
        latest = (await client.get("/jobs", headers=auth)).json()[0]["id"]
        full = await client.get(f"/jobs/{latest}", headers=auth)
        etag = full.headers["etag"]
        return {
            "healthz": await _hammer(client, "/healthz", {}, 200),
            "job_200": await _hammer(client, f"/jobs/{latest}", auth, 200),
            "job_304": await _hammer(
                client, f"/jobs/{latest}", {**auth, "If-None-Match": etag}, 304
            ),
            "job_bytes": len(full.content),
            "latency": {
                which: {
                    "p50_ms": _quantile([j[which] for j in jobs], 0.50) * 1000,
                    "p95_ms": _quantile([j[which] for j in jobs], 0.95) * 1000,
                    "mean_ms": statistics.mean(j[which] for j in jobs) * 1000,
                }
                for which in ("seen", "ledger")
            },
        }


def test_api_job_reads_and_latency(api_server: str, registered: dict[str, str]) -> None:
    result = asyncio.run(_measure(api_server, registered))
    floor = result["healthz"]["rps"]
    print()
    print(f"API benchmark: {CONCURRENCY} connections, {SECONDS:.0f} s per row, one uvicorn process")
    print(f"{'request':<34}{'req/s':>9}{'x healthz':>11}{'p50 ms':>9}{'p95 ms':>9}")
    for key, label in (
        ("healthz", "GET /healthz (baseline)"),
        ("job_200", f"GET /jobs/{{id}} 200 ({result['job_bytes']} B)"),
        ("job_304", "GET /jobs/{id} If-None-Match 304"),
    ):
        row = result[key]
        print(f"{label:<34}{row['rps']:>9.0f}{row['rps'] / floor:>11.2f}"
              f"{row['p50_ms']:>9.1f}{row['p95_ms']:>9.1f}")  # fmt: skip
    print(f"\nenqueue→done of a minimal job (code-only backup), {JOBS} jobs one after another:")
    print(f"{'measured by':<34}{'p50 ms':>9}{'p95 ms':>9}{'mean ms':>9}")
    for which, label in (("seen", "client: POST → done seen (20 ms poll)"),
                         ("ledger", "ledger: created_at → finished_at")):  # fmt: skip
        row = result["latency"][which]
        print(f"{label:<34}{row['p50_ms']:>9.0f}{row['p95_ms']:>9.0f}{row['mean_ms']:>9.0f}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"api-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps({"concurrency": CONCURRENCY, "seconds": SECONDS, **result}, indent=2))
    print(f"\nwritten: {out}")
    # Sanity, not speed: a 304 carries no body, and every request was answered.
    assert result["job_304"]["requests"] > 0 and result["job_200"]["requests"] > 0
