"""Deleting backups, by hand and by expiry, against real SeaweedFS and PostgreSQL.

What a user checks: after the delete no object of the backup is left in S3
and `backup list` no longer shows it; a delete that a worker's death cut in
half finishes when resumed; a backup a restore reads stays until the restore
ends, and no new restore may start from a backup being deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from envrestore.pipelines.backup.lifecycle import expire_backups
from envrestore.pipelines.backup.service import get_backup, list_backups
from envrestore.pipelines.errors import Conflict, NotFound
from envrestore.pipelines.jobs.principal import Principal
from envrestore.pipelines.jobs.runner import run_step
from envrestore.pipelines.jobs.runtime import Runtime
from envrestore.pipelines.jobs.views import show_job
from envrestore.pipelines.requests import DeleteBackupRequest
from tests.support.driver import drive
from tests.support.producing import producer, submit_backup, submit_restore

pytestmark = pytest.mark.integration


@pytest.fixture
def engine() -> str:
    """One engine is enough: deletion never reads the database."""
    return "mariadb"


async def keys_under(rt: Runtime, prefix: str) -> list[str]:
    return [info.key async for info in rt.store.list(prefix)]


async def make_backup(rt: Runtime, target: str, **fields: Any) -> str:
    job = await submit_backup(rt, target, **fields)
    view = await drive(rt, job.job_id)
    assert view["status"] == "succeeded", view
    backup_id: str = view["outputs"]["backup_id"]
    return backup_id


async def delete(rt: Runtime, target: str, backup_id: str) -> Any:
    return await producer(rt).submit(DeleteBackupRequest(target, backup_id))


async def test_delete_removes_every_object_then_the_rows(runtime, make_env):
    await make_env("shop.dev")
    kept = await make_backup(runtime, "shop.dev")
    doomed = await make_backup(runtime, "shop.dev")
    prefix = f"backups/shop/dev/{doomed}/"
    assert len(await keys_under(runtime, prefix)) == 4  # three parts and the manifest

    job = await delete(runtime, "shop.dev", doomed)
    view = await drive(runtime, job.job_id)

    assert view["status"] == "succeeded", view
    assert await keys_under(runtime, prefix) == []
    assert [b.id for b in await list_backups(runtime.pool, "shop.dev")] == [kept]
    with pytest.raises(NotFound):
        await get_backup(runtime.pool, doomed)
    # The other backup is untouched.
    assert len(await keys_under(runtime, f"backups/shop/dev/{kept}/")) == 4


async def test_a_second_delete_of_the_same_backup_is_refused_while_the_first_runs(
    runtime, make_env
):
    await make_env("shop.dev")
    backup_id = await make_backup(runtime, "shop.dev")
    first = await delete(runtime, "shop.dev", backup_id)
    # Run only mark_deleting: the backup is now 'deleting' by the first job.
    await drive_steps(runtime, first.job_id, {"mark_deleting"})
    with pytest.raises(Conflict, match="already being deleted"):
        await delete(runtime, "shop.dev", backup_id)
    with pytest.raises(NotFound, match="does not exist"):
        await delete(runtime, "shop.dev", "20200101T000000Z-abcdef")
    view = await drive(runtime, first.job_id)
    assert view["status"] == "succeeded", view


async def test_a_retried_delete_with_its_key_gets_the_same_job(runtime, make_env):
    await make_env("shop.dev")
    backup_id = await make_backup(runtime, "shop.dev")
    other = await make_backup(runtime, "shop.dev")
    ask = producer(runtime)
    request = DeleteBackupRequest("shop.dev", backup_id)

    first = await ask.submit(request, idempotency_key="del-1")
    assert first.created
    # Retried while queued, then while marking the backup: the same job, not a refusal.
    assert await ask.submit(request, idempotency_key="del-1") == dataclasses.replace(
        first, created=False
    )
    await drive_steps(runtime, first.job_id, {"mark_deleting"})
    again = await ask.submit(request, idempotency_key="del-1")
    assert (again.job_id, again.created) == (first.job_id, False)

    # Another key (or none) for the backup being deleted is still refused, naming the job.
    for key in ("del-2", None):
        with pytest.raises(Conflict, match=f"already being deleted by job {first.job_id}"):
            await ask.submit(request, idempotency_key=key)
    # The same key for another request is refused as for every kind.
    with pytest.raises(Conflict, match="already used for a different request"):
        await ask.submit(DeleteBackupRequest("shop.dev", other), idempotency_key="del-1")
    count = "SELECT count(*) FROM jobs WHERE kind = 'delete_backup'"
    assert await runtime.pool.fetchval(count) == 1

    view = await drive(runtime, first.job_id)
    assert view["status"] == "succeeded", view
    # Done and the backup gone: the retry still answers with the job that did it.
    done = await ask.submit(request, idempotency_key="del-1")
    assert (done.job_id, done.created) == (first.job_id, False)
    with pytest.raises(NotFound):
        await ask.submit(request, idempotency_key="del-3")
    assert await runtime.pool.fetchval(count) == 1
    assert [b.id for b in await list_backups(runtime.pool, "shop.dev")] == [other]


async def drive_steps(rt: Runtime, job_id: Any, names: set[str]) -> None:
    """Deliver only the named steps of a job (the others stay queued in the outbox)."""
    from envrestore.pipelines.jobs.outbox import relay_once

    held: list[tuple[Any, str]] = []
    while True:
        sent: list[tuple[Any, str]] = []
        await relay_once(rt.pool, lambda j, s: sent.append((j, s)))
        run = [(j, s) for j, s in sent if j == job_id and s in names]
        held.extend(x for x in sent if x not in run)
        if not run:
            break
        for j, s in run:
            await run_step(rt, j, s)
    async with rt.pool.acquire() as conn:
        for j, s in held:  # hand the held messages back to the outbox
            await conn.execute(
                "INSERT INTO outbox (job_id, step) VALUES ($1, $2) ON CONFLICT DO NOTHING", j, s
            )


async def test_a_delete_cut_short_by_a_dead_worker_finishes_when_resumed(runtime, make_env):
    await make_env("shop.dev")
    backup_id = await make_backup(runtime, "shop.dev")
    prefix = f"backups/shop/dev/{backup_id}/"
    slow = dataclasses.replace(
        runtime,
        settings=runtime.settings.model_copy(
            update={"failpoints": {"delete_objects.after_each": "sleep:30"}}
        ),
    )
    job = await delete(runtime, "shop.dev", backup_id)
    await drive_steps(runtime, job.job_id, {"mark_deleting", "wait_readers"})
    # The worker dies after deleting its first object: the step stays running.
    from envrestore.pipelines.jobs.outbox import relay_once

    sent: list[tuple[Any, str]] = []
    await relay_once(runtime.pool, lambda j, s: sent.append((j, s)))
    assert (job.job_id, "delete_objects") in sent
    attempt = asyncio.create_task(run_step(slow, job.job_id, "delete_objects"))
    for _ in range(200):
        if len(await keys_under(runtime, prefix)) == 3:
            break
        await asyncio.sleep(0.05)
    attempt.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await attempt
    # Half-deleted: the row is still there but marked, so no new job picks it.
    record = await get_backup(runtime.pool, backup_id)
    assert record.status == "deleting"
    assert len(await keys_under(runtime, prefix)) == 3
    with pytest.raises(Conflict, match="being deleted"):
        await submit_restore(runtime, "shop.dev", backup=backup_id)

    view = await drive(runtime, job.job_id)  # the reconciler resumes the stale step

    assert view["status"] == "succeeded", view
    steps = {s["name"]: s for s in view["steps"]}
    assert steps["delete_objects"]["attempts"] == 2
    assert await keys_under(runtime, prefix) == []
    with pytest.raises(NotFound):
        await get_backup(runtime.pool, backup_id)


async def test_expiry_queues_one_delete_per_expired_backup(runtime, make_env):
    await make_env("shop.dev")
    short = await make_backup(runtime, "shop.dev", keep_days=1)
    long = await make_backup(runtime, "shop.dev", keep_days=30)
    system = producer(runtime, principal=Principal.system("scheduler"))
    now = datetime.now(UTC)

    assert await expire_backups(runtime.pool, system, now=now) == 0
    later = now + timedelta(days=2)
    assert await expire_backups(runtime.pool, system, now=later) == 1
    assert await expire_backups(runtime.pool, system, now=later) == 0  # same key, same job

    jobs = await runtime.pool.fetch("SELECT id FROM jobs WHERE kind = 'delete_backup'")
    assert len(jobs) == 1
    view = await drive(runtime, jobs[0]["id"])
    assert view["status"] == "succeeded", view
    assert view["params"]["reason"] == "expired"
    assert await keys_under(runtime, f"backups/shop/dev/{short}/") == []
    assert [b.id for b in await list_backups(runtime.pool, "shop.dev")] == [long]
    # Once deleted, the next tick finds nothing more to expire.
    assert await expire_backups(runtime.pool, system, now=later) == 0


async def test_a_backup_read_by_a_restore_is_kept_until_the_restore_ends(runtime, make_env):
    await make_env("shop.dev")
    await make_env("shop.test")
    backup_id = await make_backup(runtime, "shop.dev")
    prefix = f"backups/shop/dev/{backup_id}/"
    # A restore of test from dev's backup is queued: it reads the backup.
    restore = await submit_restore(runtime, "shop.test", source="shop.dev", backup=backup_id)
    fast = dataclasses.replace(
        runtime,
        settings=runtime.settings.model_copy(update={"backup_delete_poll_seconds": 0.1}),
    )
    job = await delete(runtime, "shop.dev", backup_id)
    await drive_steps(fast, job.job_id, {"mark_deleting"})

    # New restores of it are refused at once, "latest" no longer picks it.
    with pytest.raises(Conflict, match="is being deleted"):
        await submit_restore(runtime, "shop.test", source="shop.dev", backup=backup_id)
    with pytest.raises(NotFound, match="no backups yet"):
        await submit_restore(runtime, "shop.test", source="shop.dev")

    # The delete waits while the restore is unfinished.
    waiting = asyncio.create_task(drive(fast, job.job_id, timeout=60))
    await asyncio.sleep(1.5)
    assert not waiting.done()
    assert len(await keys_under(runtime, prefix)) == 4
    events = await show_job(runtime.pool, job.job_id)
    assert events["status"] == "running"

    restored = await drive(runtime, restore.job_id)
    assert restored["status"] == "succeeded", restored
    view = await asyncio.wait_for(waiting, 60)
    assert view["status"] == "succeeded", view
    assert await keys_under(runtime, prefix) == []


async def test_a_cancelled_delete_gives_the_backup_back(runtime, make_env):
    from envrestore.pipelines.jobs.cancel import cancel_job

    await make_env("shop.dev")
    await make_env("shop.test")
    backup_id = await make_backup(runtime, "shop.dev")
    await submit_restore(runtime, "shop.test", source="shop.dev", backup=backup_id)
    job = await delete(runtime, "shop.dev", backup_id)
    await drive_steps(runtime, job.job_id, {"mark_deleting"})
    assert (await get_backup(runtime.pool, backup_id)).status == "deleting"

    await cancel_job(runtime.pool, job.job_id, runtime.kinds)
    view = await drive(runtime, job.job_id)

    assert view["status"] == "cancelled", view
    assert (await get_backup(runtime.pool, backup_id)).status == "ready"
    assert len(await keys_under(runtime, f"backups/shop/dev/{backup_id}/")) == 4


async def test_expiry_finishes_a_delete_that_ended_midway(runtime, make_env):
    from envrestore.pipelines.jobs.cancel import cancel_job

    await make_env("shop.dev")
    backup_id = await make_backup(runtime, "shop.dev", keep_days=1)
    prefix = f"backups/shop/dev/{backup_id}/"
    first = await delete(runtime, "shop.dev", backup_id)
    await drive_steps(runtime, first.job_id, {"mark_deleting"})
    await cancel_job(runtime.pool, first.job_id, runtime.kinds)
    await drive(runtime, first.job_id)
    # As a delete that failed after removing a part leaves it: marked, partly gone.
    [part, *_] = [k for k in await keys_under(runtime, prefix) if not k.endswith("manifest.json")]
    await runtime.store.delete(part)
    await runtime.pool.execute(
        "UPDATE backups SET status = 'deleting', deleting_job_id = $2 WHERE id = $1",
        backup_id,
        first.job_id,
    )
    system = producer(runtime, principal=Principal.system("scheduler"))
    later = datetime.now(UTC) + timedelta(days=2)

    assert await expire_backups(runtime.pool, system, now=later) == 1
    assert await expire_backups(runtime.pool, system, now=later) == 0

    [row] = await runtime.pool.fetch(
        "SELECT id FROM jobs WHERE kind = 'delete_backup' AND id <> $1", first.job_id
    )
    view = await drive(runtime, row["id"])
    assert view["status"] == "succeeded", view
    assert await keys_under(runtime, prefix) == []
    assert await list_backups(runtime.pool, "shop.dev") == []


async def test_expiry_queues_a_new_delete_after_one_that_gave_the_backup_back(runtime, make_env):
    from envrestore.pipelines.jobs.cancel import cancel_job

    await make_env("shop.dev")
    backup_id = await make_backup(runtime, "shop.dev", keep_days=1)
    system = producer(runtime, principal=Principal.system("scheduler"))
    later = datetime.now(UTC) + timedelta(days=2)
    assert await expire_backups(runtime.pool, system, now=later) == 1
    [first] = await runtime.pool.fetch("SELECT id FROM jobs WHERE kind = 'delete_backup'")
    # Cancelled while waiting for readers: the backup is 'ready' again, still expired.
    await drive_steps(runtime, first["id"], {"mark_deleting"})
    await cancel_job(runtime.pool, first["id"], runtime.kinds)
    assert (await drive(runtime, first["id"]))["status"] == "cancelled"
    assert (await get_backup(runtime.pool, backup_id)).status == "ready"

    assert await expire_backups(runtime.pool, system, now=later) == 1
    assert await expire_backups(runtime.pool, system, now=later) == 0  # the new one is queued
    [second] = await runtime.pool.fetch(
        "SELECT id FROM jobs WHERE kind = 'delete_backup' AND id <> $1", first["id"]
    )
    view = await drive(runtime, second["id"])
    assert view["status"] == "succeeded", view
    assert await list_backups(runtime.pool, "shop.dev") == []


async def test_expiry_visits_every_due_backup_not_only_the_first_page(
    runtime, make_env, monkeypatch
):
    from envrestore.pipelines.backup import lifecycle

    await make_env("shop.dev")
    ids = {await make_backup(runtime, "shop.dev", keep_days=1) for _ in range(3)}
    monkeypatch.setattr(lifecycle, "EXPIRE_BATCH", 2)
    system = producer(runtime, principal=Principal.system("scheduler"))
    later = datetime.now(UTC) + timedelta(days=2)

    # The first page's rows already have their (queued) jobs: the third still gets one.
    assert await expire_backups(runtime.pool, system, now=later) == 3
    assert await expire_backups(runtime.pool, system, now=later) == 0
    named = await runtime.pool.fetch(
        "SELECT params ->> 'backup_id' AS id FROM jobs WHERE kind = 'delete_backup'"
    )
    assert {r["id"] for r in named} == ids


async def test_a_delete_failing_before_its_irreversible_point_gives_the_backup_back(
    runtime, make_env
):
    await make_env("shop.dev")
    backup_id = await make_backup(runtime, "shop.dev")
    prefix = f"backups/shop/dev/{backup_id}/"
    job = await delete(runtime, "shop.dev", backup_id)
    await drive_steps(runtime, job.job_id, {"mark_deleting", "wait_readers"})
    # delete_objects starts (an attempt is counted) but refuses before removing anything.
    await runtime.pool.execute(
        "UPDATE backups SET manifest_key = 'elsewhere/manifest.json' WHERE id = $1", backup_id
    )
    view = await drive(runtime, job.job_id)

    assert view["status"] == "failed", view
    steps = {s["name"]: s for s in view["steps"]}
    assert steps["delete_objects"]["attempts"] >= 1
    assert len(await keys_under(runtime, prefix)) == 4
    assert (await get_backup(runtime.pool, backup_id)).status == "ready"


async def test_a_restore_checked_before_a_delete_marked_its_backup_is_refused_at_insert(
    runtime, make_env, monkeypatch
):
    from envrestore.pipelines.producer import Producer
    from envrestore.pipelines.requests import RestoreRequest

    await make_env("shop.dev")
    await make_env("shop.test")
    backup_id = await make_backup(runtime, "shop.dev")
    job = await delete(runtime, "shop.dev", backup_id)
    real_prepare = Producer.prepare

    async def prepare_then_delete_marks(self: Producer, request: Any) -> Any:
        prepared = await real_prepare(self, request)
        if isinstance(request, RestoreRequest):  # checked 'ready'; the delete marks it now
            await drive_steps(runtime, job.job_id, {"mark_deleting"})
        return prepared

    monkeypatch.setattr(Producer, "prepare", prepare_then_delete_marks)
    with pytest.raises(Conflict, match=f"backup {backup_id} is being deleted"):
        await submit_restore(runtime, "shop.test", source="shop.dev", backup=backup_id)

    count = "SELECT count(*) FROM jobs WHERE kind = 'restore'"
    assert await runtime.pool.fetchval(count) == 0
    monkeypatch.undo()
    view = await drive(runtime, job.job_id)
    assert view["status"] == "succeeded", view
    assert await list_backups(runtime.pool, "shop.dev") == []


async def test_a_backup_an_earlier_delete_began_removing_stays_deleting_if_the_next_fails(
    runtime, make_env
):
    await make_env("shop.dev")
    backup_id = await make_backup(runtime, "shop.dev")
    first = await delete(runtime, "shop.dev", backup_id)
    await drive_steps(runtime, first.job_id, {"mark_deleting", "wait_readers"})
    # The first delete passed its irreversible point (as enter_irreversible records
    # it), then ended midway: cancelled here, as a crash past the point leaves it.
    await runtime.pool.execute(
        "INSERT INTO job_events (job_id, step, event, data) "
        "VALUES ($1, 'delete_objects', 'job.irreversible', '{}')",
        first.job_id,
    )
    await runtime.pool.execute(
        "UPDATE jobs SET status = 'failed', finished_at = now() WHERE id = $1", first.job_id
    )
    second = await delete(runtime, "shop.dev", backup_id)
    await drive_steps(runtime, second.job_id, {"mark_deleting", "wait_readers"})
    await runtime.pool.execute(
        "UPDATE backups SET manifest_key = 'elsewhere/manifest.json' WHERE id = $1", backup_id
    )
    view = await drive(runtime, second.job_id)

    assert view["status"] == "failed", view
    # Partly gone, maybe: never 'ready' again, so no restore picks it.
    assert (await get_backup(runtime.pool, backup_id)).status == "deleting"
