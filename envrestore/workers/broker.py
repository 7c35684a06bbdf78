"""The one place the Dramatiq broker is built: Redis, every middleware, then the actors.

Left out on purpose: Dramatiq's TimeLimit (its 10-minute default kills long
imports; steps heartbeat instead), Retries (the ledger counts attempts, a
SIGKILLed worker's message is not a Dramatiq retry), Pipelines and Results
(the outbox carries continuation, the ledger holds outputs).
"""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AsyncIO, CurrentMessage, ShutdownNotifications

from envrestore.config.settings import Settings
from envrestore.workers.ledger_loops import LedgerLoops


def build_broker(settings: Settings) -> RedisBroker:
    """A Redis broker with envrestore's middleware; also made the global broker."""
    broker = RedisBroker(url=settings.redis_url, middleware=[])  # type: ignore[no-untyped-call]  # dramatiq ships RedisBroker untyped
    broker.add_middleware(ShutdownNotifications())
    broker.add_middleware(CurrentMessage())
    broker.add_middleware(AsyncIO())
    broker.add_middleware(LedgerLoops(settings))
    dramatiq.set_broker(broker)
    return broker
