"""The embedded local stack: PostgreSQL, Redis, SeaweedFS S3, one worker, the scheduler, the API.

    python -m deploy.local.stack up|down|status|env [--state-dir DIR]

Everything lives under the state dir (ENVRESTORE_STATE_DIR, default
`.envrestore/` in the repository): data, logs, `stack.env` (shell exports of
the ENVRESTORE_* settings, and this venv's bin/ put on PATH so `envrestore` is
found after `source`) and `stack.json` (pids and ports). Services listen
on free loopback ports chosen here, never on the well-known defaults, so a
PostgreSQL, Redis or S3 already running on the machine is never touched.
`down` stops only the processes this module started, by the pids it recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import structlog

from deploy.local import daemons, postgres, redis, seaweed

log = structlog.get_logger(__name__)

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[2]
BUCKET = "envrestore"
REGION = "us-east-1"
LEDGER_DB = "envrestore"
WORKER_ARGS = ["worker", "--processes", "1", "--threads", "2"]
WORKER_READY_SECONDS = 20.0
# Ports of services that may already run on the machine; never ours, even if free now.
RESERVED_PORTS = frozenset({3306, 5432, 5672, 6379, 8080, 8333, 8888, 9000, 9333, 18080, 19333})


# ---------------------------------------------------------------- paths and ports


@dataclass(frozen=True)
class StackPaths:
    """Where each piece of the stack keeps its state."""

    root: Path

    @property
    def pg_data(self) -> Path:
        return self.root / "postgres" / "data"

    @property
    def redis_data(self) -> Path:
        return self.root / "redis"

    @property
    def seaweed_data(self) -> Path:
        return self.root / "seaweedfs"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def env_file(self) -> Path:
        return self.root / "stack.env"

    @property
    def json_file(self) -> Path:
        return self.root / "stack.json"

    @property
    def s3_keys_file(self) -> Path:
        return self.root / "s3-keys.json"


def default_state_dir() -> Path:
    """ENVRESTORE_STATE_DIR, else `.envrestore/` in the repository, made absolute."""
    raw = os.environ.get("ENVRESTORE_STATE_DIR")
    path = Path(raw).expanduser() if raw else REPO_ROOT / ".envrestore"
    return path.resolve()


def free_port(preferred: int | None = None, *, host: str = HOST) -> int:
    """A TCP port free on `host`: `preferred` if it still is, else one the kernel picks.

    Reusing the previous port keeps DSNs registered by an earlier demo valid.
    """
    if preferred and preferred not in RESERVED_PORTS and _port_is_free(host, preferred):
        return preferred
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in RESERVED_PORTS:
            return port
    raise RuntimeError(f"no free TCP port found on {host}")


def _port_is_free(host: str, port: int) -> bool:
    """Nobody listens there. SO_REUSEADDR as the servers set it: a port whose last
    connections are in TIME_WAIT (a server stopped a moment ago) counts as free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


# ---------------------------------------------------------------- records


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read: it may hold S3 keys."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    tmp.replace(path)


def _s3_keys(paths: StackPaths) -> tuple[str, str]:
    """Random S3 keys, made once per state dir and kept (the stored objects outlive a restart)."""
    keys = _read_json(paths.s3_keys_file)
    if not keys.get("access_key") or not keys.get("secret_key"):
        keys = {
            "access_key": "ER" + secrets.token_hex(9).upper(),
            "secret_key": secrets.token_hex(20),
        }
        _write_private(paths.s3_keys_file, json.dumps(keys, indent=2) + "\n")
    return str(keys["access_key"]), str(keys["secret_key"])


def stack_env(
    paths: StackPaths,
    *,
    pg: postgres.PostgresHandle,
    redis_url: str,
    s3_endpoint: str,
    access_key: str,
    secret_key: str,
) -> dict[str, str]:
    """The ENVRESTORE_* settings every envrestore command of this stack runs with."""
    return {
        "ENVRESTORE_DATABASE_URL": pg.dsn(LEDGER_DB),
        "ENVRESTORE_REDIS_URL": redis_url,
        "ENVRESTORE_S3_ENDPOINT_URL": s3_endpoint,
        "ENVRESTORE_S3_BUCKET": BUCKET,
        "ENVRESTORE_S3_ACCESS_KEY_ID": access_key,
        "ENVRESTORE_S3_SECRET_ACCESS_KEY": secret_key,
        "ENVRESTORE_S3_REGION": REGION,
        "ENVRESTORE_STATE_DIR": str(paths.root),
        "ENVRESTORE_PG_BIN_DIR": str(pg.bin_dir),
    }


