"""The Python producer API (`envrestore.client.Envrestore`) as a dashboard backend uses it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from envrestore.client import Envrestore
from envrestore.pipelines.errors import BadInput, Conflict, NotFound
from envrestore.pipelines.jobs.principal import Principal
from envrestore.pipelines.jobs.runtime import Runtime
from envrestore.pipelines.requests import BackupRequest, LinkRequest, RestoreRequest
from tests.support.driver import drive
from tests.support.environments import add_env

pytestmark = pytest.mark.integration


async def test_a_backend_submits_follows_and_reads_jobs(
    settings: Any, runtime: Runtime, tmp_path: Any, make_postgres_db: Any
) -> None:
    dev = await add_env(runtime, tmp_path / "envs", "shop.dev", make_postgres_db)
    async with await Envrestore.connect(settings, principal=Principal("token", "backend")) as er:
        assert [s.name for s in await er.sites()] == ["shop"]
        assert [e.env for e in await er.environments("shop")] == ["dev"]
        with pytest.raises(NotFound):
            await er.environments("nosuch")

        backup = await er.backup_create(BackupRequest("shop.dev"), idempotency_key="b1")
        assert backup.created
        again = await er.backup_create(BackupRequest("shop.dev"), idempotency_key="b1")
        assert (again.job_id, again.created) == (backup.job_id, False)
        with pytest.raises(Conflict):
            await er.backup_create(
                BackupRequest("shop.dev", elements=("database",)), idempotency_key="b1"
            )

        queued = await er.job(backup.job_id)
        assert queued.status == "queued" and queued.view["requested_by"] == "token:backend"
        assert queued.progress["steps_done"] == 0 and queued.progress["steps_total"] > 0

        # follow() gives each event once, in order, and stops when the job has ended
        driving = asyncio.create_task(drive(runtime, backup.job_id))
        followed = [e async for e in er.follow(backup.job_id, poll_seconds=0.05)]
        assert (await driving)["status"] == "succeeded"
        ids = [e.id for e in followed]
        assert ids == sorted(set(ids)) and ids
        assert [e.id for e in await er.events(backup.job_id)] == ids
        assert [e.id for e in await er.events(backup.job_id, after=ids[1])] == ids[2:]
        done = await er.job(backup.job_id)
        assert done.final and done.etag != queued.etag
        assert done.progress["steps_done"] == done.progress["steps_total"]
        assert [s["name"] for s in await er.steps(backup.job_id)] == [
            s["name"] for s in done.view["steps"]
        ]

        [made] = await er.backups("shop.dev")
        links = await er.link(LinkRequest("shop.dev", made.id, ("database",)))
        assert links[0].url.startswith("http://127.0.0.1")

        before = await dev.snapshot()
        restore = await er.restore(RestoreRequest("shop.dev", backup=made.id))
        await er.cancel(restore.job_id)
        assert (await er.job(restore.job_id)).status == "cancelled"
        with pytest.raises(Conflict):
            await er.cancel(restore.job_id)
        assert (await dev.snapshot()).rows == before.rows
        with pytest.raises(BadInput):
            await er.job("not-a-job")
    assert er.pool._closed  # connect() owned the pool: closed with the block
