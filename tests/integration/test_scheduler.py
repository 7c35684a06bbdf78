"""The scheduler on a real ledger, with a fake clock: forty days of schedules and retention,
missed slots, two schedulers at once, a leader whose lease lapses.

The backup job itself is not run here (forty real backups would take minutes):
each backup the scheduler queues is recorded by `perform_backups` through the
same ledger statement `record_backup` uses (`insert_backup`), at the simulated
time, with a manifest object in S3 under the backup's prefix. Expiry runs for
real: the lifecycle's `expire_backups` queues delete jobs, which run through
the step protocol (`tests/support/driver.drive`) and remove the objects and rows.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from envrestore.config.settings import Settings
from envrestore.pipelines import registry
from envrestore.pipelines.jobs.principal import Principal
from envrestore.pipelines.jobs.runtime import Runtime
from envrestore.pipelines.ledger.queries import sql
from envrestore.pipelines.producer import Producer
from envrestore.pipelines.requests import BackupRequest
from envrestore.pipelines.schedule.lease import current_lease
from envrestore.pipelines.schedule.loop import Scheduler, slot_key
from envrestore.pipelines.schedule.slots import latest_slot
from envrestore.pipelines.schedule.store import set_schedule, slots_of
from tests.support.driver import drive

LEASE_SECONDS = 1.0


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Quick leases; the defaults a fresh install has for the hour and weekly day."""
    return settings.model_copy(
        update={
            "scheduler_lease_seconds": LEASE_SECONDS,
            "scheduler_tick_seconds": 0.05,
            "schedule_default_hour": 2,
            "schedule_default_weekly_day": 0,
            "backup_keep_days": 30,
            "backup_delete_poll_seconds": 0.1,
        }
    )


