"""Memory and CPU of a process tree, sampled every 100 ms, for the restore benchmark.

The profile the issue asks for ("show the before/after profile") is made of
what is sampled here: the CPU seconds of the worker's Python processes, of its
client subprocesses (`mariadb`, `tar`, `git`, ...) and of `mariadbd`, and the
machine's busy share, over a whole run and over any window of it (the
`import_db` step's, read from the ledger afterwards).

Client CPU counts both the live clients and the ones already reaped (their
time moves into their parent's `children_*` times when it waits for them), so
a client that lives less than one sample is still counted.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

#: Process names counted as the worker itself; anything else in its tree is a client.
PYTHON_NAMES = ("python", "dramatiq", "envrestore")
SERVER_NAMES = ("mariadbd", "mysqld")
MB = 1_000_000


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


@dataclass(frozen=True)
class CpuSample:
    """Cumulative CPU seconds at one instant (epoch seconds, the ledger's clock)."""

    at: float
    python: float
    clients: float
    server: float
    busy: float  # the machine's non-idle CPU seconds, all cores


def _vm_hwm(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _busy_seconds() -> float:
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + t.irq + t.softirq + t.steal)


def _server() -> psutil.Process | None:
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] in SERVER_NAMES:
            return proc
    return None


class TreeSampler(threading.Thread):
    """Samples a process tree every 100 ms: RSS per process, VmHWM per pid, CPU seconds."""

    def __init__(self, root_pid: int) -> None:
        super().__init__(daemon=True)
        self.root_pid = root_pid
        self.peaks = MemoryPeaks()
        self.cpu: list[CpuSample] = []
        self.halt = threading.Event()
        self.server = _server()

    def run(self) -> None:
        while not self.halt.is_set():
            self.sample()
            self.halt.wait(0.1)
        self.sample()

    def sample(self) -> None:
        at, busy = time.time(), _busy_seconds()
        try:
            root = psutil.Process(self.root_pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        worker = clients = 0
        cpu_python = cpu_clients = 0.0
        for proc in procs:
            try:
                name, rss, times = proc.name(), proc.memory_info().rss, proc.cpu_times()
            except psutil.Error:
                continue
            own, reaped = times.user + times.system, times.children_user + times.children_system
            cpu_clients += reaped
            if name.startswith(PYTHON_NAMES):
                worker += rss
                cpu_python += own
            else:
                clients += rss
                cpu_clients += own
            hwm = _vm_hwm(proc.pid)
            seen = self.peaks.hwm.get(proc.pid, (name, 0))[1]
            self.peaks.hwm[proc.pid] = (name, max(hwm, seen))
        server = 0.0
        if self.server is not None:
            with contextlib.suppress(psutil.Error):
                t = self.server.cpu_times()
                server = t.user + t.system
        self.cpu.append(CpuSample(at, cpu_python, cpu_clients, server, busy))
        peaks = self.peaks
        peaks.worker_sum = max(peaks.worker_sum, worker)
        peaks.clients_sum = max(peaks.clients_sum, clients)
        peaks.total_sum = max(peaks.total_sum, worker + clients)
        peaks.samples += 1

    def memory(self) -> dict[str, Any]:
        peaks = self.peaks
        return {
            "worker_peak_rss_mb": round(peaks.worker_sum / MB, 1),
            "worker_hwm_sum_mb": round(peaks.worker_hwm_sum / MB, 1),
            "clients_peak_rss_mb": round(peaks.clients_sum / MB, 1),
            "clients_hwm_max_mb": round(peaks.clients_hwm_max / MB, 1),
            "tree_peak_rss_mb": round(peaks.total_sum / MB, 1),
            "processes": sorted({name for name, _ in peaks.hwm.values()}),
            "hwm_by_process_mb": [
                [name, round(v / MB, 1)]
                for name, v in sorted(peaks.hwm.values(), key=lambda item: -item[1])[:8]
            ],
            "samples": peaks.samples,
        }

    def profile(self, start: float | None = None, end: float | None = None) -> dict[str, Any]:
        """CPU seconds by kind and the machine's busy % (100 = one core) within [start, end]."""
        inside = [
            s
            for s in self.cpu
            if (start is None or s.at >= start - 0.05) and (end is None or s.at <= end + 0.05)
        ]
        if len(inside) < 2:
            return {}
        first, last = inside[0], inside[-1]
        span = last.at - first.at
        return {
            "seconds": round(span, 2),
            "python_cpu_s": round(last.python - first.python, 2),
            "clients_cpu_s": round(last.clients - first.clients, 2),
            "server_cpu_s": round(last.server - first.server, 2) if self.server else None,
            "machine_busy_pct": round((last.busy - first.busy) / span * 100) if span else None,
        }
