"""Benchmark: a restore through the queue against the shell pipelines, on the same data.

Run with `make bench` (ENVRESTORE_BENCH_SCALE=0.25 for a quick run; see README.md).
One WordPress-like MariaDB site (datasets.py) is backed up through the CLI and
one worker process; then each round restores it with three contenders, in the
same conditions, into the same live environment:

- naive: the sequential shell restore of PERFORMANCE.md (download, `sha256sum -c`,
  drop/create, `rm -rf`, `gunzip | mariadb`, `tar xzf`);
- overlapped: three concurrent shell streams (curl | tee sha256sum | gunzip |
  mariadb or tar), old trees renamed aside;
- envrestore: `envrestore restore shop.dev --wait --json` with one fresh worker
  (`--processes 1 --threads 4`), its process tree's memory sampled every 100 ms.

Ratios are against the naive run of the same round; the summary uses medians
over rounds. The naive run is last in every round because its `rm -rf` (part of
what it is) slows file creation on this machine's journal-less ext4 for minutes
(PERFORMANCE.md); the two others alternate first and second, and the trees they
set aside are deleted only after the round, followed by a settle pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from envrestore.config.settings import Settings
from envrestore.pipelines.objectstore.s3 import open_object_store
from tests.bench import datasets
from tests.support.sites import git
from tests.support.workers import ENVRESTORE, run_cli

pytestmark = pytest.mark.timeout(0)

SCALE = float(os.environ.get("ENVRESTORE_BENCH_SCALE", "1.0"))
ROUNDS = int(os.environ.get("ENVRESTORE_BENCH_ROUNDS", "1"))
SETTLE_SECONDS = float(os.environ.get("ENVRESTORE_BENCH_SETTLE_SECONDS", "60"))
RESULTS_DIR = Path(os.environ.get("ENVRESTORE_BENCH_RESULTS", ".envrestore/bench"))
MARIADB_CLIENT = "mariadb --protocol=TCP --host=127.0.0.1 --port=3306 --user=root"
#: Process names counted as the worker itself; anything else in its tree is a client.
PYTHON_NAMES = ("python", "dramatiq", "envrestore")
MB = 1_000_000

NAIVE = r"""
set -euo pipefail
cd "$DL"
curl -sSf -o database.sql.gz "$URL_DATABASE"
curl -sSf -o files.tar.gz "$URL_FILES"
curl -sSf -o code.tar.gz "$URL_CODE"
sha256sum -c --quiet sums.txt
$MARIADB -e "DROP DATABASE IF EXISTS \`$DB\`; CREATE DATABASE \`$DB\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
rm -rf "$FILES" "$CODE"
gunzip -c database.sql.gz | $MARIADB "$DB"
mkdir "$FILES" && tar xzf files.tar.gz -C "$FILES" --strip-components=1
mkdir "$CODE" && tar xzf code.tar.gz -C "$CODE" --strip-components=1
git -C "$CODE" checkout -q -f
"""

OVERLAPPED = r"""
set -euo pipefail
db() {
  local t0=$EPOCHREALTIME
  $MARIADB -e "DROP DATABASE IF EXISTS \`$DB\`; CREATE DATABASE \`$DB\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
  curl -sSf "$URL_DATABASE" | tee >(sha256sum >"$DL/database.sha") | gunzip | $MARIADB "$DB"
  echo "$t0 $EPOCHREALTIME" >"$DL/database.time"
}
tree() {  # name url live
  local parent stage t0=$EPOCHREALTIME
  parent="$(dirname "$3")"; stage="$parent/.$(basename "$3").shell-staging"
  rm -rf "$stage"; mkdir "$stage"
  curl -sSf "$2" | tee >(sha256sum >"$DL/$1.sha") | gunzip | tar x -C "$stage" --strip-components=1
  mv "$3" "$parent/.$(basename "$3").shell-aside-$RUN"; mv "$stage" "$3"
  echo "$t0 $EPOCHREALTIME" >"$DL/$1.time"
}
db & a=$!
tree files "$URL_FILES" "$FILES" & b=$!
tree code "$URL_CODE" "$CODE" & c=$!
wait $a; wait $b; wait $c
for part in database files code; do
  until [ -s "$DL/$part.sha" ]; do sleep 0.01; done
  want="$(grep " $part" "$DL/sums.txt" | cut -d' ' -f1)"
  [ "$(cut -d' ' -f1 "$DL/$part.sha")" = "$want" ] || { echo "sha256 mismatch: $part" >&2; exit 1; }
