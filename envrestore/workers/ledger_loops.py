"""Middleware that runs the outbox relay and the reconciler inside every worker process.

The relay wakes on the ledger's NOTIFY (so a queued job starts at once) and
polls once a second besides; the reconciler runs every few seconds, one
process at a time (advisory lock).
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
from envrestore.pipelines.jobs.outbox import relay_once
from envrestore.pipelines.jobs.principal import Principal
from envrestore.pipelines.jobs.reconciler import reconcile_once
from envrestore.pipelines.ledger.connection import connect
from envrestore.pipelines.producer import Producer
from envrestore.pipelines.restore.expiry import schedule_expiries
from envrestore.workers import process_runtime
from envrestore.workers.shutdown import CLOSE_SHARE, HAND_BACK_SHARE

log = structlog.get_logger(__name__)


class LedgerLoops(Middleware):
    """Starts relay and reconciler tasks on the AsyncIO middleware's loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._tasks: list[Any] = []
        process_runtime.configure(settings)

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        thread = get_event_loop_thread()
        if thread is None:
            raise RuntimeError("the AsyncIO middleware must come before LedgerLoops")
        self._tasks = [
            asyncio.run_coroutine_threadsafe(self._relay(broker), thread.loop),
            asyncio.run_coroutine_threadsafe(self._reconcile(), thread.loop),
        ]

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
                log.warning("relay.failed", error=str(exc))
                listener = None
                await asyncio.sleep(1.0)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=1.0)
            wake.clear()

    async def _reconcile(self) -> None:
        while True:
            try:
                runtime = await process_runtime.get_runtime()
                await reconcile_once(runtime)
                system = Principal.system("rollback-expiry")
                await schedule_expiries(
                    Producer(runtime.pool, runtime.settings, runtime.store, system)
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep reconciling after an outage
                log.warning("reconciler.failed", error=str(exc))
            await asyncio.sleep(self.settings.reconcile_seconds)
