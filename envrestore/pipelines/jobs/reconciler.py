"""The reconciler: makes jobs resume after a worker dies or a message is lost.

Any worker may run it; an advisory lock makes one run at a time. It expires
heartbeats of dead attempts, re-queues steps that are due but have no
message in flight, and advances every unsettled job.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from envrestore.pipelines.jobs.advance import advance_job
from envrestore.pipelines.jobs.runtime import Runtime
from envrestore.pipelines.ledger.queries import sql

log = structlog.get_logger(__name__)

_LOCK_KEY = 0x656E7673  # "envs"
#: A pending step whose message was sent this long ago and never ran is sent again.
RESEND_AFTER_SECONDS = 60.0


class LedgerContact:
    """How long this process has reached the ledger without a break.

    A heartbeat is stale after `stale_after` seconds, but during a ledger outage
    no heartbeat can be written: a reconciler that expired running steps as soon
    as the ledger came back would take every step over from its live worker and
    run it twice. So steps are expired only once the ledger has been reachable
    for `stale_after`, time for live workers to beat again.
    """

    def __init__(self, stale_after: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.stale_after = stale_after
        self._clock = clock
        # A process starting may have just seen the ledger return: it waits too.
        self._since: float | None = clock()

    def lost(self) -> None:
        """A call to the ledger failed to connect."""
        self._since = None

    def reached(self) -> None:
        """A call to the ledger went through."""
        if self._since is None:
            self._since = self._clock()

    @property
    def may_expire(self) -> bool:
        return self._since is not None and self._clock() - self._since >= self.stale_after


@dataclass(frozen=True)
class ReconcileReport:
    """What one pass did."""

    ran: bool
    expired: int = 0
    resent: int = 0
    advanced: int = 0


async def reconcile_once(
    runtime: Runtime, *, resend_after: float = RESEND_AFTER_SECONDS, expire: bool = True
) -> ReconcileReport:
    """One pass, if no other process is running one.

    `expire=False` leaves running steps alone: right after this process got the
    ledger back, heartbeats that could not be written during the outage are due
    and not a sign of dead workers (`LedgerContact`).
    """
    stale_after = runtime.settings.stale_after_seconds
    async with runtime.pool.acquire() as conn:
        if not await conn.fetchval(sql("try_reconciler_lock"), _LOCK_KEY):
            return ReconcileReport(ran=False)
        try:
            expired = 0
            stale = await conn.fetch(sql("expired_running_steps"), stale_after) if expire else []
            for row in stale:
                async with conn.transaction():
                    await conn.execute(sql("lock_job"), row["job_id"])
                    back = await conn.fetchrow(
                        sql("expire_step"), row["job_id"], row["name"], stale_after
                    )
                    if back is None:
                        continue
                    expired += 1
                    await conn.execute(sql("insert_outbox"), row["job_id"], row["name"], 0.0)
                    await conn.execute(
                        sql("insert_event"),
                        row["job_id"],
                        row["name"],
                        "step.heartbeat_expired",
                        {"attempts": back["attempts"]},
                    )
                    log.warning(
                        "step.heartbeat_expired",
                        job_id=str(row["job_id"]),
                        step=row["name"],
                        attempts=back["attempts"],
                    )
            resent = 0
            for row in await conn.fetch(sql("stale_pending_steps"), resend_after, 500):
                await conn.execute(sql("insert_outbox"), row["job_id"], row["name"], 0.0)
                resent += 1
            advanced = 0
            for row in await conn.fetch(sql("jobs_needing_attention"), 500):
                async with conn.transaction():
                    await advance_job(conn, row["id"])
                advanced += 1
            if resent or expired:
                await conn.execute(sql("notify_outbox"), "reconciler")
        finally:
            await conn.execute(sql("unlock_reconciler"), _LOCK_KEY)
    if expired or resent:
        log.info("reconciler.pass", expired=expired, resent=resent, advanced=advanced)
    return ReconcileReport(ran=True, expired=expired, resent=resent, advanced=advanced)
