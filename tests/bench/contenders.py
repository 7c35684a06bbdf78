"""The restore benchmark's contenders: shell pipelines, the plain clients, and envrestore.

Every contender restores (or, for the client baselines, loads) the same backup
of the same site. Each runs as one process tree sampled by `TreeSampler`
(memory, CPU), and reports its wall time and, where it has them, per-step
times: the shell scripts write `<part>.time` files (epoch start and end), and
envrestore's steps come from the job's `--json` view (the ledger).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.bench import datasets
from tests.bench.sampling import TreeSampler
from tests.support.sites import git
from tests.support.workers import ENVRESTORE, run_cli

MARIADB_CLIENT = "mariadb --protocol=TCP --host=127.0.0.1 --port=3306 --user=root"
CREATE_DB = (
    '$MARIADB -e "DROP DATABASE IF EXISTS \\`$TARGET\\`; CREATE DATABASE \\`$TARGET\\` '
    'CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"'
)

NAIVE = r"""
set -euo pipefail
cd "$DL"
curl -sSf -o database.sql.gz "$URL_DATABASE"
curl -sSf -o files.tar.gz "$URL_FILES"
curl -sSf -o code.tar.gz "$URL_CODE"
sha256sum -c --quiet sums.txt
$MARIADB -e "DROP DATABASE IF EXISTS \`$DB\`; CREATE DATABASE \`$DB\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
rm -rf "$FILES" "$CODE"
t0=$EPOCHREALTIME
gunzip -c database.sql.gz | $MARIADB "$DB"
echo "$t0 $EPOCHREALTIME" >"$DL/database.time"; t0=$EPOCHREALTIME
mkdir "$FILES" && tar xzf files.tar.gz -C "$FILES" --strip-components=1
echo "$t0 $EPOCHREALTIME" >"$DL/files.time"; t0=$EPOCHREALTIME
mkdir "$CODE" && tar xzf code.tar.gz -C "$CODE" --strip-components=1
git -C "$CODE" checkout -q -f
echo "$t0 $EPOCHREALTIME" >"$DL/code.time"
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

#: The plain client's best: schema first, then the INSERTs in two byte-balanced
#: sessions at once (PERFORMANCE.md), from the dump already inflated on disk.
CLIENT_TWO_SESSIONS = (
    "set -euo pipefail\n"
    + CREATE_DB
    + r"""
t0=$EPOCHREALTIME
$MARIADB "$TARGET" <"$SPLIT/schema.sql"
$MARIADB "$TARGET" <"$SPLIT/half-0.sql" & a=$!
$MARIADB "$TARGET" <"$SPLIT/half-1.sql" & b=$!
wait $a; wait $b
echo "$t0 $EPOCHREALTIME" >"$DL/database.time"
"""
)

#: `tar -x` of the files part as downloaded (gzip or zstd, detected by tar).
TAR_EXTRACT = r"""
set -euo pipefail
mkdir "$STAGE"
t0=$EPOCHREALTIME
tar -xf "$PARTS/files.tar" -C "$STAGE" --strip-components=1
echo "$t0 $EPOCHREALTIME" >"$DL/files.time"
"""

#: PostgreSQL's parallel loading by hand (what `pg_restore -j2` does): the schema,
#: then the COPY rows in two sessions, then indexes and constraints in two sessions
#: (each table whole in one); lz4 TOAST compression in every session when the
#: server has it ($PG_OPTIONS), as envrestore's import does.
PSQL_PARALLEL = r"""
set -euo pipefail
PSQL="psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -U postgres"
$PSQL -d postgres -c "DROP DATABASE IF EXISTS \"$PG_TARGET\" WITH (FORCE)" >/dev/null
$PSQL -d postgres -c "CREATE DATABASE \"$PG_TARGET\" TEMPLATE template0" >/dev/null
export PGOPTIONS="$PG_OPTIONS"
t0=$EPOCHREALTIME
$PSQL -d "$PG_TARGET" -f "$PG_SPLIT/pre.sql" >/dev/null
$PSQL -d "$PG_TARGET" -f "$PG_SPLIT/data-0.sql" >/dev/null & a=$!
$PSQL -d "$PG_TARGET" -f "$PG_SPLIT/data-1.sql" >/dev/null & b=$!
wait $a; wait $b
$PSQL -d "$PG_TARGET" -f "$PG_SPLIT/post-0.sql" >/dev/null & a=$!
$PSQL -d "$PG_TARGET" -f "$PG_SPLIT/post-1.sql" >/dev/null & b=$!
wait $a; wait $b
echo "$t0 $EPOCHREALTIME" >"$DL/database.time"
"""

