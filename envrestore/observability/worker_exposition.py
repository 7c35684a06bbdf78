"""The workers' metrics endpoint: one HTTP exposition for every Dramatiq worker process.

Dramatiq runs several worker processes; a step's metrics land in whichever
ran it. prometheus_client's multiprocess mode has each process write its
counters and histograms to files in `PROMETHEUS_MULTIPROC_DIR`, and one
exposition sums them. `envrestore worker` (with
ENVRESTORE_WORKER_METRICS_PORT set) makes that directory, empties it (files
of an earlier run would be summed in), exports it to every process and
asks Dramatiq to fork `serve` beside the workers (`--fork-function`):
Dramatiq starts, signals and stops it with the workers, and the workers'
exec and shutdown handling (workers/shutdown.py) are untouched.

Why not Dramatiq's own Prometheus middleware: it counts messages per actor
(one actor per step name), not jobs, kinds, outcomes or bytes; it reads its
host, port and directory from environment variables at import, binds
0.0.0.0 by default and shares one /tmp directory between all workers of a
host. The step protocol's own metrics (observability/metrics.py) are what
an operator asks about; this endpoint serves them and the ledger's queue
gauges.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from envrestore.config.logging import configure_logging
from envrestore.config.settings import Settings, load_settings
from envrestore.observability.ledger_gauges import queue_families, read_queue_at

log = structlog.get_logger(__name__)

#: What `envrestore worker` passes to Dramatiq's `--fork-function`.
FORK_FUNCTION = "envrestore.observability.worker_exposition:serve"
MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def multiproc_dir(port: int, env: dict[str, str]) -> Path:
    """This worker's metrics directory: the operator's, or one per port under the temp dir
    (two workers of one host need two ports, so they never share files)."""
    given = env.get(MULTIPROC_VARIABLE)
    if given:
        return Path(given)
    return Path(tempfile.gettempdir()) / f"envrestore-metrics-{os.getuid()}-{port}"


def prepare_worker_metrics(settings: Settings, env: dict[str, str]) -> list[str]:
    """Set up the metrics of a worker about to start: Dramatiq's extra arguments, `env` updated.

    No port: nothing (the processes keep their metrics in memory, unseen).
    """
    if not settings.worker_metrics_port:
        return []
    folder = multiproc_dir(settings.worker_metrics_port, env)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink()
    env[MULTIPROC_VARIABLE] = str(folder)
    return ["--fork-function", FORK_FUNCTION]


class _LedgerQueue:
    """The queue gauges, read from the ledger on each scrape (in the server's request thread)."""

    def __init__(self, database_url: str) -> None:
        self._url = database_url

    def collect(self) -> Iterable[Metric]:
        return queue_families(asyncio.run(read_queue_at(self._url)))


def exposition_registry(settings: Settings) -> CollectorRegistry:
    """Every worker process's metrics, summed, and the ledger's queue gauges."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # untyped in prometheus_client
    registry.register(_LedgerQueue(settings.database_url))
    return registry


def serve() -> None:
    """Dramatiq fork process: serve /metrics until Dramatiq stops it (SIGTERM ends the sleep)."""
    settings = load_settings()
    configure_logging()
    port = settings.worker_metrics_port
    if not port or not os.environ.get(MULTIPROC_VARIABLE):
        log.warning("worker.metrics_off", reason="no port or no PROMETHEUS_MULTIPROC_DIR")
        return
    server, _thread = start_http_server(
        port, addr=settings.metrics_host, registry=exposition_registry(settings)
    )
    log.info("worker.metrics_serving", host=settings.metrics_host, port=port)
    try:
        while True:
            time.sleep(3600)
    finally:
        server.shutdown()
