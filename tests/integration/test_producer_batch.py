"""The producer's one-statement submit and its batch (`submit_many`): the same idempotency
rules as one by one, every job whole (steps, first messages, queued event), all or nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from envrestore.pipelines import registry
from envrestore.pipelines.catalog import job_kinds
from envrestore.pipelines.errors import Conflict
from envrestore.pipelines.jobs.runtime import Runtime
from envrestore.pipelines.jobs.submit import JobSpec, submit_jobs
from envrestore.pipelines.ledger.connection import open_pool
from envrestore.pipelines.requests import BackupRequest, parse_elements
from tests.support.producing import producer


@pytest.fixture
async def shop(runtime: Runtime, tmp_path: Path) -> Runtime:
    await registry.add_site(runtime.pool, "shop")
    for env in ("dev", "test"):
        await registry.add_environment(
            runtime.pool,
            f"shop.{env}",
            db=f"postgresql://shop@127.0.0.1:5432/shop_{env}",
            files=tmp_path / env / "files",
            code=tmp_path / env / "code",
        )
    return runtime


async def count(pool: asyncpg.Pool, table: str) -> int:
    return int(await pool.fetchval(f"SELECT count(*) FROM {table}"))


async def test_a_batch_records_each_job_whole_in_order(shop: Runtime) -> None:
    requests = [BackupRequest("shop.dev"), BackupRequest("shop.test"), BackupRequest("shop.dev")]
    submitted = await producer(shop, preflight=False).submit_many(
        requests, idempotency_keys=["a", "b", None]
    )
    assert [s.created for s in submitted] == [True, True, True]
    assert len({s.job_id for s in submitted}) == 3
    pool = shop.pool
    jobs = await pool.fetch("SELECT id, site, env, status FROM jobs ORDER BY created_at")
    assert [j["id"] for j in jobs] == [s.job_id for s in submitted]
    assert [(j["env"], j["status"]) for j in jobs] == [
        ("dev", "queued"),
        ("test", "queued"),
        ("dev", "queued"),
    ]
    # Each job has its whole plan, its first step due in the outbox, one queued event.
    one = await producer(shop, preflight=False).submit(BackupRequest("shop.test"))
    per_job = await pool.fetch(
        """SELECT j.id,
                  (SELECT count(*) FROM job_steps s WHERE s.job_id = j.id) AS steps,
                  (SELECT array_agg(step ORDER BY id) FROM outbox o WHERE o.job_id = j.id) AS due,
                  (SELECT array_agg(event) FROM job_events e WHERE e.job_id = j.id) AS events
           FROM jobs j"""
    )
    shapes = {(r["steps"], tuple(r["due"]), tuple(r["events"])) for r in per_job}
    assert len(per_job) == 4 and len(shapes) == 1, shapes
    steps, due, events = shapes.pop()
    assert steps > 1 and len(due) >= 1 and events == ("job.queued",)
    assert one.created


async def test_the_same_key_gives_the_same_job_and_another_request_is_refused(
    shop: Runtime,
) -> None:
    make = producer(shop, preflight=False)
    first = await make.submit(BackupRequest("shop.dev"), idempotency_key="nightly")
    again = await make.submit(BackupRequest("shop.dev"), idempotency_key="nightly")
    assert again.job_id == first.job_id and first.created and not again.created
    batch = await make.submit_many(
        [BackupRequest("shop.dev"), BackupRequest("shop.dev")],
        idempotency_keys=["nightly", "nightly"],
    )
    assert [(s.job_id, s.created) for s in batch] == [(first.job_id, False)] * 2
    with pytest.raises(Conflict, match="already used for a different request"):
        await make.submit(
            BackupRequest("shop.dev", elements=parse_elements("code")), idempotency_key="nightly"
        )
    assert await count(shop.pool, "jobs") == 1


async def test_a_batch_with_a_refused_request_records_none_of_its_jobs(shop: Runtime) -> None:
    make = producer(shop, preflight=False)
    await make.submit(BackupRequest("shop.dev"), idempotency_key="taken")
    with pytest.raises(Conflict, match="'taken' was already used"):
        await make.submit_many(
            [BackupRequest("shop.test"), BackupRequest("shop.test", keep_days=3)],
            idempotency_keys=["fresh", "taken"],
        )
    assert await count(shop.pool, "jobs") == 1
    assert await count(shop.pool, "idempotency_keys") == 1
    # A key given twice in one batch for two different requests is refused the same way.
    with pytest.raises(Conflict, match="'twice' was already used"):
        await make.submit_many(
            [BackupRequest("shop.test"), BackupRequest("shop.dev")],
            idempotency_keys=["twice", "twice"],
        )
    assert await count(shop.pool, "jobs") == 1


async def test_a_key_claimed_by_a_concurrent_producer_names_its_job(shop: Runtime) -> None:
    """Two producers racing on one key: one job, both told its id."""
    make = producer(shop, preflight=False)
    results = await asyncio.gather(
        *(make.submit(BackupRequest("shop.dev"), idempotency_key="race") for _ in range(8))
    )
    assert len({r.job_id for r in results}) == 1
    assert sum(r.created for r in results) == 1
    assert await count(shop.pool, "jobs") == 1


async def test_a_submit_wakes_the_outbox_relay(shop: Runtime) -> None:
    """The relay LISTENs: a job's first messages are sent at once, not at its next poll."""
    heard: asyncio.Queue[str] = asyncio.Queue()

    def hear(*args: object) -> None:
        heard.put_nowait(str(args[3]))

    async with shop.pool.acquire() as conn:
        await conn.add_listener("envrestore_outbox", hear)
        submitted = await producer(shop, preflight=False).submit(BackupRequest("shop.dev"))
        payload = await asyncio.wait_for(heard.get(), 5)
        await conn.remove_listener("envrestore_outbox", hear)
    assert payload == str(submitted.job_id)