#: Shell timing files → the envrestore step they compare with.
STEP_OF_PART = {"database": "import_db", "files": "import_files", "code": "apply_code"}


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
    #: The site's name in the ledger: one per size, as all sizes share one ledger.
    name: str = "shop"
    #: The PostgreSQL environment (`<name>.pg`, database only), when this size has one.
    pg_database: str = ""
    pg_rows: dict[str, int] = field(default_factory=dict)
    pg_options: str = ""

    @property
    def parts_dir(self) -> Path:
        return self.work / "parts"

    def check_restored(self, who: str) -> None:
        """The content is the backup's again: rows per table, every file's size, git HEAD."""
        assert datasets.row_counts(self.database) == self.rows, f"{who}: rows differ"
        assert datasets.tree_fingerprint(self.files) == self.tree, f"{who}: files differ"
        assert git(self.code, "rev-parse", "HEAD") == self.head, f"{who}: code differs"

    def clear_aside(self) -> None:
        """Delete what the runs set aside: trees beside the live ones, extra databases."""
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
        if self.pg_database:
            datasets.pg_drop_like(self.pg_database, keep=self.pg_database)


# ------------------------------------------------------------------ shell contenders


def shell_env(site: Site, dl: Path, run: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DL=str(dl),
        DB=site.database,
        FILES=str(site.files),
        CODE=str(site.code),
        MARIADB=MARIADB_CLIENT,
        RUN=run,
        PARTS=str(site.parts_dir),
        SPLIT=str(site.parts_dir / "split"),
        TARGET=f"{site.database}_client_{run.replace('-', '_').replace('.', '_')}",
        STAGE=str(site.files.parent / f".tar-baseline-{run}"),
        PG_TARGET=f"{site.pg_database}_psql_{run.replace('-', '_').replace('.', '_')}",
        PG_SPLIT=str(site.parts_dir / "pg-split"),
        PG_OPTIONS=site.pg_options,
    )
    for part, url in site.urls.items():
        env[f"URL_{part.upper()}"] = url
    return env


