"""The scheduler: each tick, the leader takes due slots and runs retention.

Any number of schedulers may run; each tick every one tries to take or renew
the leader lease (`lease.py`), and only the holder submits. Taking a slot is
an insert into `schedule_slots` (UNIQUE per environment and slot, allowed only
to the live lease holder), then a backup submitted through the one producer
with the idempotency key `schedule:<site>.<env>:<slot>`: two schedulers, or
one retrying after an outage, never make two backups of one slot.

The clock is injected, so tests walk through forty days in seconds; the
lease runs on the ledger's clock (see lease.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
import structlog

from envrestore.config.settings import Settings
from envrestore.pipelines.errors import EnvrestoreError, PermanentError, TransientError
from envrestore.pipelines.ledger.queries import sql
from envrestore.pipelines.objectstore import ObjectStore
from envrestore.pipelines.producer import Producer
from envrestore.pipelines.requests import BackupRequest
from envrestore.pipelines.schedule.lease import LeaderLease
from envrestore.pipelines.schedule.slots import Slot, latest_slot
from envrestore.pipelines.schedule.store import Schedule, list_schedules

log = structlog.get_logger(__name__)

Clock = Callable[[], datetime]
ExpireFn = Callable[..., Awaitable[int]]
SweepFn = Callable[..., Awaitable[int]]

#: The orphan sweep lists the whole bucket: at most once an hour.
SWEEP_EVERY = timedelta(hours=1)
#: What a lost ledger or store raises; the loop logs it and tries again next tick.
OUTAGES: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    EnvrestoreError,
)


def utc_now() -> datetime:
    return datetime.now(UTC)


def slot_key(target: str, slot: Slot) -> str:
    """The backup's idempotency key: the same slot is the same job, whoever submits it."""
    return f"schedule:{target}:{slot.at.astimezone(UTC).isoformat()}"


@dataclass
class TickReport:
    """What one tick did (tests and logs)."""

    leading: bool
    submitted: list[str] = field(default_factory=list)
    expired: int = 0
    swept: int | None = None


def _lifecycle() -> tuple[ExpireFn, SweepFn]:
    """The backup lifecycle's retention functions (pipelines/backup/lifecycle.py)."""
    from envrestore.pipelines.backup import lifecycle

    return lifecycle.expire_backups, lifecycle.sweep_orphans


