"""Benchmark: the client side of the queue, the CLI's start and the producer's enqueue rate.

Run with `make bench`, or alone: `.venv/bin/python -m tests.bench.bench_client`.
Reports, against baselines measured in the same run:

- CLI start: `envrestore --version` and `envrestore job list --json` (a real
  command: settings, a pool on the ledger, its schema check, one query),
  medians of RUNS runs each, beside `python -c pass` (the interpreter's own
  start) and the import floor of any command that talks to the ledger (typer
  with its pydantic adapters, pydantic-settings, structlog, asyncpg, asyncio);
- enqueues per second from one Python producer (`Producer`, preflight off, so
  the ledger is all it talks to), every job with its own idempotency key:
  one by one (`submit`, p50/p95 per call) and batched (`submit_many`, BATCH
  jobs per call). No worker runs: this is the producer alone.

Both use a scratch ledger database (created, migrated, dropped at the end) on
the PostgreSQL of `make test`. Nothing here asserts a speed: it prints a table.
"""

from __future__ import annotations

import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg

from envrestore.config.logging import configure_logging
from envrestore.config.settings import load_settings
from envrestore.pipelines import registry
from envrestore.pipelines.jobs.principal import Principal
from envrestore.pipelines.ledger.connection import connect, create_pool
from envrestore.pipelines.ledger.migrate import migrate
from envrestore.pipelines.objectstore import open_object_store
from envrestore.pipelines.producer import Producer
from envrestore.pipelines.requests import BackupRequest

RUNS = int(os.environ.get("ENVRESTORE_BENCH_CLI_RUNS", "10"))
JOBS = int(os.environ.get("ENVRESTORE_BENCH_ENQUEUE_JOBS", "2000"))
BATCH = int(os.environ.get("ENVRESTORE_BENCH_ENQUEUE_BATCH", "100"))
ADMIN = os.environ.get(
    "ENVRESTORE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
ENVRESTORE = str(Path(sys.executable).parent / "envrestore")


def _url_for(database: str) -> str:
    return f"{ADMIN.rpartition('/')[0]}/{database}"


async def _scratch_ledger() -> str:
    name = f"envrestore_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    conn = await connect(_url_for(name))
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return name


async def _drop(name: str) -> None:
    admin = await asyncpg.connect(ADMIN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def _median_seconds(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Medians of wall time and of CPU time (user + system, the child's own): on a
    shared machine the wall time varies with the load, the CPU time much less."""
    walls, cpus = [], []
    for _ in range(RUNS):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(argv, env=env, check=True, capture_output=True)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def cli_start(ledger_url: str) -> list[tuple[str, tuple[float, float]]]:
    """Medians of the CLI's start, beside the interpreter's."""
    env = dict(os.environ, ENVRESTORE_DATABASE_URL=ledger_url)
    floor = "import typer._adapters, pydantic_settings, structlog, asyncpg, asyncio"
    return [
        ("python -c pass", _median_seconds([sys.executable, "-c", "pass"], env)),
        (f'python -c "{floor}"', _median_seconds([sys.executable, "-c", floor], env)),
        ("envrestore --version", _median_seconds([ENVRESTORE, "--version"], env)),
        ("envrestore job list --json", _median_seconds([ENVRESTORE, "job", "list", "--json"], env)),
    ]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def enqueue_rates(ledger_url: str) -> dict[str, Any]:
    """Jobs per second through one producer, one by one and batched."""
    settings = load_settings(database_url=ledger_url)
    pool = await create_pool(ledger_url, min_size=1, max_size=4)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        await registry.add_site(pool, "shop")
        await registry.add_environment(
            pool,
            "shop.dev",
            db="postgresql://shop@127.0.0.1:5432/shop_dev",
            files=root / "files",
            code=root / "code",
        )
        try:
            async with open_object_store(settings) as store:
                producer = Producer(
                    pool, settings, store, Principal.operator("bench"), preflight=False
                )
                request = BackupRequest("shop.dev")
                run = uuid.uuid4().hex[:8]
                latencies = []
                start = time.perf_counter()
                for i in range(JOBS):
                    t0 = time.perf_counter()
                    await producer.submit(request, idempotency_key=f"one-{run}-{i}")
                    latencies.append(time.perf_counter() - t0)
                elapsed = time.perf_counter() - start
                results["one"] = {
                    "jobs": JOBS,
                    "per_second": JOBS / elapsed,
                    "p50_ms": statistics.median(latencies) * 1000,
                    "p95_ms": _percentile(latencies, 0.95) * 1000,
                }
                if hasattr(producer, "submit_many"):
                    latencies = []
                    start = time.perf_counter()
                    for first in range(0, JOBS, BATCH):
                        count = min(BATCH, JOBS - first)
                        keys = [f"many-{run}-{first + i}" for i in range(count)]
                        t0 = time.perf_counter()
                        await producer.submit_many([request] * count, idempotency_keys=keys)
                        latencies.append(time.perf_counter() - t0)
                    elapsed = time.perf_counter() - start
                    results["batched"] = {
                        "jobs": JOBS,
                        "per_second": JOBS / elapsed,
                        "p50_ms": statistics.median(latencies) * 1000,
                        "p95_ms": _percentile(latencies, 0.95) * 1000,
                    }
        finally:
            await pool.close()
    return results


def _table(starts: list[tuple[str, tuple[float, float]]], rates: dict[str, Any]) -> str:
    base = starts[0][1][0]
    lines = [
        "",
        f"CLI start (median of {RUNS} runs)",
        "| command | wall s | over python -c pass | CPU s |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| `{name}` | {wall:.3f} | +{wall - base:.3f} | {cpu:.3f} |"
        for name, (wall, cpu) in starts
    ]
    lines += [
        "",
        "Enqueues from one producer (idempotency keys, preflight off, no worker)",
        "| mode | jobs | jobs/s | p50 ms per call | p95 ms per call |",
        "|---|---:|---:|---:|---:|",
    ]
    for mode, label in (("one", "submit, one by one"), ("batched", f"submit_many, {BATCH} a call")):
        if mode in rates:
            r = rates[mode]
            lines.append(
                f"| {label} | {r['jobs']} | {r['per_second']:.0f} | {r['p50_ms']:.2f} "
                f"| {r['p95_ms']:.2f} |"
            )
    return "\n".join(lines)


async def _run() -> str:
    configure_logging(level="WARNING")  # as the CLI's default: no line per job on the console
    name = await _scratch_ledger()
    try:
        url = _url_for(name)
        starts = await asyncio.to_thread(cli_start, url)
        rates = await enqueue_rates(url)
        return _table(starts, rates)
    finally:
        await _drop(name)


def test_client_overhead() -> None:
    """`make bench`: prints the CLI's start and the producer's enqueue rate."""
    print(asyncio.run(_run()))


if __name__ == "__main__":
    print(asyncio.run(_run()))