done
"""


# ------------------------------------------------------------------ memory


@dataclass
class MemoryPeaks:
    """Peak RSS of the worker's process tree, split into the worker itself and its clients."""

    worker_sum: int = 0  # peak of the summed RSS of the Python (dramatiq) processes
    clients_sum: int = 0  # peak of the summed RSS of client subprocesses (mariadb, git, ...)
    total_sum: int = 0
    hwm: dict[int, tuple[str, int]] = field(default_factory=dict)  # pid → (name, VmHWM)
    samples: int = 0

    @property
    def worker_hwm_sum(self) -> int:
        """Sum of each Python process's own high-water mark (an upper bound)."""
        return sum(v for name, v in self.hwm.values() if name.startswith(PYTHON_NAMES))

    @property
    def clients_hwm_max(self) -> int:
        return max((v for n, v in self.hwm.values() if not n.startswith(PYTHON_NAMES)), default=0)


def _vm_hwm(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


class TreeSampler(threading.Thread):
    """Samples a process tree every 100 ms (RSS per process, VmHWM per pid)."""

    def __init__(self, root_pid: int) -> None:
        super().__init__(daemon=True)
        self.root_pid = root_pid
        self.peaks = MemoryPeaks()
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            self.sample()
            self.halt.wait(0.1)
        self.sample()

    def sample(self) -> None:
        try:
            root = psutil.Process(self.root_pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        worker = clients = 0
        for proc in procs:
            try:
                name, rss = proc.name(), proc.memory_info().rss
            except psutil.Error:
                continue
            if name.startswith(PYTHON_NAMES):
                worker += rss
            else:
                clients += rss
            hwm = _vm_hwm(proc.pid)
            seen = self.peaks.hwm.get(proc.pid, (name, 0))[1]
            self.peaks.hwm[proc.pid] = (name, max(hwm, seen))
        peaks = self.peaks
        peaks.worker_sum = max(peaks.worker_sum, worker)
        peaks.clients_sum = max(peaks.clients_sum, clients)
        peaks.total_sum = max(peaks.total_sum, worker + clients)
        peaks.samples += 1


# ------------------------------------------------------------------ the site


@dataclass
class Site:
    work: Path
    database: str
    files: Path
    code: Path
    rows: dict[str, int]
    tree: tuple[int, int]
    head: str
    parts: dict[str, dict[str, Any]] = field(default_factory=dict)  # part → key, size, sha256
    urls: dict[str, str] = field(default_factory=dict)

    def check_restored(self, who: str) -> None:
        """The content is the backup's again: rows per table, every file's size, git HEAD."""
        assert datasets.row_counts(self.database) == self.rows, f"{who}: rows differ"
        assert datasets.tree_fingerprint(self.files) == self.tree, f"{who}: files differ"
        assert git(self.code, "rev-parse", "HEAD") == self.head, f"{who}: code differs"

    def clear_aside(self) -> None:
        """Delete what the restores set aside: trees beside the live ones, extra databases."""
        for path in self.files.parent.iterdir():
            if path.name.startswith(".") and path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.name.startswith("."):
                path.unlink()
        extra = datasets.mariadb(None, f"SHOW DATABASES LIKE '{self.database}%'").split()
        drops = "".join(
            f"DROP DATABASE IF EXISTS `{name}`;" for name in extra if name != self.database
        )
        if drops:
            datasets.mariadb(None, drops)


def settle() -> None:
    subprocess.run(["sync"], check=False)
    time.sleep(SETTLE_SECONDS)


# ------------------------------------------------------------------ contenders


def shell_env(site: Site, dl: Path, run: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DL=str(dl),
        DB=site.database,
        FILES=str(site.files),
        CODE=str(site.code),
        MARIADB=MARIADB_CLIENT,
        RUN=run,
    )
    for part, url in site.urls.items():
        env[f"URL_{part.upper()}"] = url
    return env


def run_shell(name: str, script: str, site: Site, run: str) -> dict[str, Any]:
    dl = site.work / f"dl-{run}"
    dl.mkdir()
    ext = {"database": "sql.gz", "files": "tar.gz", "code": "tar.gz"}
    (dl / "sums.txt").write_text(
        "".join(f"{p['sha256']}  {part}.{ext[part]}\n" for part, p in site.parts.items())
    )
    started = time.monotonic()
    done = subprocess.run(
        ["bash", "-c", script],
        env=shell_env(site, dl, run),
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.monotonic() - started
    assert done.returncode == 0, f"{name} failed: {done.stderr[-2000:]}"
    streams = {}
    for timed in dl.glob("*.time"):
        first, last = (float(x) for x in timed.read_text().split())
        streams[timed.stem] = round(last - first, 3)
    shutil.rmtree(dl)
    site.check_restored(name)
    return {"wall_seconds": round(wall, 3), **({"streams_seconds": streams} if streams else {})}


def _iso(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [ENVRESTORE, "worker", "--processes", "1", "--threads", "4"],
            env={**env, "ENVRESTORE_LOG_LEVEL": "INFO"},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while "ready for action" not in log.read_text(errors="replace"):
        assert proc.poll() is None, f"the worker exited: {log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, "the worker did not get ready in 60 s"
        time.sleep(0.1)
    return proc


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def run_envrestore(site: Site, env: dict[str, str], run: str) -> dict[str, Any]:
    proc = start_worker(env, site.work / f"worker-{run}.log")
    sampler = TreeSampler(proc.pid)
    profile = _start_profiler(proc.pid, run)
    sampler.start()
    try:
        started = time.monotonic()
        done = run_cli(env, "restore", "shop.dev", "--wait", "--json", timeout=7200)
        wall = time.monotonic() - started
    finally:
        sampler.halt.set()
        sampler.join()
        _stop_profiler(profile)
        stop_worker(proc)
    assert done.returncode == 0, done.stderr[-2000:]
    job = json.loads(done.stdout)
    assert job["status"] == "succeeded"
    site.check_restored("envrestore")
    steps = {
        s["name"]: round((_iso(s["finished_at"]) - _iso(s["started_at"])).total_seconds(), 3)
        for s in job["steps"]
        if s.get("started_at") and s.get("finished_at")
    }
    peaks = sampler.peaks
    return {
        "wall_seconds": round(wall, 3),
        "job_seconds": round(
            (_iso(job["finished_at"]) - _iso(job["created_at"])).total_seconds(), 3
        ),
        "switch_window_seconds": job["outputs"]["switch_window_seconds"],
        "switch_windows": job["outputs"].get("switch_windows", {}),
        "steps_seconds": steps,
        "worker_peak_rss_mb": round(peaks.worker_sum / MB, 1),
        "worker_hwm_sum_mb": round(peaks.worker_hwm_sum / MB, 1),
        "clients_peak_rss_mb": round(peaks.clients_sum / MB, 1),
        "clients_hwm_max_mb": round(peaks.clients_hwm_max / MB, 1),
        "tree_peak_rss_mb": round(peaks.total_sum / MB, 1),
        "processes": sorted({name for name, _ in peaks.hwm.values()}),
        "samples": peaks.samples,
    }


def _start_profiler(pid: int, run: str) -> subprocess.Popen[bytes] | None:
    """py-spy over the worker tree when ENVRESTORE_BENCH_PROFILE=1 (pip install py-spy)."""
    if os.environ.get("ENVRESTORE_BENCH_PROFILE") != "1":
        return None
    spy = shutil.which("py-spy", path=str(Path(ENVRESTORE).parent)) or "py-spy"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"profile-{run}-{dt.datetime.now():%Y%m%dT%H%M%S}.txt"
    return subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--subprocesses",
            "--idle",
            "--rate",
            "50",
            "--format",
            "raw",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _stop_profiler(profile: subprocess.Popen[bytes] | None) -> None:
    if profile is not None:
        profile.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            profile.wait(timeout=60)


# ------------------------------------------------------------------ the benchmark


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


def make_site(work: Path, env: dict[str, str]) -> tuple[Site, dict[str, Any]]:
    size = datasets.SiteSize.at(SCALE)
    database = f"envr_bench_{uuid.uuid4().hex[:8]}"
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
    for args in (
        ("db", "migrate"),
        ("site", "add", "shop"),
        (
            "env",
            "add",
            "shop.dev",
            "--db",
            f"mariadb://root@127.0.0.1:3306/{database}",
            "--files",
            str(files),
            "--code",
            str(site.code),
        ),
    ):
        done = run_cli(env, *args)
        assert done.returncode == 0, done.stderr
    proc = start_worker(env, work / "worker-backup.log")
    try:
        started = time.monotonic()
        done = run_cli(env, "backup", "create", "shop.dev", "--wait", "--json", timeout=7200)
        timings["backup"] = time.monotonic() - started
    finally:
        stop_worker(proc)
    assert done.returncode == 0, done.stderr[-2000:]
    listed = run_cli(env, "backup", "list", "shop.dev", "--json")
    backup = json.loads(listed.stdout)[0]
    site.parts = {p["part"]: p for p in backup["parts"]}
    data = {
        "scale": SCALE,
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
    dump = subprocess.Popen(
        [
            "mariadb-dump",
            "--protocol=TCP",
            "--host=127.0.0.1",
            "--user=root",
            "--single-transaction",
            "--quick",
            database,
        ],
        stdout=subprocess.PIPE,
    )
    assert dump.stdout is not None
    total = 0
    while chunk := dump.stdout.read(1 << 20):
        total += len(chunk)
    dump.wait()
    return total


async def _presign(settings: Settings, keys: dict[str, str]) -> dict[str, str]:
    async with open_object_store(settings) as store:
        return {part: await store.presign_get(key, 7200) for part, key in keys.items()}


def test_restore_against_shell_baselines(settings: Settings, cli_env: dict[str, str]) -> None:
    """envrestore restores the site as the shell pipelines do; print and store the figures."""
    env = bench_env(cli_env)
    with bench_dir() as work:
        site, data = make_site(work, env)
        try:
            site.urls = asyncio.run(
                _presign(settings, {part: p["key"] for part, p in site.parts.items()})
            )
            rounds: list[dict[str, Any]] = []
            for index in range(ROUNDS):
                order = (
                    ["overlapped", "envrestore"] if index % 2 == 0 else ["envrestore", "overlapped"]
                )
                results: dict[str, Any] = {"order": [*order, "naive"]}
                for name in results["order"]:
                    run = f"{index}-{name}"
                    if name == "envrestore":
                        results[name] = run_envrestore(site, env, run)
                    else:
                        script = NAIVE if name == "naive" else OVERLAPPED
                        results[name] = run_shell(name, script, site, run)
                    print(
                        f"round {index + 1} {name}: {results[name]['wall_seconds']:.1f} s",
                        flush=True,
                    )
                rounds.append(results)
                site.clear_aside()
                if index + 1 < ROUNDS:
                    settle()
            summary = summarise(rounds)
            report = {
                "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "machine": {
                    "cpus": os.cpu_count(),
                    "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
                },
                "site": data,
                "rounds": rounds,
                "summary": summary,
            }
            print_table(report)
            RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            out = RESULTS_DIR / f"restore-{dt.datetime.now():%Y%m%dT%H%M%S}.json"
            out.write_text(json.dumps(report, indent=2) + "\n")
            print(f"results: {out}")
        finally:
            site.clear_aside()
            datasets.mariadb(None, f"DROP DATABASE IF EXISTS `{site.database}`")


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def median(name: str, key: str) -> float:
        return round(statistics.median(r[name][key] for r in rounds), 3)

    naive = median("naive", "wall_seconds")
    out: dict[str, Any] = {"rounds": len(rounds)}
    for name in ("naive", "overlapped", "envrestore"):
        wall = median(name, "wall_seconds")
        out[name] = {"wall_seconds": wall, "ratio_vs_naive": round(wall / naive, 2)}
    for key in (
        "job_seconds",
        "switch_window_seconds",
        "worker_peak_rss_mb",
        "worker_hwm_sum_mb",
        "clients_peak_rss_mb",
        "clients_hwm_max_mb",
        "tree_peak_rss_mb",
    ):
        out["envrestore"][key] = median("envrestore", key)
    out["envrestore"]["ratio_vs_overlapped"] = round(
        out["envrestore"]["wall_seconds"] / out["overlapped"]["wall_seconds"], 2
    )
    return out


def print_table(report: dict[str, Any]) -> None:
    site, summary = report["site"], report["summary"]
    env = summary["envrestore"]
    parts = ", ".join(f"{p} {b / MB:.0f} MB" for p, b in site["parts_bytes"].items())
    lines = [
        "",
        f"restore benchmark — scale {site['scale']}, medians of {summary['rounds']} round(s)",
        f"site: dump {site['dump_bytes'] / MB:.0f} MB uncompressed "
        f"({site['rows']['wp_posts']} posts, {site['rows']['wp_postmeta']} meta rows), "
        f"{site['files']} files / {site['file_bytes'] / MB:.0f} MB; parts: {parts}",
        f"{'contender':<34}{'wall s':>9}{'vs naive':>10}",
    ]
    for name, label in (
        ("naive", "naive sequential shell"),
        ("overlapped", "overlapped shell (3 streams)"),
        ("envrestore", "envrestore (1 worker, 4 threads)"),
    ):
        row = summary[name]
        lines.append(f"{label:<34}{row['wall_seconds']:>9.1f}{row['ratio_vs_naive']:>10.2f}")
    lines += [
        f"PERFORMANCE.md reference: overlapped 0.60, floor ≈0.38; "
        f"envrestore / overlapped = {env['ratio_vs_overlapped']:.2f}",
        f"envrestore job (created → finished): {env['job_seconds']:.1f} s; "
        f"switch window {env['switch_window_seconds']:.3f} s",
        f"peak RSS, worker processes (sum, sampled 100 ms): {env['worker_peak_rss_mb']:.0f} MB "
        f"(sum of VmHWM {env['worker_hwm_sum_mb']:.0f} MB)",
        f"peak RSS, client subprocesses (sum): {env['clients_peak_rss_mb']:.0f} MB "
        f"(largest VmHWM {env['clients_hwm_max_mb']:.0f} MB); tree {env['tree_peak_rss_mb']:.0f} MB",
        "",
    ]
    print("\n".join(lines), flush=True)
