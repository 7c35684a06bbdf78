"""The one place the Dramatiq broker is built: Redis, every middleware, then the actors.

Left out on purpose: Dramatiq's TimeLimit (its 10-minute default kills long
imports; steps heartbeat instead), Retries (the ledger counts attempts, a
SIGKILLed worker's message is not a Dramatiq retry), Pipelines and Results
(the outbox carries continuation, the ledger holds outputs).

The Redis client is bounded (issue 9): every call times out
(`ENVRESTORE_REDIS_SOCKET_TIMEOUT`), and a call on a connection that Redis
dropped (it restarted) reconnects at once, backing off up to
`ENVRESTORE_RECONNECT_MAX_DELAY_SECONDS`. Without that, the first ack after a
restart failed and Dramatiq's worker thread slept 5 s before acking again.

Consuming (issue 11, `ConsumerTuning`): Dramatiq's Redis consumer does not block
on Redis; when the queue is empty it sleeps, doubling up to its `worker_timeout`
(1 s by default), so an idle worker took a new job's first step after 0.5 s on
average. It is `ENVRESTORE_WORKER_POLL_SECONDS` (0.1 s) here. And each process
fetched up to twice its threads' worth of messages: with `--processes 2
--threads 2`, a busy process held `apply_code` for seconds while the other sat
idle. A process now holds at most one message per thread, the one it runs.
"""

from __future__ import annotations

import os

import dramatiq
import redis
from dramatiq import worker as dramatiq_worker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AsyncIO, CurrentMessage, Middleware, ShutdownNotifications
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from envrestore.config.settings import Settings
from envrestore.workers.ledger_loops import LedgerLoops

#: Reconnects per Redis call before it fails (then Dramatiq or the relay tries again).
REDIS_RETRIES = 3
#: The first reconnect's pause; each next one doubles, up to the settings' cap.
REDIS_FIRST_DELAY_SECONDS = 0.05


def redis_client(settings: Settings) -> redis.Redis:
    """A Redis client whose calls neither hang nor wait long after Redis comes back."""
    retry = Retry(
        ExponentialBackoff(
            cap=settings.reconnect_max_delay_seconds, base=REDIS_FIRST_DELAY_SECONDS
        ),
        retries=REDIS_RETRIES,
        supported_errors=(redis.ConnectionError, redis.TimeoutError),
    )
    pool = redis.ConnectionPool.from_url(
        settings.redis_url,
        socket_connect_timeout=settings.redis_socket_timeout,
        socket_timeout=settings.redis_socket_timeout,
        socket_keepalive=True,
        retry=retry,
    )
    return redis.Redis(connection_pool=pool)


class ConsumerTuning(Middleware):
    """Sets the worker's idle poll and prefetch before its consumers start.

    Dramatiq's CLI builds its `Worker` with the defaults of its module (read from
    `dramatiq_worker_timeout` / `dramatiq_queue_prefetch` at import); the worker's
    attributes are what its consumers are made from, in `Worker.start()`, after
    this hook. A `dramatiq_queue_prefetch` or `dramatiq_worker_timeout` an
    operator set in the environment is left as it is (Dramatiq read it already).
    """

    def __init__(self, poll_seconds: float) -> None:
        self.poll_ms = max(1, round(poll_seconds * 1000))

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        # Dramatiq's default (1000) is no choice of the operator's, so it is read from
        # the environment: a `dramatiq_worker_timeout=1000` set on purpose is kept too.
        if os.environ.get("dramatiq_worker_timeout") is None:  # noqa: SIM112  # Dramatiq's name
            worker.worker_timeout = self.poll_ms
        if not dramatiq_worker.QUEUE_PREFETCH:
            # Messages fetched count until acked: one per thread, none parked.
            worker.queue_prefetch = worker.worker_threads


def build_broker(settings: Settings) -> RedisBroker:
    """A Redis broker with envrestore's middleware; also made the global broker."""
    broker = RedisBroker(client=redis_client(settings), middleware=[])  # type: ignore[no-untyped-call]  # dramatiq ships RedisBroker untyped
    broker.add_middleware(ConsumerTuning(settings.worker_poll_seconds))
    broker.add_middleware(ShutdownNotifications())
    broker.add_middleware(CurrentMessage())
    broker.add_middleware(AsyncIO())
    broker.add_middleware(LedgerLoops(settings))
    dramatiq.set_broker(broker)
    return broker
