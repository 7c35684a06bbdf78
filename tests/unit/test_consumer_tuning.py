"""Worker consumers poll an idle queue often and hold one message per thread (issue 11)."""

from __future__ import annotations

from collections.abc import Iterator

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker

from envrestore.workers.broker import ConsumerTuning


@pytest.fixture
def broker() -> Iterator[StubBroker]:
    broker = StubBroker(middleware=[ConsumerTuning(0.1)])
    dramatiq.actor(actor_name="probe", queue_name="envrestore", broker=broker)(lambda: None)
    yield broker
    broker.close()


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_a_worker_prefetches_one_message_per_thread(broker: StubBroker, threads: int) -> None:
    """With Dramatiq's default (2 per thread) a busy process parked messages an idle one
    could have run; now a process takes a message only for a free thread."""
    worker = Worker(broker, worker_threads=threads)
    worker.start()
    try:
        consumer = worker.consumers["envrestore"]
        assert consumer.prefetch == threads
    finally:
        worker.stop()


def test_an_idle_consumer_asks_for_messages_every_poll_interval(broker: StubBroker) -> None:
    """Dramatiq's consumer backs off up to `worker_timeout` (1 s by default) on an empty
    queue; ENVRESTORE_WORKER_POLL_SECONDS caps it (0.1 s)."""
    worker = Worker(broker, worker_threads=2)
    worker.start()
    try:
        assert {c.worker_timeout for c in worker.consumers.values()} == {100}
    finally:
        worker.stop()


def test_an_operators_worker_timeout_is_kept(
    broker: StubBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dramatiq_worker_timeout` set by the operator wins over the poll setting: Dramatiq
    read it at import and built the worker with it (given here as its CLI would)."""
    monkeypatch.setenv("dramatiq_worker_timeout", "250")
    worker = Worker(broker, worker_threads=2, worker_timeout=250)
    worker.start()
    try:
        assert {c.worker_timeout for c in worker.consumers.values()} == {250}
    finally:
        worker.stop()
