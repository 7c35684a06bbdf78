"""Middleware that runs the outbox relay and the reconciler inside every worker process.

The relay wakes on the ledger's NOTIFY (so a queued job starts at once) and
polls once a second besides; the reconciler runs every few seconds, one
process at a time (advisory lock). A third loop watches Redis for restarts
(workers/broker_watch.py) and has the reconciler re-send what a restart lost
at once. Every loop outlives an outage of the ledger or Redis and tries again
within `ENVRESTORE_RECONNECT_MAX_DELAY_SECONDS` of its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import dramatiq
import structlog
from dramatiq.asyncio import get_event_loop_thread
from dramatiq.middleware import Middleware

from envrestore.config.settings import Settings
from envrestore.pipelines.jobs.ledger_retry import is_connection_error
from envrestore.pipelines.jobs.outbox import forget_sends_before, relay_once
from envrestore.pipelines.jobs.principal import Principal
from envrestore.pipelines.jobs.reconciler import LedgerContact, reconcile_once
from envrestore.pipelines.ledger.connection import connect
from envrestore.pipelines.producer import Producer
from envrestore.pipelines.restore.expiry import schedule_expiries
from envrestore.workers import process_runtime
from envrestore.workers.broker_watch import BrokerRestarts
from envrestore.workers.shutdown import CLOSE_SHARE, HAND_BACK_SHARE

log = structlog.get_logger(__name__)

#: How often each worker process asks Redis whether it restarted (one INFO call).
BROKER_CHECK_SECONDS = 1.0


class LedgerLoops(Middleware):
    """Starts relay and reconciler tasks on the AsyncIO middleware's loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._tasks: list[Any] = []
        self._reconcile_now: asyncio.Event | None = None
        process_runtime.configure(settings)

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        thread = get_event_loop_thread()
        if thread is None:
            raise RuntimeError("the AsyncIO middleware must come before LedgerLoops")
        self._tasks = [
            asyncio.run_coroutine_threadsafe(self._relay(broker), thread.loop),
            asyncio.run_coroutine_threadsafe(self._reconcile(), thread.loop),
        ]
        client = getattr(broker, "client", None)
        if client is not None:  # a Redis broker (tests may build a stub one)
            watch = BrokerRestarts(client)
            self._tasks.append(asyncio.run_coroutine_threadsafe(self._watch(watch), thread.loop))

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        """Stop the loops and hand running steps back before Dramatiq waits for its threads,
        so those threads finish at once and another worker resumes the steps now."""
        for task in self._tasks:
            task.cancel()
        thread = get_event_loop_thread()
        if thread is None or not thread.loop.is_running():
            return
        budget = self.settings.shutdown_grace_seconds * HAND_BACK_SHARE
        handing = asyncio.run_coroutine_threadsafe(
            process_runtime.hand_back_steps(budget), thread.loop
        )
        try:
            count = handing.result(timeout=budget + 1.0)
        except Exception as exc:  # noqa: BLE001 - shutdown goes on; stale heartbeats cover the rest
            log.warning("worker.hand_back_failed", error=str(exc) or type(exc).__name__)
        else:
            if count:
                log.info("worker.steps_handed_back", steps=count)

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        """Close the ledger pool once the worker threads are done with it (this runs before
        the AsyncIO middleware stops the loop: after-hooks run in reverse order)."""
        thread = get_event_loop_thread()
        if thread is None or not thread.loop.is_running():
            return
        closing = asyncio.run_coroutine_threadsafe(process_runtime.close_runtime(), thread.loop)
        timeout = self.settings.shutdown_grace_seconds * CLOSE_SHARE
        try:
            closing.result(timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - the process is ending anyway
            closing.cancel()
            log.warning("worker.close_failed", error=str(exc) or type(exc).__name__)

    async def _relay(self, broker: dramatiq.Broker) -> None:
        wake = asyncio.Event()

        def send(job_id: uuid.UUID, step: str) -> None:
            broker.get_actor(step).send(str(job_id))

        listener = None
        while True:
            try:
                runtime = await process_runtime.get_runtime()
                if listener is None or listener.is_closed():
                    listener = await connect(self.settings.database_url)
                    await listener.add_listener("envrestore_outbox", lambda *_args: wake.set())
                while await relay_once(runtime.pool, send):
                    pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the loop must outlive a ledger or Redis outage
                log.warning("relay.failed", error=str(exc) or type(exc).__name__)
                if listener is not None:
                    listener.terminate()  # reconnected next time: it may have lost its LISTEN
                listener = None
                await asyncio.sleep(self.settings.reconnect_max_delay_seconds)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=1.0)
            wake.clear()

    async def _reconcile(self) -> None:
        contact = LedgerContact(self.settings.stale_after_seconds)
        self._reconcile_now = now = asyncio.Event()
        while True:
            now.clear()
            try:
                runtime = await process_runtime.get_runtime()
                await reconcile_once(runtime, expire=contact.may_expire)
                contact.reached()
                system = Principal.system("rollback-expiry")
                await schedule_expiries(
                    Producer(runtime.pool, runtime.settings, runtime.store, system)
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep reconciling after an outage
                if is_connection_error(exc):
                    contact.lost()
                log.warning("reconciler.failed", error=str(exc) or type(exc).__name__)
            # After an outage the ledger is tried again within the reconnect cap.
            pause = self.settings.reconcile_seconds
            if not contact.may_expire:
                pause = min(pause, self.settings.reconnect_max_delay_seconds)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(now.wait(), timeout=pause)

    async def _watch(self, restarts: BrokerRestarts) -> None:
        """Mark unsent what a Redis restart lost, then wake the reconciler to send it."""
        while True:
            try:
                start = await asyncio.to_thread(restarts.new_start)
                if start is not None:
                    runtime = await process_runtime.get_runtime()
                    lost = await forget_sends_before(runtime.pool, start.lost_if_sent_before)
                    restarts.accounted(start)
                    if lost:
                        log.warning("broker.restarted", lost_messages=lost, run_id=start.run_id)
                        if self._reconcile_now is not None:
                            self._reconcile_now.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis or the ledger is away: ask again
                log.debug("broker.watch_failed", error=str(exc) or type(exc).__name__)
            await asyncio.sleep(BROKER_CHECK_SECONDS)
