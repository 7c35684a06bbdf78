"""`envrestore worker` started on a terminal logs readable lines, as the README says.

Dramatiq's worker processes write into a pipe their main process reads, so
they cannot see the terminal themselves: they used to log JSON there.
"""

from __future__ import annotations

import os
import pty
import select
import signal
import time
from pathlib import Path

import pytest

from tests.support.workers import ENVRESTORE

pytestmark = pytest.mark.e2e


def _read_pty(fd: int, seconds: float, until: bytes | None = None) -> bytes:
    out = b""
    end = time.monotonic() + seconds
    while time.monotonic() < end and not (until and until in out):
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    return out


def test_envrestore_worker_on_a_terminal_logs_readable_lines(ledger_url: str, tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENVRESTORE_")}
    env.update(
        ENVRESTORE_DATABASE_URL=ledger_url,
        ENVRESTORE_LOG_LEVEL="INFO",
        ENVRESTORE_QUEUE_NAME="test-logs-on-a-tty",
        ENVRESTORE_STATE_DIR=str(tmp_path / "state"),
    )
    pid, fd = pty.fork()
    if pid == 0:  # the child: a worker whose stderr is the pseudo-terminal
        argv = [ENVRESTORE, "worker", "--processes", "1", "--threads", "1"]
        os.execve(ENVRESTORE, argv, env)  # noqa: S606 - the child becomes the worker
    try:
        out = _read_pty(fd, 60.0, until=b"ready for action")
    finally:
        os.kill(pid, signal.SIGTERM)
        out += _read_pty(fd, 30.0)
        os.waitpid(pid, 0)
        os.close(fd)
    text = out.decode(errors="replace")
    worker_lines = [line for line in text.splitlines() if "WorkerProcess" in line]
    assert any("ready for action" in line for line in worker_lines), text
    assert not any(line.lstrip().startswith("{") for line in worker_lines), text