def run_shell(
    name: str, script: str, site: Site, run: str, check: Callable[[dict[str, str]], None]
) -> dict[str, Any]:
    """Run one shell contender as a sampled process tree; `check` its result."""
    dl = site.work / f"dl-{run}"
    dl.mkdir()
    ext = {"database": "sql.gz", "files": "tar.gz", "code": "tar.gz"}
    (dl / "sums.txt").write_text(
        "".join(f"{p['sha256']}  {part}.{ext[part]}\n" for part, p in site.parts.items())
    )
    env = shell_env(site, dl, run)
    started = time.monotonic()
    proc = subprocess.Popen(
        ["bash", "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    sampler = TreeSampler(proc.pid)
    sampler.start()
    try:
        _out, err = proc.communicate()
    finally:
        sampler.halt.set()
        sampler.join()
    wall = time.monotonic() - started
    assert proc.returncode == 0, f"{name} failed: {err[-2000:]}"
    windows = {}
    for timed in dl.glob("*.time"):
        first, last = (float(x) for x in timed.read_text().split())
        windows[STEP_OF_PART[timed.stem]] = (first, last)
    shutil.rmtree(dl)
    check(env)
    return {
        "wall_seconds": round(wall, 3),
        "steps_seconds": {step: round(b - a, 3) for step, (a, b) in windows.items()},
        "profile": sampler.profile(),
        **(
            {"profile_import_db": sampler.profile(*windows["import_db"])}
            if "import_db" in windows
            else {}
        ),
        **sampler.memory(),
    }


def check_site(name: str, site: Site) -> Callable[[dict[str, str]], None]:
    return lambda _env: site.check_restored(name)


def check_client_load(site: Site) -> Callable[[dict[str, str]], None]:
    def check(env: dict[str, str]) -> None:
        assert datasets.row_counts(env["TARGET"]) == site.rows, "client load: rows differ"

    return check


def check_pg_load(site: Site) -> Callable[[dict[str, str]], None]:
    def check(env: dict[str, str]) -> None:
        assert datasets.pg_row_counts(env["PG_TARGET"]) == site.pg_rows, "psql load: rows differ"

    return check


def check_tar(site: Site) -> Callable[[dict[str, str]], None]:
    def check(env: dict[str, str]) -> None:
        assert datasets.tree_fingerprint(Path(env["STAGE"])) == site.tree, "tar -x: files differ"

    return check


# ------------------------------------------------------------------ envrestore


def _epoch(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


def start_worker(env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
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


def run_envrestore(
    site: Site,
    env: Mapping[str, str],
    run: str,
    results_dir: Path,
    *,
    env_name: str = "dev",
    check: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """`envrestore restore <site>.<env> --wait --json` with a fresh worker; steps from the ledger.

    `dev` is restored whole and checked as the site; another environment
    (`pg`) restores its database only and is checked by `check`.
    """
    proc = start_worker(env, site.work / f"worker-{run}.log")
    sampler = TreeSampler(proc.pid)
    profile = _start_profiler(proc.pid, run, results_dir)
    sampler.start()
    try:
        began = time.time()
        started = time.monotonic()
        only = () if env_name == "dev" else ("--element", "database")
        target = f"{site.name}.{env_name}"
        done = run_cli(dict(env), "restore", target, *only, "--wait", "--json", timeout=7200)
        wall = time.monotonic() - started
        ended = time.time()
    finally:
        sampler.halt.set()
        sampler.join()
        _stop_profiler(profile)
        stop_worker(proc)
    assert done.returncode == 0, f"{run}: {(done.stdout + done.stderr)[-3000:]}"
    job = json.loads(done.stdout)
    assert job["status"] == "succeeded"
    if check is None:
        site.check_restored(run)
    else:
        check()
    windows = {
        s["name"]: (_epoch(s["started_at"]), _epoch(s["finished_at"]))
        for s in job["steps"]
        if s.get("started_at") and s.get("finished_at")
    }
    return {
        "wall_seconds": round(wall, 3),
        "job_seconds": round(_epoch(job["finished_at"]) - _epoch(job["created_at"]), 3),
        "switch_window_seconds": job["outputs"]["switch_window_seconds"],
        "switch_windows": job["outputs"].get("switch_windows", {}),
        "steps_seconds": {name: round(b - a, 3) for name, (a, b) in windows.items()},
        "profile": sampler.profile(began, ended),
        **(
            {"profile_import_db": sampler.profile(*windows["import_db"])}
            if "import_db" in windows
            else {}
        ),
        **sampler.memory(),
    }


def _start_profiler(pid: int, run: str, results_dir: Path) -> subprocess.Popen[bytes] | None:
    """py-spy over the worker tree when ENVRESTORE_BENCH_PROFILE=1 (pip install py-spy)."""
    if os.environ.get("ENVRESTORE_BENCH_PROFILE") != "1":
        return None
    spy = shutil.which("py-spy", path=str(Path(ENVRESTORE).parent)) or "py-spy"
    results_dir.mkdir(parents=True, exist_ok=True)
    out = results_dir / f"profile-{run}-{dt.datetime.now():%Y%m%dT%H%M%S}.txt"
    argv = [spy, "record", "--pid", str(pid), "--subprocesses", "--idle", "--rate", "50"]
    return subprocess.Popen(
        [*argv, "--format", "raw", "--output", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _stop_profiler(profile: subprocess.Popen[bytes] | None) -> None:
    if profile is not None:
        profile.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            profile.wait(timeout=60)
