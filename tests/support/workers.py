"""Real worker processes and the CLI as a user types it, for e2e tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from envrestore.config.settings import Settings

__all__ = ["cli_env", "redis_url", "worker_pool"]

ENVRESTORE = str(Path(sys.executable).parent / "envrestore")
#: Workers of e2e tests must stop within this after SIGTERM.
SHUTDOWN_GRACE_SECONDS = 10


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("ENVRESTORE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    host_port = url.split("//", 1)[1].split("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            pass
    except OSError as exc:
        message = f"Redis at {url} is not reachable ({exc})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return url


@pytest.fixture
def cli_env(settings: Settings, redis_url: str) -> dict[str, str]:
    """The environment a user's shell would have: ENVRESTORE_* for this test's services."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENVRESTORE_")}
    secret = settings.s3_secret_access_key
    env.update(
        {
            "ENVRESTORE_DATABASE_URL": settings.database_url,
            "ENVRESTORE_REDIS_URL": redis_url,
            "ENVRESTORE_S3_ENDPOINT_URL": settings.s3_endpoint_url or "",
            "ENVRESTORE_S3_BUCKET": settings.s3_bucket,
            "ENVRESTORE_S3_ACCESS_KEY_ID": settings.s3_access_key_id or "",
            "ENVRESTORE_S3_SECRET_ACCESS_KEY": secret.get_secret_value() if secret else "",
            # A queue of its own: workers of other tests never take this test's messages.
            "ENVRESTORE_QUEUE_NAME": f"test-{uuid.uuid4().hex[:12]}",
            "ENVRESTORE_HEARTBEAT_SECONDS": "0.5",
            "ENVRESTORE_STALE_AFTER_SECONDS": "3",
            "ENVRESTORE_RECONCILE_SECONDS": "0.5",
            "ENVRESTORE_RETRY_BACKOFF_SECONDS": "0.2",
            "ENVRESTORE_SHUTDOWN_GRACE_SECONDS": str(SHUTDOWN_GRACE_SECONDS),
        }
    )
    return env


def run_cli(
    env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ENVRESTORE, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def run_json(env: dict[str, str], *args: str) -> Any:
    done = run_cli(env, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


class WorkerPool:
    """Worker processes started as an operator would (`envrestore worker`)."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *, threads: int = 4) -> subprocess.Popen[bytes]:
        log = (self.logs / f"worker-{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen(
            [ENVRESTORE, "worker", "--processes", "1", "--threads", str(threads)],
            env={**self.env, "ENVRESTORE_LOG_LEVEL": "INFO"},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL the worker and every process it started, as a dying host would."""
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def terminate(self, proc: subprocess.Popen[bytes], *, group: bool = True) -> float:
        """SIGTERM the worker (its process group, or its main process only), as an
        operator or a service manager would; seconds until it exited."""
        started = time.monotonic()
        if group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=SHUTDOWN_GRACE_SECONDS + 5)
        return time.monotonic() - started

    def stop_all(self) -> None:
        """SIGTERM every worker at once, then wait: each stops within the grace."""
        running = [proc for proc in self.procs if proc.poll() is None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in running:
            try:
                proc.wait(timeout=SHUTDOWN_GRACE_SECONDS + 5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        # No child of any worker may outlive the test.
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.logs.glob("*.log")))


@pytest.fixture
def worker_pool(cli_env: dict[str, str], tmp_path: Path) -> Iterator[WorkerPool]:
    logs = tmp_path / "worker-logs"
    logs.mkdir()
    pool = WorkerPool(cli_env, logs)
    try:
        yield pool
    finally:
        pool.stop_all()


def wait_for(predicate: Any, *, timeout: float, interval: float = 0.2, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate}")


def children_alive(proc: subprocess.Popen[bytes]) -> bool:
    try:
        return bool(psutil.Process(proc.pid).children(recursive=True))
    except psutil.NoSuchProcess:
        return False
