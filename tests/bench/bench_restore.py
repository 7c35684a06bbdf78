"""Benchmark: a restore through the queue against the shell pipelines and the plain tools.

Run with `make bench` (sizes, rounds and pauses: see README.md). For each size
in ENVRESTORE_BENCH_SIZES, one WordPress-like MariaDB site (datasets.py) is
backed up through the CLI and one worker process; then each round runs every
contender on that backup, in the same conditions, into the same live environment:

- naive: the sequential shell restore of PERFORMANCE.md (download, `sha256sum -c`,
  drop/create, `rm -rf`, `gunzip | mariadb`, `tar xzf`);
- overlapped: three concurrent shell streams (curl | tee sha256sum | gunzip |
  mariadb or tar), old trees renamed aside;
- envrestore: `envrestore restore shop<size>.dev --wait --json` with one fresh worker
  (`--processes 1 --threads 4`) and default settings;
- envrestore, lockstep (the smallest size only): the same with a 1 MB import
  read-ahead and one import connection, the "before" of the overlap work;
- the plain tools, from local disk: the `mariadb` client loading the dump in two
  sessions (the `import_db` floor) and `tar -x` of the files part (`import_files`).

Ratios are between medians of the same run (report.py). The naive run is last in
every round because its `rm -rf` (part of what it is) slows file creation on this
machine's journal-less ext4 for minutes (PERFORMANCE.md); the others rotate, and
what they set aside is deleted only after the round, followed by a settle pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from envrestore.config.settings import Settings
from envrestore.pipelines.objectstore.s3 import open_object_store
from tests.bench import baselines, datasets
from tests.bench.contenders import (
    CLIENT_TWO_SESSIONS,
    NAIVE,
    OVERLAPPED,
    PSQL_PARALLEL,
    TAR_EXTRACT,
    Site,
    check_client_load,
    check_pg_load,
    check_site,
    check_tar,
    run_envrestore,
    run_shell,
    start_worker,
    stop_worker,
)
from tests.bench.report import print_report, summarise, targets
from tests.support.workers import run_cli

pytestmark = pytest.mark.timeout(0)

SIZES = [float(s) for s in os.environ.get("ENVRESTORE_BENCH_SIZES", "0.25,1").split(",")]
ROUNDS = int(os.environ.get("ENVRESTORE_BENCH_ROUNDS", "3"))
SETTLE_OVERRIDE = os.environ.get("ENVRESTORE_BENCH_SETTLE_SECONDS")
RESULTS_DIR = Path(os.environ.get("ENVRESTORE_BENCH_RESULTS", ".envrestore/bench"))
#: The PostgreSQL site (database only) runs at the smallest size; 0 leaves it out.
POSTGRES = os.environ.get("ENVRESTORE_BENCH_POSTGRES", "1") != "0"
#: The "before" of issue 11's overlap work: the producer in lockstep with one client.
LOCKSTEP_ENV = {"ENVRESTORE_IMPORT_READAHEAD_MB": "1", "ENVRESTORE_MARIADB_IMPORT_CONNECTIONS": "1"}


def settle_seconds(scale: float) -> float:
    """The pause after deleting a round's set-aside trees, before the next round.

    60 s after deleting a scale-1 round's trees (≈10,000 files each); smaller
    sizes delete proportionally fewer files and pause proportionally less, 15 s
    at the least. ENVRESTORE_BENCH_SETTLE_SECONDS sets one pause for all sizes.
    """
    if SETTLE_OVERRIDE is not None:
        return float(SETTLE_OVERRIDE)
    return 60 * min(1.0, max(scale, 0.25))


def expected_seconds(sizes: list[float], rounds: int) -> float:
    """A rough forecast from the 2-core machine: setup, rounds, settle pauses per size."""
    total = 0.0
    for scale in sizes:
        smallest = scale == min(sizes)
        lockstep = 10 + 40 * scale if smallest else 0
        if smallest and POSTGRES:  # its site, its backup, then envrestore and psql each round
            total += 20 + 80 * scale + rounds * (10 + 40 * scale)
        total += 30 + 200 * scale  # generate, back up, download and split the parts
        total += rounds * (20 + 150 * scale + lockstep) + (rounds - 1) * settle_seconds(scale)
    return total


def settle(scale: float) -> None:
    subprocess.run(["sync"], check=False)
    time.sleep(settle_seconds(scale))


@contextlib.contextmanager
def bench_dir() -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix="envrestore-bench-"))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bench_env(cli_env: dict[str, str]) -> dict[str, str]:
    """The CLI environment with production timings (the test suite's are quick on purpose)."""
    fast = (
        "ENVRESTORE_HEARTBEAT_SECONDS",
        "ENVRESTORE_STALE_AFTER_SECONDS",
        "ENVRESTORE_RECONCILE_SECONDS",
        "ENVRESTORE_RETRY_BACKOFF_SECONDS",
    )
    return {k: v for k, v in cli_env.items() if k not in fast}


def make_site(
    work: Path, env: dict[str, str], scale: float, database: str
) -> tuple[Site, dict[str, Any]]:
    size = datasets.SiteSize.at(scale)
    timings: dict[str, float] = {}
    started = time.monotonic()
    rows = datasets.make_database(database, size)
    timings["generate_db"] = time.monotonic() - started
    files = work / "site" / "files"
    started = time.monotonic()
    count, total = datasets.make_uploads(files, size)
    timings["generate_files"] = time.monotonic() - started
    head = datasets.make_code(work / "site" / "code")
    site = Site(work, database, files, work / "site" / "code", rows, (count, total), head)
    site.name = "shop" + f"{scale:g}".replace(".", "")  # all sizes share the test's ledger
    dev = f"{site.name}.dev"
    dsn = f"mariadb://root@127.0.0.1:3306/{database}"
    for args in (
        ("db", "migrate"),
        ("site", "add", site.name),
        ("env", "add", dev, "--db", dsn, "--files", str(files), "--code", str(site.code)),
    ):
        done = run_cli(env, *args)
        assert done.returncode == 0, done.stderr
    proc = start_worker(env, work / "worker-backup.log")
    try:
        started = time.monotonic()
        done = run_cli(env, "backup", "create", dev, "--wait", "--json", timeout=7200)
        timings["backup"] = time.monotonic() - started
    finally:
        stop_worker(proc)
    assert done.returncode == 0, done.stderr[-2000:]
    listed = run_cli(env, "backup", "list", dev, "--json")
    backup = json.loads(listed.stdout)[0]
    site.parts = {p["part"]: p for p in backup["parts"]}
    data = {
        "scale": scale,
        "posts": size.posts,
        "rows": rows,
        "files": count,
        "file_bytes": total,
        "dump_bytes": _dump_size(database),
        "parts_bytes": {p: v["size"] for p, v in site.parts.items()},
        "setup_seconds": {k: round(v, 1) for k, v in timings.items()},
    }
    return site, data


def _dump_size(database: str) -> int:
    """The uncompressed size of the dump, counted through a pipe (nothing kept)."""
    argv = ["mariadb-dump", "--protocol=TCP", "--host=127.0.0.1", "--user=root"]
    dump = subprocess.Popen(
        [*argv, "--single-transaction", "--quick", database], stdout=subprocess.PIPE
    )
    assert dump.stdout is not None
    total = 0
    while chunk := dump.stdout.read(1 << 20):
        total += len(chunk)
    dump.wait()
    return total


def make_pg_site(
    settings: Settings, site: Site, env: dict[str, str], scale: float
) -> dict[str, Any]:
    """<site>.pg: the same tables on PostgreSQL, backed up database only; its figures back."""
    size = datasets.SiteSize.at(scale)
    site.pg_database = f"{site.database}_pg"
    started = time.monotonic()
    site.pg_rows = datasets.make_pg_database(site.pg_database, size)
    generated = time.monotonic() - started
    lz4 = datasets.psql(
        "postgres",
        "SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'",
    )
    site.pg_options = "-c default_toast_compression=lz4" if lz4.strip() == "t" else ""
    pg_files, pg_code = site.work / "pg" / "files", site.work / "pg" / "code"
    pg_files.mkdir(parents=True)
    datasets.make_code(pg_code, commits=1)
    dsn = f"postgresql://postgres@127.0.0.1:5432/{site.pg_database}"
    target = f"{site.name}.pg"
    add = ("env", "add", target, "--db", dsn, "--files", str(pg_files), "--code", str(pg_code))
    done = run_cli(env, *add)
    assert done.returncode == 0, done.stderr
    proc = start_worker(env, site.work / "worker-backup-pg.log")
    try:
        started = time.monotonic()
        done = run_cli(
            env,
            "backup",
            "create",
            target,
            "--element",
            "database",
            "--wait",
            "--json",
            timeout=7200,
        )
        backed_up = time.monotonic() - started
    finally:
        stop_worker(proc)
    assert done.returncode == 0, (done.stdout + done.stderr)[-2000:]
    listed = run_cli(env, "backup", "list", target, "--json")
    part = {p["part"]: p for p in json.loads(listed.stdout)[0]["parts"]}["database"]
    url = asyncio.run(_presign(settings, {"database": part["key"]}))["database"]
    split = baselines.prepare_pg(site.parts_dir, url, part["key"])
    return {
        "rows": site.pg_rows,
        "dump_bytes": split.pop("dump_bytes"),
        "part_bytes": part["size"],
        "lz4": bool(site.pg_options),
        "split": split,
        "setup_seconds": {"generate_db": round(generated, 1), "backup": round(backed_up, 1)},
    }


async def _presign(settings: Settings, keys: dict[str, str]) -> dict[str, str]:
    async with open_object_store(settings) as store:
        return {part: await store.presign_get(key, 7200) for part, key in keys.items()}


def run_one(name: str, site: Site, env: dict[str, str], run: str) -> dict[str, Any]:
    if name == "envrestore":
        return run_envrestore(site, env, run, RESULTS_DIR)
    if name == "lockstep":
        return run_envrestore(site, {**env, **LOCKSTEP_ENV}, run, RESULTS_DIR)
    if name == "pg_envrestore":
        check = check_pg_load(site)
        live = {"PG_TARGET": site.pg_database}
        return run_envrestore(site, env, run, RESULTS_DIR, env_name="pg", check=lambda: check(live))
    if name == "pg_psql2":
        return run_shell(name, PSQL_PARALLEL, site, run, check_pg_load(site))
    if name == "client2":
        return run_shell(name, CLIENT_TWO_SESSIONS, site, run, check_client_load(site))
    if name == "tar":
        return run_shell(name, TAR_EXTRACT, site, run, check_tar(site))
    script = NAIVE if name == "naive" else OVERLAPPED
    return run_shell(name, script, site, run, check_site(name, site))


def bench_size(
    settings: Settings, env: dict[str, str], scale: float, *, lockstep: bool, postgres: bool
) -> dict[str, Any]:
    """Build one site, run ROUNDS rounds of every contender on it; rounds and summary back."""
    database = f"envr_bench_{uuid.uuid4().hex[:8]}"
    with bench_dir() as work:
        try:
            site, data = make_site(work, env, scale, database)
            keys = {part: p["key"] for part, p in site.parts.items()}
            site.urls = asyncio.run(_presign(settings, keys))
            data["client_split"] = baselines.prepare(site.parts_dir, site.urls, keys)
            rotating = ["overlapped", "envrestore", "client2", "tar"]
            if lockstep:
                rotating.insert(2, "lockstep")
            if postgres:
                data["pg"] = make_pg_site(settings, site, env, scale)
                rotating += ["pg_envrestore", "pg_psql2"]
            rounds: list[dict[str, Any]] = []
            for index in range(ROUNDS):
                turn = index % len(rotating)
                order = [*rotating[turn:], *rotating[:turn], "naive"]
                results: dict[str, Any] = {"order": order}
                for name in order:
                    results[name] = run_one(name, site, env, f"{scale:g}-{index}-{name}")
                    print(
                        f"size {scale:g} round {index + 1} {name}: "
                        f"{results[name]['wall_seconds']:.1f} s",
                        flush=True,
                    )
                rounds.append(results)
                site.clear_aside()
                if index + 1 < ROUNDS:
                    settle(scale)
            summary = summarise(rounds)
            return {"site": data, "rounds": rounds, "summary": summary, "targets": targets(summary)}
        finally:  # every database this size made, whatever failed (the trees go with work)
            datasets.mariadb_drop_like(database)
            datasets.pg_drop_like(database)


def test_restore_against_shell_baselines(settings: Settings, cli_env: dict[str, str]) -> None:
    """envrestore restores the site as the shell pipelines do; print and store the figures."""
    env = bench_env(cli_env)
    forecast = expected_seconds(SIZES, ROUNDS)
    print(f"\n{forecast_line()}", flush=True)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"restore-{dt.datetime.now():%Y%m%dT%H%M%S}.json"
    report: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        },
        "rounds": ROUNDS,
        "settings": {"lockstep": LOCKSTEP_ENV},
        "sizes": [],
    }
    started = time.monotonic()
    for scale in sorted(SIZES):
        smallest = scale == min(SIZES)
        report["sizes"].append(
            bench_size(settings, env, scale, lockstep=smallest, postgres=smallest and POSTGRES)
        )
        out.write_text(json.dumps(report, indent=2) + "\n")  # each size kept as it ends
    report["seconds"] = round(time.monotonic() - started)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print_report(report)
    print(f"results: {out} ({report['seconds'] / 60:.1f} min, forecast {forecast / 60:.1f})")


def forecast_line() -> str:
    minutes = expected_seconds(SIZES, ROUNDS) / 60
    return (
        f"restore benchmark: sizes {', '.join(f'{s:g}' for s in sorted(SIZES))}, "
        f"{ROUNDS} round(s); expected ≈ {minutes:.0f} min on a 2-core machine "
        "(plus a few minutes for the other benchmarks, which run first)"
    )


if __name__ == "__main__":  # `make bench` prints the forecast before anything runs
    print(forecast_line())
