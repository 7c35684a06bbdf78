"""Riding out a ledger outage: retry a ledger call on connection errors, promptly.

A step whose work finished while the ledger was away must record it when the
ledger returns, not throw the work away; a message taken while the ledger is
away must wait for it, not be dropped (Dramatiq acknowledges a message whose
actor raised, and the reconciler re-sends it only a minute later). The retry
backs off exponentially up to a small cap, so the call lands within about one
cap of the ledger's return, and gives up after a bounded time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import asyncpg
import structlog

from envrestore.pipelines.errors import Unavailable

T = TypeVar("T")

log = structlog.get_logger(__name__)

#: The first pause after a failure; each next one doubles, up to the cap.
FIRST_DELAY_SECONDS = 0.1


def is_connection_error(exc: BaseException) -> bool:
    """A lost or refused connection to the ledger: transient, worth retrying.

    Anything else the ledger raises (bad data, bad encoding) will not go away
    by retrying the same call.
    """
    if isinstance(exc, ValueError):  # asyncpg's client-side DataError (a bad argument)
        return False
    return isinstance(
        exc,
        (
            Unavailable,
            OSError,
            TimeoutError,
            asyncpg.PostgresConnectionError,
            asyncpg.exceptions.OperatorInterventionError,
            asyncpg.exceptions.InsufficientResourcesError,
            asyncpg.exceptions.CannotConnectNowError,
            asyncpg.InterfaceError,
        ),
    )


def backoff_delays(cap: float, first: float = FIRST_DELAY_SECONDS) -> Iterator[float]:
    """first, 2·first, 4·first, … never above `cap` (and never below zero)."""
    cap = max(cap, 0.0)
    delay = min(first, cap)
    while True:
        yield delay
        delay = min(delay * 2, cap)


async def retry_ledger(
    call: Callable[[], Awaitable[T]],
    *,
    what: str,
    give_up_after: float,
    max_delay: float,
    stop: Callable[[], bool] = lambda: False,
) -> T:
    """`await call()`, again after each connection error, for at most `give_up_after`
    seconds (then the last error is raised) or until `stop()` says to give up.

    Only for calls that are safe to repeat: reads, and writes fenced by the
    attempt number or made idempotent by the ledger.
    """
    deadline = time.monotonic() + give_up_after
    failures = 0
    for delay in backoff_delays(max_delay):
        try:
            result = await call()
        except Exception as exc:
            if not is_connection_error(exc) or stop() or time.monotonic() + delay > deadline:
                raise
            failures += 1
            if failures == 1:
                log.warning("ledger.unreachable", call=what, error=str(exc) or type(exc).__name__)
            await asyncio.sleep(delay)
            continue
        if failures:
            log.info("ledger.reachable_again", call=what, failures=failures)
        return result
    raise AssertionError("unreachable: backoff_delays never ends")
