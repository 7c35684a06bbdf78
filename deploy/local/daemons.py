"""The stack's long-running envrestore processes besides the worker: the scheduler and the API.

Each starts detached (its own session, so Ctrl-C in the demo's terminal spares
it), logs to `logs/<name>.log` under the state dir, and is waited for until it
says it is ready; `stack.py` records its pid and restarts it when its settings
or the code change.
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import structlog

if TYPE_CHECKING:
    from deploy.local.stack import StackPaths

log = structlog.get_logger(__name__)

SCHEDULER_ARGS = ["scheduler"]
SCHEDULER_READY_SECONDS = 15.0
API_ARGS = ["api"]
API_READY_SECONDS = 30.0


def _spawn(
    paths: StackPaths, env: dict[str, str], args: list[str], name: str
) -> tuple[subprocess.Popen[bytes], Path, int]:
    from deploy.local.stack import envrestore_command

    paths.logs.mkdir(parents=True, exist_ok=True)
    log_path = paths.logs / f"{name}.log"
    with log_path.open("ab") as out:
        offset = out.tell()
        proc = subprocess.Popen(
            [*envrestore_command(), *args],
            env={**os.environ, "ENVRESTORE_LOG_LEVEL": "INFO", **env},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=paths.root,
            start_new_session=True,
        )
    return proc, log_path, offset


def _await_ready(
    proc: subprocess.Popen[bytes],
    log_path: Path,
    offset: int,
    *,
    name: str,
    seconds: float,
    ready: Callable[[str], bool],
) -> None:
    """Wait until `ready(log written since start)`; a process that exits is an error."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with log_path.open("rb") as fh:
            fh.seek(offset)
            written = fh.read().decode(errors="replace")
        if proc.poll() is not None:
            raise RuntimeError(
                f"the {name} did not start (exit {proc.returncode}); {log_path} ends with:\n"
                f"{written[-3000:]}"
            )
        if ready(written):
            return
        time.sleep(0.1)
    log.warning(f"{name}.not_ready_yet", seconds=seconds, log=str(log_path))


def _record(proc: subprocess.Popen[bytes], log_path: Path, env: dict[str, str]) -> dict[str, Any]:
    from deploy.local.stack import _env_fingerprint

    return {
        "pid": proc.pid,
        "create_time": psutil.Process(proc.pid).create_time(),
        "env_fingerprint": _env_fingerprint(env),
        "log": str(log_path),
    }


def start_scheduler(paths: StackPaths, env: dict[str, str]) -> dict[str, Any]:
    """`envrestore scheduler`: scheduled backups and retention."""
    proc, log_path, offset = _spawn(paths, env, SCHEDULER_ARGS, "scheduler")
    _await_ready(
        proc,
        log_path,
        offset,
        name="scheduler",
        seconds=SCHEDULER_READY_SECONDS,
        ready=lambda written: "scheduler.leader" in written or "scheduler.follower" in written,
    )
    log.info("scheduler.started", pid=proc.pid, log=str(log_path))
    return _record(proc, log_path, env)


def healthy(url: str) -> bool:
    """True when the API at `url` answers /healthz with 200."""
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:  # noqa: S310 - loopback URL we built
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def start_api(paths: StackPaths, env: dict[str, str], *, port: int) -> dict[str, Any]:
    """`envrestore api` (uvicorn) on 127.0.0.1:`port`; ready when /healthz answers."""
    from deploy.local.stack import HOST

    url = f"http://{HOST}:{port}"
    api_env = {**env, "ENVRESTORE_API_HOST": HOST, "ENVRESTORE_API_PORT": str(port)}
    proc, log_path, offset = _spawn(paths, api_env, API_ARGS, "api")
    _await_ready(
        proc,
        log_path,
        offset,
        name="api",
        seconds=API_READY_SECONDS,
        ready=lambda _written: healthy(url),
    )
    log.info("api.started", pid=proc.pid, url=url, log=str(log_path))
    return {**_record(proc, log_path, env), "port": port, "url": url}