class FakeClock:
    """The scheduler's clock, moved by the test."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def first_sunday_after(moment: datetime) -> datetime:
    """00:00 UTC of a Sunday a week or more after `moment` (environments exist before it)."""
    day = (moment + timedelta(days=7)).replace(hour=0, minute=0, second=0, microsecond=0)
    return day + timedelta(days=(6 - day.weekday()) % 7)


async def register(rt: Runtime, tmp_path: Path, target: str) -> registry.Environment:
    site, env = registry.parse_target(target)
    await registry.add_site(rt.pool, site)
    base = tmp_path / site / env
    (base / "files").mkdir(parents=True)
    (base / "code").mkdir(parents=True)
    environment, _ = await registry.add_environment(
        rt.pool,
        target,
        db=f"postgresql://postgres@127.0.0.1:5432/sched_{site}_{env}",
        files=base / "files",
        code=base / "code",
    )
    return environment


def make_scheduler(rt: Runtime, clock: FakeClock, holder: str) -> Scheduler:
    producer = Producer(
        rt.pool, rt.settings, rt.store, Principal("scheduler", holder), preflight=False
    )
    return Scheduler(rt.pool, rt.settings, producer, rt.store, holder, clock=clock)


async def perform_backups(rt: Runtime, now: datetime) -> int:
    """Finish every queued backup job as its `record_backup` would, at time `now`."""
    rows = await rt.pool.fetch(
        "SELECT id, environment_id, site, env, params FROM jobs "
        "WHERE kind = 'backup' AND status = 'queued'"
    )
    for row in rows:
        request = BackupRequest.from_params(row["params"])
        assert request.backup_id and request.keep_days
        key = f"backups/{row['site']}/{row['env']}/{request.backup_id}/manifest.json"
        await rt.store.put_bytes(key, b"{}", content_type="application/json")
        await rt.pool.execute(
            sql("insert_backup"),
            request.backup_id,
            row["environment_id"],
            row["site"],
            row["env"],
            request.backup_kind,
            "postgresql",
            None,
            key,
            row["id"],
            now,
            now + timedelta(days=request.keep_days),
        )
        await rt.pool.execute("DELETE FROM outbox WHERE job_id = $1", row["id"])
        await rt.pool.execute("UPDATE job_steps SET status = 'done' WHERE job_id = $1", row["id"])
        await rt.pool.execute(
            "UPDATE jobs SET status = 'succeeded', finished_at = now() WHERE id = $1", row["id"]
        )
    return len(rows)


async def run_deletes(rt: Runtime) -> int:
    """Run the delete jobs expiry queued, through the step protocol."""
    ids = await rt.pool.fetch(
        "SELECT id FROM jobs WHERE kind = 'delete_backup' AND status IN ('queued', 'running')"
    )
    for row in ids:
        view = await drive(rt, row["id"], timeout=60)
        assert view["status"] == "succeeded", view
    return len(ids)


async def backups_now(rt: Runtime) -> list[tuple[str, datetime, str, int]]:
    rows = await rt.pool.fetch(
        "SELECT site || '.' || env AS target, created_at, kind, "
        "extract(day FROM expires_at - created_at)::int AS keep FROM backups "
        "ORDER BY target, created_at"
    )
    return [(r["target"], r["created_at"], r["kind"], r["keep"]) for r in rows]


async def test_forty_days_of_schedules_weeklies_and_manual_backups(
    runtime: Runtime, tmp_path: Path
) -> None:
    rt = runtime
    dev = await register(rt, tmp_path, "shop.dev")
    await register(rt, tmp_path, "shop.test")
    live = await register(rt, tmp_path, "shop.live")
    await set_schedule(rt.pool, rt.settings, "shop.test", enabled=False)
    await set_schedule(rt.pool, rt.settings, "shop.live", hour=14, weekly_day="wed")
    # shop.dev has no schedule row: on by default, 02:00 UTC, weekly on Sunday.

    start = first_sunday_after(datetime.now(UTC))  # day 0 is a Sunday

    def day(n: int, hour: int, minute: int = 7) -> datetime:
        return start + timedelta(days=n, hours=hour, minutes=minute)

    clock = FakeClock(start)
    scheduler = make_scheduler(rt, clock, "sched-a")
    operator = Producer(
        rt.pool, rt.settings, rt.store, Principal.operator("tests"), preflight=False
    )
    manual = {  # (day, 10:07): target, --keep-for
        3: ("shop.test", 5),
        9: ("shop.dev", 30),
        12: ("shop.dev", 30),
        20: ("shop.test", None),  # ENVRESTORE_BACKUP_KEEP_DAYS: 30
    }
    for hour in range(40 * 24 + 1):  # a tick every simulated hour, at :07
        clock.now = start + timedelta(hours=hour, minutes=7)
        report = await scheduler.tick()
        assert report.leading
        if clock.now.hour == 10 and (clock.now - start).days in manual:
            target, keep = manual[(clock.now - start).days]
            await operator.submit(BackupRequest(target, keep_days=keep))
        await perform_backups(rt, clock.now)
        await run_deletes(rt)
    end = clock.now
    assert end == day(40, 0)

    # Every slot was taken once: the day before day 0 (due when the scheduler
    # first ran), then each day; none for the environment turned off.
    dev_slots = await slots_of(rt.pool, dev.id)
    live_slots = await slots_of(rt.pool, live.id)
    assert [s["slot"] for s in dev_slots] == [day(n, 2, 0) for n in range(-1, 40)]
    assert [s["slot"] for s in live_slots] == [day(n, 14, 0) for n in range(-1, 40)]
    assert all(s["job_id"] is not None and s["error"] is None for s in dev_slots + live_slots)
    assert [s["slot"] for s in dev_slots if s["weekly"]] == [day(n, 2, 0) for n in range(0, 40, 7)]
    assert [s["slot"] for s in live_slots if s["weekly"]] == [
        day(n, 14, 0) for n in range(3, 40, 7)
    ]
    jobs = await rt.pool.fetch(
        "SELECT requested_by, count(*) AS n FROM jobs WHERE kind = 'backup' GROUP BY 1 ORDER BY 1"
    )
    assert {r["requested_by"]: r["n"] for r in jobs} == {
        "operator:tests": 4,
        "scheduler:sched-a": 82,
    }

    # What is left on day 40: weeklies for 32 days, dailies for 8, manual ones
    # for their --keep-for; the rest was deleted by expiry jobs.
    expected = sorted(
        [("shop.dev", day(n, 2), "automatic", 32) for n in (14, 21, 28, 35)]
        + [("shop.dev", day(n, 2), "automatic", 8) for n in (32, 33, 34, 36, 37, 38, 39)]
        + [("shop.dev", day(12, 10), "manual", 30)]
        + [("shop.live", day(n, 14), "automatic", 32) for n in (10, 17, 24, 31, 38)]
        + [("shop.live", day(n, 14), "automatic", 8) for n in (32, 33, 34, 35, 36, 37, 39)]
        + [("shop.test", day(20, 10), "manual", 30)]
    )
    assert await backups_now(rt) == expected
    # ... and in S3 nothing but their prefixes.
    prefixes = sorted({info.key.rsplit("/", 1)[0] async for info in rt.store.list("backups/")})
    rows = await rt.pool.fetch("SELECT site, env, id FROM backups")
    assert prefixes == sorted(f"backups/{r['site']}/{r['env']}/{r['id']}" for r in rows)
    deleted = await rt.pool.fetchval(
        "SELECT count(*) FROM jobs WHERE kind = 'delete_backup' AND status = 'succeeded'"
    )
    assert deleted == 82 + 4 - len(expected)


async def test_a_missed_slot_is_taken_once(runtime: Runtime, tmp_path: Path) -> None:
    rt = runtime
    dev = await register(rt, tmp_path, "shop.dev")
    start = first_sunday_after(datetime.now(UTC))
    clock = FakeClock(start + timedelta(hours=2, minutes=1))
    scheduler = make_scheduler(rt, clock, "sched-a")
    assert (await scheduler.tick()).submitted == ["shop.dev"]
    # No scheduler runs for five days and eleven hours; then it ticks all afternoon.
    clock.now = start + timedelta(days=5, hours=13)
    taken = []
    for minute in range(0, 600, 5):
        clock.now = start + timedelta(days=5, hours=13, minutes=minute)
        taken += (await scheduler.tick()).submitted
    assert taken == ["shop.dev"]
    slots = [s["slot"] for s in await slots_of(rt.pool, dev.id)]
    assert slots == [start + timedelta(hours=2), start + timedelta(days=5, hours=2)]
    # The job carries the slot's idempotency key: the same slot is the same job.
    key = slot_key("shop.dev", latest_slot(clock.now, hour=2, weekly_day=0))
    job_id = await rt.pool.fetchval("SELECT job_id FROM idempotency_keys WHERE key = $1", key)
    assert job_id == (await slots_of(rt.pool, dev.id))[-1]["job_id"]


async def test_two_schedulers_never_take_the_same_slot(runtime: Runtime, tmp_path: Path) -> None:
    rt = runtime
    dev = await register(rt, tmp_path, "shop.dev")
    live = await register(rt, tmp_path, "shop.live")
    start = first_sunday_after(datetime.now(UTC))
    clock = FakeClock(start)
    a = make_scheduler(rt, clock, "sched-a")
    b = make_scheduler(rt, clock, "sched-b")

    # Both run their loops at once while four simulated days go by.
    stop = asyncio.Event()
    loops = [asyncio.create_task(s.run(stop)) for s in (a, b)]
    for hour in range(4 * 24):
        clock.now = start + timedelta(hours=hour, minutes=30)
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)
    stop.set()
    await asyncio.gather(*loops)
    for environment in (dev, live):
        slots = await slots_of(rt.pool, environment.id)
        days = [s["slot"] for s in slots]
        assert days == sorted(set(days))
        assert len(days) >= 4
        assert len({s["job_id"] for s in slots}) == len(slots)
    per_holder = await rt.pool.fetch(
        "SELECT taken_by, count(*) AS n FROM schedule_slots GROUP BY 1"
    )
    assert len(per_holder) == 1, "only the leader takes slots"
    backups_queued = await rt.pool.fetchval("SELECT count(*) FROM jobs WHERE kind = 'backup'")
    assert backups_queued == await rt.pool.fetchval("SELECT count(*) FROM schedule_slots")
    assert await current_lease(rt.pool) is None, "a clean stop gives the lease up"


async def test_a_stale_leader_cannot_take_a_slot_and_concurrent_claims_make_one(
    runtime: Runtime, tmp_path: Path
) -> None:
    rt = runtime
    dev = await register(rt, tmp_path, "shop.dev")
    start = first_sunday_after(datetime.now(UTC))
    clock = FakeClock(start + timedelta(hours=3))
    a = make_scheduler(rt, clock, "sched-a")
    b = make_scheduler(rt, clock, "sched-b")
    assert (await a.tick()).leading
    assert not (await b.tick()).leading

    # The same leader claiming one slot twice at once (two ticks overlapping).
    clock.now += timedelta(days=1)
    results = await asyncio.gather(a.take_due_slots(clock.now), a.take_due_slots(clock.now))
    assert sorted(results) == [[], ["shop.dev"]]

    # A stops renewing (a long pause); B takes the lease. A still believes it
    # leads, but its claim is refused by the ledger: the lease is B's now.
    await asyncio.sleep(LEASE_SECONDS + 0.2)
    assert (await b.tick()).leading
    clock.now += timedelta(days=1)
    assert a.leading
    assert await a.take_due_slots(clock.now) == []
    assert (await b.tick()).submitted == ["shop.dev"]
    assert not (await a.tick()).leading
    slots = await slots_of(rt.pool, dev.id)
    assert [s["taken_by"] for s in slots] == ["sched-a", "sched-a", "sched-b"]
    assert len({s["job_id"] for s in slots}) == 3


async def test_a_refused_environment_is_recorded_on_its_slot(
    runtime: Runtime, tmp_path: Path
) -> None:
    rt = runtime
    dev = await register(rt, tmp_path, "shop.dev")
    start = first_sunday_after(datetime.now(UTC))
    clock = FakeClock(start + timedelta(hours=3))
    scheduler = make_scheduler(rt, clock, "sched-a")

    async def refuse(request: Any, **_: Any) -> Any:
        from envrestore.pipelines.errors import BadInput

        raise BadInput("files directory is gone")

    object.__setattr__(scheduler, "producer", _Refusing(scheduler.producer, refuse))
    assert (await scheduler.tick()).submitted == []
    [slot] = await slots_of(rt.pool, dev.id)
    assert (slot["job_id"], slot["error"]) == (None, "files directory is gone")
    # Not retried every tick: the next try is the next slot.
    assert (await scheduler.tick()).submitted == []


class _Refusing:
    """A producer whose submit refuses (an environment that cannot be backed up)."""

    def __init__(self, inner: Producer, submit: Any) -> None:
        self._inner = inner
        self.submit = submit

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def test_live_is_backed_up_by_default_with_the_weekly_retention_on_sunday(
    runtime: Runtime, tmp_path: Path
) -> None:
    rt = runtime
    live = await register(rt, tmp_path, "shop.live")
    start = first_sunday_after(datetime.now(UTC))
    scheduler = make_scheduler(rt, FakeClock(start + timedelta(hours=2, minutes=1)), "sched-a")
    assert (await scheduler.tick()).submitted == ["shop.live"]
    [slot] = await slots_of(rt.pool, live.id)
    assert (slot["weekly"], slot["keep_days"]) == (True, 32)
    params = await rt.pool.fetchval("SELECT params FROM jobs WHERE id = $1", slot["job_id"])
    request = BackupRequest.from_params(params)
    assert (request.target, request.keep_days, request.backup_kind) == (
        "shop.live",
        32,
        "automatic",
    )
    # Monday's is a daily: kept 8 days.
    scheduler.clock = FakeClock(start + timedelta(days=1, hours=2, minutes=1))
    assert (await scheduler.tick()).submitted == ["shop.live"]
    monday = (await slots_of(rt.pool, live.id))[-1]
    assert (monday["weekly"], monday["keep_days"]) == (False, 8)


async def test_a_failing_retention_does_not_stop_the_schedules(
    runtime: Runtime, tmp_path: Path
) -> None:
    rt = runtime
    await register(rt, tmp_path, "shop.dev")
    start = first_sunday_after(datetime.now(UTC))
    clock = FakeClock(start + timedelta(hours=2, minutes=1))
    calls: list[str] = []

    async def broken_expire(*_: Any, **__: Any) -> int:
        calls.append("expire")
        raise RuntimeError("the store said no")

    async def broken_sweep(*_: Any, **__: Any) -> int:
        calls.append("sweep")
        raise OSError("connection reset")

    scheduler = make_scheduler(rt, clock, "sched-a")
    scheduler.expire, scheduler.sweep = broken_expire, broken_sweep
    assert (await scheduler.tick()).submitted == ["shop.dev"]
    clock.now += timedelta(days=1)
    assert (await scheduler.tick()).submitted == ["shop.dev"]
    # Expiry is tried every tick; the failed sweep again at the next tick too.
    assert calls == ["expire", "sweep", "expire", "sweep"]


async def test_a_tick_longer_than_the_lease_keeps_the_lead_and_sweeps_once_an_hour(
    runtime: Runtime, tmp_path: Path
) -> None:
    rt = runtime
    clock = FakeClock(datetime.now(UTC))
    sweeps: list[str] = []
    sweeping = asyncio.Event()

    def sweeper(holder: str, seconds: float) -> Any:
        async def sweep(*_: Any, **__: Any) -> int:
            sweeps.append(holder)
            sweeping.set()
            await asyncio.sleep(seconds)
            return 0

        return sweep

    async def no_expiry(*_: Any, **__: Any) -> int:
        return 0

    a = make_scheduler(rt, clock, "sched-a")
    b = make_scheduler(rt, clock, "sched-b")
    a.expire = b.expire = no_expiry
    a.sweep, b.sweep = sweeper("sched-a", 3 * LEASE_SECONDS), sweeper("sched-b", 0)

    # A's sweep takes three lease lengths; B, ticking meanwhile, never takes the lead.
    ticking = asyncio.create_task(a.tick())
    await asyncio.wait_for(sweeping.wait(), 10)  # A has the lead and is sweeping
    while not ticking.done():
        assert not (await b.tick()).leading
        await asyncio.sleep(LEASE_SECONDS / 4)
    assert (await ticking).leading
    lease = await current_lease(rt.pool)
    assert lease is not None and lease.holder == "sched-a"

    # A stops leading (its lease released), B leads and sweeps; A leading again
    # within the hour does not sweep the whole bucket again.
    await a.lease.release()
    assert (await b.tick()).leading
    assert not (await a.tick()).leading
    await b.lease.release()
    clock.now += timedelta(minutes=10)
    again = await a.tick()
    assert again.leading and again.swept is None
    assert sweeps == ["sched-a", "sched-b"]
