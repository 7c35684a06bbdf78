"""Queue gauges read from the ledger when Prometheus scrapes, and the exposition itself.

Queue depth and the age of the oldest queued job are facts of the ledger,
not of any one process: a gauge kept per worker process would be summed
wrongly across processes and go stale when one dies. So each scrape reads
them once (`metrics_queue`: one count over the partial index on active
jobs) and exposes them beside the process's (or the worker processes')
counters and histograms. A ledger that cannot be read gives
`envrestore_ledger_up 0` and no queue gauges, never a failed scrape.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from dataclasses import dataclass

import asyncpg
import structlog
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from envrestore.pipelines.ledger.queries import sql

log = structlog.get_logger(__name__)

#: A scrape must answer even with the ledger away: reading it gives up after this long.
LEDGER_TIMEOUT_SECONDS = 3.0


@dataclass(frozen=True)
class QueueSnapshot:
    """The queue as the ledger saw it at one scrape (None: the ledger could not be read)."""

    depth: int | None
    oldest_age_seconds: float | None


async def read_queue(conn: asyncpg.Pool | asyncpg.Connection) -> QueueSnapshot:
    """Queued jobs and the age of the oldest; an unreadable ledger gives an empty snapshot."""
    try:
        row = await asyncio.wait_for(
            conn.fetchrow(sql("metrics_queue")), timeout=LEDGER_TIMEOUT_SECONDS
        )
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.warning("metrics.ledger_not_read", error=str(exc))
        return QueueSnapshot(None, None)
    if row is None:
        return QueueSnapshot(None, None)
    return QueueSnapshot(int(row["depth"]), float(row["oldest_age"]))


async def read_queue_at(database_url: str) -> QueueSnapshot:
    """`read_queue` over a connection of its own (the worker exposition has no pool)."""
    try:
        conn = await asyncio.wait_for(asyncpg.connect(database_url), timeout=LEDGER_TIMEOUT_SECONDS)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.warning("metrics.ledger_not_reached", error=str(exc))
        return QueueSnapshot(None, None)
    try:
        return await read_queue(conn)
    finally:
        await conn.close()


def queue_families(snapshot: QueueSnapshot) -> list[Metric]:
    """The gauges of one snapshot."""
    up = GaugeMetricFamily(
        "envrestore_ledger_up", "1 when this scrape could read the ledger's queue, else 0."
    )
    up.add_metric([], 0.0 if snapshot.depth is None else 1.0)
    families: list[Metric] = [up]
    if snapshot.depth is not None:
        depth = GaugeMetricFamily(
            "envrestore_queue_depth", "Jobs submitted and not started yet (status queued)."
        )
        depth.add_metric([], float(snapshot.depth))
        age = GaugeMetricFamily(
            "envrestore_oldest_queued_job_age_seconds",
            "Seconds the oldest queued job has waited (0 with none queued).",
        )
        age.add_metric([], snapshot.oldest_age_seconds or 0.0)
        families += [depth, age]
    return families


class _Fixed(Collector):
    """Collects metric families already read (one scrape's queue gauges)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return list(self._families)


def process_registry() -> CollectorRegistry:
    """This process's metrics, or every process's when in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # untyped in prometheus_client
        return registry
    return REGISTRY


def exposition(snapshot: QueueSnapshot, registry: CollectorRegistry | None = None) -> bytes:
    """The text exposition: the process metrics, then this scrape's queue gauges."""
    queue = CollectorRegistry()
    queue.register(_Fixed(queue_families(snapshot)))
    return generate_latest(registry or process_registry()) + generate_latest(queue)