def venv_bin() -> Path | None:
    """The bin/ holding this environment's `envrestore`, if it has one."""
    beside = Path(sys.executable).parent
    return beside if (beside / "envrestore").is_file() else None


def render_env(env: dict[str, str], *, path_dir: Path | None = None) -> str:
    """Shell exports of `env`; with `path_dir`, a line putting it first on PATH (once)."""
    lines = "".join(f"export {key}={shlex.quote(value)}\n" for key, value in env.items())
    if path_dir is not None:
        quoted = shlex.quote(str(path_dir))
        # `source` it twice and PATH still holds the directory once.
        lines += f'case ":$PATH:" in *:{quoted}:*) ;; *) export PATH={quoted}:"$PATH" ;; esac\n'
    return lines


def load_env(state_dir: Path | None = None) -> dict[str, str]:
    """The settings written by the last `up`; empty if the stack was never started."""
    env_file = StackPaths(state_dir or default_state_dir()).env_file
    env: dict[str, str] = {}
    with contextlib.suppress(FileNotFoundError):
        for line in env_file.read_text().splitlines():
            words = shlex.split(line)
            if len(words) == 2 and words[0] == "export" and "=" in words[1]:
                key, _, value = words[1].partition("=")
                env[key] = value
    return env


# ---------------------------------------------------------------- processes


def _same_process(pid: int | None, create_time: float | None) -> psutil.Process | None:
    """The recorded process if it still runs, not a new one that reused its pid."""
    if not pid:
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        if create_time is not None and abs(proc.create_time() - create_time) > 0.5:
            return None
    except psutil.Error:
        return None
    return proc


def terminate(proc: psutil.Process, *, timeout: float = 15.0, group: bool = False) -> None:
    """SIGTERM `proc`, wait for it and its descendants, SIGKILL what remains.

    Only the leader gets SIGTERM: Dramatiq's main process forwards it to its
    worker processes, and a worker process that gets a second SIGTERM kills
    itself at once instead of finishing its messages. With `group`, the final
    SIGKILL also goes to the process group (the leader started its own session).
    """
    try:
        family = [proc, *proc.children(recursive=True)]
        proc.terminate()
    except psutil.Error:
        return
    _, alive = psutil.wait_procs(family, timeout=timeout)
    if not alive:
        return
    log.warning("stack.kill", pids=[p.pid for p in alive])
    if group:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    for member in alive:
        with contextlib.suppress(psutil.Error):
            member.kill()
    psutil.wait_procs(alive, timeout=5)


def envrestore_command() -> list[str]:
    """The `envrestore` console script of this environment."""
    beside = Path(sys.executable).parent / "envrestore"
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("envrestore")
    if found:
        return [found]
    return [sys.executable, "-m", "envrestore.cli.main"]