@dataclass
class Scheduler:
    """One scheduler process's state; `tick()` once, or `run(stop)` until stopped."""

    pool: asyncpg.Pool
    settings: Settings
    producer: Producer
    store: ObjectStore
    holder: str
    clock: Clock = utc_now
    expire: ExpireFn | None = None
    sweep: SweepFn | None = None
    leading: bool = False
    last_sweep: datetime | None = None
    lease: LeaderLease = field(init=False)

    def __post_init__(self) -> None:
        self.lease = LeaderLease(self.pool, self.holder, self.settings.scheduler_lease_seconds)
        self._log = log.bind(holder=self.holder)

    async def tick(self) -> TickReport:
        """Renew or take the lease; if leading, take due slots, then expire and sweep.

        While the leader works the lease is renewed in the background (every third
        of its TTL): a sweep or expiry longer than the lease must not hand the lead
        to another scheduler midway. `last_sweep` outlives a change of leader, so a
        scheduler leading again does not sweep the whole bucket again at once.
        """
        leading = await self.lease.take()
        if leading != self.leading:
            self._log.info("scheduler.leader" if leading else "scheduler.follower")
            self.leading = leading
        report = TickReport(leading=leading)
        if not leading:
            return report
        renewing = asyncio.create_task(self._keep_lease())
        try:
            now = self.clock()
            report.submitted = await self.take_due_slots(now)
            await self._retention(now, report)
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
        return report

    async def _keep_lease(self) -> None:
        """Renew the lease every third of its TTL until cancelled (the tick ended)."""
        while True:
            await asyncio.sleep(self.lease.ttl_seconds / 3)
            try:
                if not await self.lease.take():
                    self._log.warning("scheduler.lease_lost_midtick")
                    return  # slot claims check the lease themselves; the next tick follows
            except OUTAGES as exc:
                self._log.warning("scheduler.lease_renew_failed", error=str(exc))

    async def take_due_slots(self, now: datetime) -> list[str]:
        """Claim and submit each environment's due slot; the targets whose job this call made."""
        submitted: list[str] = []
        for schedule in await list_schedules(self.pool, self.settings):
            slot = schedule.due(now)
            if slot is not None:
                claimed = await self.pool.fetchval(
                    sql("claim_schedule_slot"),
                    schedule.environment_id,
                    slot.at,
                    slot.weekly,
                    slot.keep_days,
                    self.holder,
                )
                if claimed is None:  # taken meanwhile, or our lease ran out
                    continue
            elif self._unsubmitted(schedule, now):
                # Claimed, but the submit did not get through (an outage, a crash
                # between the two): the same key makes a second try the same job.
                assert schedule.last_slot is not None
                slot = Slot(schedule.last_slot, bool(schedule.last_weekly))
            else:
                continue
            try:
                if await self._submit(schedule, slot):
                    submitted.append(schedule.target)
            except TransientError as exc:
                # This environment's submit failed for now (the slot stays claimed
                # and unsubmitted: retried next tick); the others still go.
                self._log.warning(
                    "schedule.submit_failed", target=schedule.target, error=exc.message
                )
        return submitted

    @staticmethod
    def _unsubmitted(schedule: Schedule, now: datetime) -> bool:
        if not schedule.enabled or schedule.last_slot is None:
            return False
        if schedule.last_job_id is not None or schedule.last_error is not None:
            return False
        latest = latest_slot(now, hour=schedule.hour, weekly_day=schedule.weekly_day)
        return schedule.last_slot >= latest.at

    async def _submit(self, schedule: Schedule, slot: Slot) -> bool:
        request = BackupRequest(schedule.target, keep_days=slot.keep_days, backup_kind="automatic")
        bound = self._log.bind(target=schedule.target, slot=slot.at.isoformat(), kind=slot.kind)
        try:
            submitted = await self.producer.submit(
                request, idempotency_key=slot_key(schedule.target, slot)
            )
        except PermanentError as exc:
            # The environment cannot be backed up as registered: say so on the
            # slot (schedule show) and in the log; the next slot tries again.
            await self.pool.execute(
                sql("schedule_slot_failed"), schedule.environment_id, slot.at, exc.message
            )
            bound.warning("schedule.submit_refused", error=exc.message)
            return False
        await self.pool.execute(
            sql("schedule_slot_submitted"), schedule.environment_id, slot.at, submitted.job_id
        )
        if submitted.created:
            bound.info(
                "schedule.backup_queued", job_id=str(submitted.job_id), keep_days=slot.keep_days
            )
        return submitted.created

    async def _retention(self, now: datetime, report: TickReport) -> None:
        """Expired backups become delete jobs (each tick); orphans are swept hourly."""
        expire, sweep = self.expire, self.sweep
        if expire is None or sweep is None:
            default_expire, default_sweep = _lifecycle()
            expire, sweep = expire or default_expire, sweep or default_sweep
        # Retention never stops the schedules: whatever it raises is logged and
        # tried again next tick (or next hour).
        try:
            report.expired = await expire(self.pool, self.producer, now=now)
        except Exception as exc:  # noqa: BLE001 - logged, retried next tick
            self._log.warning("retention.expire_failed", error=str(exc), exc_info=True)
        if self.last_sweep is None or now - self.last_sweep >= SWEEP_EVERY:
            try:
                min_age = timedelta(hours=self.settings.backup_orphan_min_age_hours)
                report.swept = await sweep(self.pool, self.store, now=now, min_age=min_age)
                self.last_sweep = now
            except Exception as exc:  # noqa: BLE001 - logged, retried next tick
                self._log.warning("retention.sweep_failed", error=str(exc), exc_info=True)
        if report.expired or report.swept:
            self._log.info("retention.done", expired=report.expired, swept=report.swept)

    async def run(self, stop: asyncio.Event) -> None:
        """Tick every ENVRESTORE_SCHEDULER_TICK_SECONDS until `stop` is set; then release."""
        self._log.info("scheduler.started", tick_seconds=self.settings.scheduler_tick_seconds)
        try:
            while not stop.is_set():
                try:
                    await self.tick()
                except OUTAGES as exc:
                    # Ledger gone: we cannot know whether we still lead, so act as a
                    # follower; the lease lapses on its own if we cannot renew it.
                    if self.leading:
                        self._log.warning("scheduler.follower", reason="ledger unreachable")
                    self.leading = False
                    self._log.warning("scheduler.tick_failed", error=str(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.scheduler_tick_seconds)
        finally:
            with contextlib.suppress(*OUTAGES):
                await asyncio.wait_for(self.lease.release(), 5)
            self._log.info("scheduler.stopped")