async def test_batches_racing_on_the_same_keys_agree_on_their_jobs(shop: Runtime) -> None:
    """Two producers, the same keys in opposite orders: one job per key, both told it."""
    make = producer(shop, preflight=False)
    keys = [f"k{i}" for i in range(20)]
    forward, backward = await asyncio.gather(
        make.submit_many([BackupRequest("shop.dev")] * 20, idempotency_keys=keys),
        make.submit_many([BackupRequest("shop.dev")] * 20, idempotency_keys=keys[::-1]),
    )
    assert [s.job_id for s in forward] == [s.job_id for s in backward][::-1]
    assert await count(shop.pool, "jobs") == 20


async def test_a_batch_keeps_its_order_whatever_the_plan(shop: Runtime, ledger_url: str) -> None:
    """Leases go first come, first served by `created_at`: a batch's jobs must be
    created in the order of its requests, also under a plan that reorders rows
    (merge joins sort by id, not by position)."""
    database = ledger_url.rsplit("/", 1)[1]
    await shop.pool.execute(f'ALTER DATABASE "{database}" SET enable_hashjoin = off')
    await shop.pool.execute(f'ALTER DATABASE "{database}" SET enable_nestloop = off')
    environment = await registry.get_environment(shop.pool, "shop.dev")
    kind = job_kinds()["backup"]
    specs = [
        JobSpec(
            kind, {"target": "shop.dev", "o": i}, environment, 3, f"order-{i}" if i % 3 else None
        )
        for i in range(40)
    ]
    async with open_pool(ledger_url, max_size=1) as merge_joined:
        submitted = await submit_jobs(merge_joined, specs)
    rows = await shop.pool.fetch(
        "SELECT id FROM jobs WHERE id = ANY($1::uuid[]) ORDER BY created_at, id",
        [s.job_id for s in submitted],
    )
    assert [r["id"] for r in rows] == [s.job_id for s in submitted]
