"""Benchmark: what the queue itself costs, enqueue→done of a job that does nothing.

Run with `make bench`, or alone: `.venv/bin/python -m tests.bench.bench_queue`
(it runs this file's test under pytest, for the fixtures: ledger, Redis, S3).

A real `envrestore worker` (Redis, Dramatiq, the outbox relay, the reconciler,
all at their default settings) runs `probe` jobs (`pipelines/probe.py`: one
step, no environment, no work) submitted one after another from this process
with `submit_job`, the path the producer takes, each with its own idempotency
key. For each job:

- **seen**: from the submit call to the moment this process reads the job
  `succeeded` (polling its row every POLL_SECONDS);
- **ledger**: the job's own `created_at` → `finished_at` (the ledger's clock),
  free of the polling;
- **submit**: the submit call alone.

Two arrival patterns: **back to back** (ENVRESTORE_BENCH_QUEUE_JOBS, 200: the
next job is submitted as soon as the last one is seen done, so the worker
never idles) and **after idle** (ENVRESTORE_BENCH_QUEUE_IDLE_JOBS, 40, each
after a pause of 0.3 to 2 s: the worker sits idle between jobs, as it does
between an operator's commands, and an idle Dramatiq consumer polls Redis less
and less often). Worker shapes: one process with 4 threads (`envrestore
worker`'s default) and 2 processes x 2 threads (the systemd unit's); the
baseline, in the same run, is the default shape with Dramatiq's own consumer
settings (an idle poll backing off to 1 s). p50 and p95 after a warm-up. Nothing here asserts a speed: it prints a table and
writes `.envrestore/bench/queue-<date>.json`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from envrestore.config.settings import Settings
from envrestore.pipelines.jobs.submit import submit_job
from envrestore.pipelines.ledger.connection import create_pool
from envrestore.pipelines.probe import PROBE
from tests.support.workers import ENVRESTORE, SHUTDOWN_GRACE_SECONDS, run_cli

pytestmark = pytest.mark.timeout(0)

JOBS = int(os.environ.get("ENVRESTORE_BENCH_QUEUE_JOBS", "200"))
IDLE_JOBS = int(os.environ.get("ENVRESTORE_BENCH_QUEUE_IDLE_JOBS", "40"))
#: The pause before each job of the "after idle" pattern: uniform in this range.
IDLE_PAUSE_SECONDS = (0.3, 2.0)
WARM_UP_JOBS = 10
POLL_SECONDS = 0.002
RESULTS_DIR = Path(os.environ.get("ENVRESTORE_BENCH_RESULTS", ".envrestore/bench"))
FINAL = ("succeeded", "failed", "cancelled")
#: (label, processes, threads, environment): `envrestore worker`'s default and the
#: systemd unit's, and the baseline: the default worker with Dramatiq's own consumer
#: settings (idle poll backing off to 1 s, prefetch 2 per thread), as before issue 11.
SHAPES: tuple[tuple[str, int, int, dict[str, str]], ...] = (
    ("1x4 (Dramatiq defaults)", 1, 4, {
        "ENVRESTORE_WORKER_POLL_SECONDS": "1", "dramatiq_queue_prefetch": "8"}),
    ("1x4", 1, 4, {}),
    ("2x2", 2, 2, {}),
)  # fmt: skip
#: cli_env's test-speed overrides; the benchmark runs the worker at its defaults.
TEST_OVERRIDES = (
    "ENVRESTORE_HEARTBEAT_SECONDS",
    "ENVRESTORE_STALE_AFTER_SECONDS",
    "ENVRESTORE_RECONCILE_SECONDS",
    "ENVRESTORE_RETRY_BACKOFF_SECONDS",
)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Worker:
    """`envrestore worker --processes P --threads T` as an operator starts it."""

    def __init__(self, env: dict[str, str], logs: Path, processes: int, threads: int) -> None:
        self.log = logs / f"worker-{processes}x{threads}-{uuid.uuid4().hex[:6]}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [ENVRESTORE, "worker", "--processes", str(processes), "--threads", str(threads)],
                env={**env, "ENVRESTORE_LOG_LEVEL": "WARNING"},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=SHUTDOWN_GRACE_SECONDS + 5)
        with contextlib.suppress(ProcessLookupError):  # no child outlives the benchmark
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


async def _submit(pool: asyncpg.Pool, settings: Settings) -> uuid.UUID:
    submitted = await submit_job(
        pool,
        PROBE,
        {},
        environment=None,
        max_attempts=settings.max_attempts,
        idempotency_key=f"bench-{uuid.uuid4()}",
        idempotency_scope="bench-queue",
    )
    return submitted.job_id


async def _wait_done(pool: asyncpg.Pool, job_id: uuid.UUID, *, timeout: float) -> asyncpg.Record:
    deadline = time.perf_counter() + timeout
    while True:
        row = await pool.fetchrow(
            "SELECT status, created_at, finished_at FROM jobs WHERE id = $1", job_id
        )
        if row is not None and row["status"] in FINAL:
            assert row["status"] == "succeeded", dict(row)
            return row
        if time.perf_counter() > deadline:
            raise TimeoutError(f"probe job {job_id} did not end within {timeout} s")
        await asyncio.sleep(POLL_SECONDS)


async def _one_job(pool: asyncpg.Pool, settings: Settings) -> dict[str, float]:
    started = time.perf_counter()
    job_id = await _submit(pool, settings)
    submitted = time.perf_counter()
    row = await _wait_done(pool, job_id, timeout=30)
    seen = time.perf_counter() - started
    ledger = (row["finished_at"] - row["created_at"]).total_seconds()
    return {"seen": seen, "ledger": ledger, "submit": submitted - started}


def _summary(results: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    return {
        which: {
            "p50_ms": _quantile([r[which] for r in results], 0.50) * 1000,
            "p95_ms": _quantile([r[which] for r in results], 0.95) * 1000,
            "mean_ms": statistics.mean(r[which] for r in results) * 1000,
            "max_ms": max(r[which] for r in results) * 1000,
        }
        for which in ("seen", "ledger", "submit")
    }


async def _measure(settings: Settings) -> dict[str, Any]:
    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        # Warm up: every worker process opens its runtime and loads its actors.
        first = await _submit(pool, settings)
        await _wait_done(pool, first, timeout=90)
        warm = [await _submit(pool, settings) for _ in range(WARM_UP_JOBS)]
        for job_id in warm:
            await _wait_done(pool, job_id, timeout=30)
        back_to_back = [await _one_job(pool, settings) for _ in range(JOBS)]
        pauses = random.Random(11)
        after_idle = []
        for _ in range(IDLE_JOBS):
            await asyncio.sleep(pauses.uniform(*IDLE_PAUSE_SECONDS))
            after_idle.append(await _one_job(pool, settings))
    finally:
        await pool.close()
    return {"back_to_back": _summary(back_to_back), "after_idle": _summary(after_idle)}


def test_queue_enqueue_to_done(settings: Settings, cli_env: dict[str, str], tmp_path: Path) -> None:
    assert run_cli(cli_env, "db", "migrate").returncode == 0
    env = {k: v for k, v in cli_env.items() if k not in TEST_OVERRIDES}
    rows: dict[str, dict[str, Any]] = {}
    for shape, processes, threads, extra in SHAPES:
        worker = Worker({**env, **extra}, tmp_path, processes, threads)
        try:
            rows[shape] = asyncio.run(_measure(settings))
        except BaseException:
            print(worker.log.read_text(errors="replace")[-3000:], file=sys.stderr)
            raise
        finally:
            worker.stop()
    print()
    print(
        f"Queue benchmark: enqueue→done of a no-op `probe` job; {JOBS} jobs back to back, "
        f"{IDLE_JOBS} after {IDLE_PAUSE_SECONDS[0]}-{IDLE_PAUSE_SECONDS[1]} s idle"
    )
    print(
        f"{'worker':<26}{'arrival':<14}{'measured by':<38}"
        f"{'p50 ms':>8}{'p95 ms':>8}{'mean ms':>9}{'max ms':>8}"
    )
    labels = (
        ("seen", f"producer: submit → done ({POLL_SECONDS * 1000:.0f} ms poll)"),
        ("ledger", "ledger: created_at → finished_at"),
        ("submit", "producer: submit call alone"),
    )
    for shape, result in rows.items():
        name = shape
        for pattern, arrival in (("back_to_back", "back to back"), ("after_idle", "after idle")):
            for which, label in labels:
                row = result[pattern][which]
                print(
                    f"{name:<26}{arrival:<14}{label:<38}{row['p50_ms']:>8.1f}"
                    f"{row['p95_ms']:>8.1f}{row['mean_ms']:>9.1f}{row['max_ms']:>8.1f}"
                )
                name = arrival = ""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"queue-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(
        json.dumps(
            {"jobs": JOBS, "idle_jobs": IDLE_JOBS, "poll_seconds": POLL_SECONDS, **rows}, indent=2
        )
    )
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    bench = Path(__file__).parent
    sys.exit(pytest.main([str(bench), "-k", "bench_queue", "-p", "no:randomly", "-s"]))