def _ensure_ledger_database(pg: postgres.PostgresHandle) -> None:
    """CREATE DATABASE envrestore once; migrations then run inside it."""
    psql = [str(pg.bin_dir / "psql"), pg.dsn("postgres"), "-v", "ON_ERROR_STOP=1", "-tAc"]
    statements = [
        f"SELECT 1 FROM pg_database WHERE datname = '{LEDGER_DB}'",
        f'CREATE DATABASE "{LEDGER_DB}"',
    ]
    for statement in statements:
        result = subprocess.run([*psql, statement], check=False, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(
                f"creating the ledger database on {pg.dsn('postgres')} failed: "
                f"{result.stderr.strip()}"
            )
        if result.stdout.strip() == "1":  # it exists already
            return


def _migrate(env: dict[str, str]) -> None:
    result = subprocess.run(
        [*envrestore_command(), "db", "migrate"],
        env={**os.environ, **env},
        check=False,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"`envrestore db migrate` failed (exit {result.returncode}): "
            f"{(result.stderr or result.stdout).strip()[-2000:]}"
        )


def _env_fingerprint(env: dict[str, str]) -> str:
    """The worker's settings and the code it runs: a change of either restarts it.

    A worker started before `git pull` would otherwise keep running old code
    (and, say, know no actor for a step added since).
    """
    digest = hashlib.sha256(render_env(env).encode())
    for package in ("envrestore",):
        for path in sorted((REPO_ROOT / package).rglob("*")):
            if path.suffix in (".py", ".sql") and path.is_file():
                digest.update(str(path.relative_to(REPO_ROOT)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _start_worker(paths: StackPaths, env: dict[str, str]) -> dict[str, Any]:
    """One detached worker (own session, so Ctrl-C in the demo's terminal spares it)."""
    paths.logs.mkdir(parents=True, exist_ok=True)
    log_path = paths.logs / "worker.log"
    with log_path.open("ab") as out:
        offset = out.tell()
        proc = subprocess.Popen(
            [*envrestore_command(), *WORKER_ARGS],
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=paths.root,
            start_new_session=True,
        )
    # Dramatiq's main process outlives a worker process that fails to import for a
    # moment, so wait for the line each worker process logs when it is ready.
    deadline = time.monotonic() + WORKER_READY_SECONDS
    while time.monotonic() < deadline:
        with log_path.open("rb") as fh:
            fh.seek(offset)
            written = fh.read().decode(errors="replace")
        if proc.poll() is not None or "exited unexpectedly" in written:
            if proc.poll() is None:
                terminate(psutil.Process(proc.pid), group=True)
            proc.wait()
            raise RuntimeError(
                f"the worker did not start (exit {proc.poll()}); {log_path} ends with:\n"
                f"{written[-3000:]}"
            )
        if "Worker process is ready for action" in written:
            break
        time.sleep(0.1)
    else:
        log.warning("worker.not_ready_yet", seconds=WORKER_READY_SECONDS, log=str(log_path))
    log.info("worker.started", pid=proc.pid, log=str(log_path))
    return {
        "pid": proc.pid,
        "create_time": psutil.Process(proc.pid).create_time(),
        "env_fingerprint": _env_fingerprint(env),
        "log": str(log_path),
    }


def _ensure_process(
    record: dict[str, Any],
    name: str,
    start: Any,
    paths: StackPaths,
    env: dict[str, str],
) -> None:
    """Reuse the recorded process if it runs the same settings and code, else (re)start it."""
    old = record.get(name, {})
    proc = _same_process(old.get("pid"), old.get("create_time"))
    if proc is not None and old.get("env_fingerprint") == _env_fingerprint(env):
        log.info(f"{name}.reused", pid=proc.pid)
        return
    if proc is not None:  # settings or code changed under it: restart it
        terminate(proc, group=True)
    record[name] = start(paths, env)
    _write_private(paths.json_file, json.dumps(record, indent=2) + "\n")


# ---------------------------------------------------------------- seaweedfs


def _seaweed_handle(paths: StackPaths) -> seaweed.SeaweedHandle | None:
    """The SeaweedFS this state dir started, if it still runs (checked by pid and data dir)."""
    try:
        handle = seaweed.SeaweedHandle.load(paths.seaweed_data / seaweed.HANDLE_FILE)
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return handle if handle.is_running() else None


def _start_seaweed(paths: StackPaths) -> seaweed.SeaweedHandle:
    """SeaweedFS with its S3 gateway and our bucket; the running one when there is one.

    A restarted server keeps the bucket and its objects: they live in its data dir.
    """
    access_key, secret_key = _s3_keys(paths)
    handle = _seaweed_handle(paths)
    if handle is not None and (handle.access_key, handle.secret_key) == (access_key, secret_key):
        log.info("seaweedfs.reused", pid=handle.pid, endpoint=handle.endpoint_url)
        return handle
    if handle is not None:
        handle.stop()
    return seaweed.start(
        paths.seaweed_data,
        host=HOST,
        access_key=access_key,
        secret_key=secret_key,
        bucket=BUCKET,
    )


# ---------------------------------------------------------------- commands


def up(state_dir: Path | None = None, *, worker: bool = True) -> dict[str, str]:
    """Start (or reuse) every service, one worker and the scheduler; return the settings."""
    paths = StackPaths(state_dir or default_state_dir())
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.logs.mkdir(parents=True, exist_ok=True)
    record = _read_json(paths.json_file)

    pg = postgres.start(
        paths.pg_data,
        port=free_port(record.get("postgres", {}).get("port")),
        log_file=paths.logs / "postgres.log",
    )
    rd = redis.start(
        paths.redis_data,
        port=free_port(record.get("redis", {}).get("port")),
        log_file=paths.logs / "redis.log",
    )
    sw = _start_seaweed(paths)
    env = stack_env(
        paths,
        pg=pg,
        redis_url=rd.url,
        s3_endpoint=sw.endpoint_url,
        access_key=sw.access_key,
        secret_key=sw.secret_key,
    )
    _write_private(paths.env_file, render_env(env, path_dir=venv_bin()))
    record = {
        **record,
        "state_dir": str(paths.root),
        "postgres": {"pid": pg.pid, "port": pg.port, "data_dir": str(pg.data_dir)},
        "redis": {"pid": rd.pid, "port": rd.port, "data_dir": str(rd.data_dir)},
        "seaweedfs": {"pid": sw.pid, "endpoint_url": sw.endpoint_url, "data_dir": sw.data_dir},
    }
    _write_private(paths.json_file, json.dumps(record, indent=2) + "\n")

    _ensure_ledger_database(pg)
    _migrate(env)

    if worker:
        _ensure_process(record, "worker", _start_worker, paths, env)
        _ensure_process(record, "scheduler", daemons.start_scheduler, paths, env)
        # The port is chosen when the API (re)starts, after an old one let its port go.
        previous = record.get("api", {}).get("port")

        def start_api(paths: StackPaths, env: dict[str, str]) -> dict[str, Any]:
            return daemons.start_api(paths, env, port=free_port(previous))

        _ensure_process(record, "api", start_api, paths, env)
    return env


def down(state_dir: Path | None = None, *, timeout: float = 15.0) -> list[str]:
    """Stop the scheduler, the worker and every service this stack started; say which."""
    paths = StackPaths(state_dir or default_state_dir())
    record = _read_json(paths.json_file)
    stopped: list[str] = []
    for name in ("api", "scheduler", "worker"):
        old = record.get(name, {})
        proc = _same_process(old.get("pid"), old.get("create_time"))
        if proc is not None:
            terminate(proc, timeout=timeout, group=True)
            stopped.append(name)
    sw = _seaweed_handle(paths)
    if sw is not None:
        sw.stop()
        stopped.append("seaweedfs")
    if redis.stop(paths.redis_data, timeout=timeout):
        stopped.append("redis")
    if postgres.stop(paths.pg_data, timeout=timeout):
        stopped.append("postgres")
    for name in ("worker", "scheduler", "api"):
        record.pop(name, None)
    if record:
        _write_private(paths.json_file, json.dumps(record, indent=2) + "\n")
    log.info("stack.down", stopped=stopped)
    return stopped


def status(state_dir: Path | None = None) -> dict[str, dict[str, Any]]:
    """What runs now, per piece: running, pid, and where it listens."""
    paths = StackPaths(state_dir or default_state_dir())
    record = _read_json(paths.json_file)
    pg = postgres.running(paths.pg_data)
    rd = redis.running(paths.redis_data)
    sw = _seaweed_handle(paths)
    wk = record.get("worker", {})
    sc = record.get("scheduler", {})
    api = record.get("api", {})
    return {
        "postgres": {"running": pg is not None, "pid": pg and pg.pid, "port": pg and pg.port},
        "redis": {"running": rd is not None, "pid": rd and rd.pid, "port": rd and rd.port},
        "seaweedfs": {
            "running": sw is not None,
            "pid": sw and sw.pid,
            "endpoint_url": sw and sw.endpoint_url,
        },
        "worker": {
            "running": _same_process(wk.get("pid"), wk.get("create_time")) is not None,
            "pid": wk.get("pid"),
            "log": wk.get("log"),
        },
        "scheduler": {
            "running": _same_process(sc.get("pid"), sc.get("create_time")) is not None,
            "pid": sc.get("pid"),
            "log": sc.get("log"),
        },
        "api": {
            "running": _same_process(api.get("pid"), api.get("create_time")) is not None,
            "pid": api.get("pid"),
            "url": api.get("url"),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.local.stack", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("command", choices=["up", "down", "status", "env"])
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where the stack keeps its data (env: ENVRESTORE_STATE_DIR; default .envrestore/)",
    )
    parser.add_argument(
        "--no-worker",
        action="store_true",
        help="up: start the services only (no worker, scheduler, API)",
    )
    args = parser.parse_args(argv)
    state_dir = args.state_dir.resolve() if args.state_dir else None
    paths = StackPaths(state_dir or default_state_dir())

    if args.command == "up":
        try:
            up(state_dir, worker=not args.no_worker)
        except RuntimeError as exc:  # SeaweedError too: each message says where to look
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"stack is up; settings in {paths.env_file} (`source` it to use the CLI)")
        return 0
    if args.command == "down":
        stopped = down(state_dir)
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        return 0
    if args.command == "status":
        report = status(state_dir)
        for name, info in report.items():
            state = "running" if info["running"] else "stopped"
            where = (
                info.get("port") or info.get("endpoint_url") or info.get("url") or info.get("log")
            )
            where = where or ""
            print(f"{name:<10} {state:<8} pid={info.get('pid') or '-'} {where}")
        return 0 if all(info["running"] for info in report.values()) else 3
    env = load_env(state_dir)
    if not env:
        print(
            f"the stack has not been started in {paths.root}; run `make demo` or "
            "`python -m deploy.local.stack up`",
            file=sys.stderr,
        )
        return 1
    sys.stdout.write(render_env(env, path_dir=venv_bin()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
