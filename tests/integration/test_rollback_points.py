"""Rollback points over their life: sizes recorded when made, listed, capped, dropped.

Real services: the kept databases are measured by their servers, the kept
trees on disk, and a drop is the expire_rollback job run through the step
protocol.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import uuid
from pathlib import Path

import pytest

from envrestore.pipelines.errors import Conflict, NotFound
from envrestore.pipelines.jobs.views import list_jobs
from envrestore.pipelines.restore import points
from tests.integration import test_restore_job as restores
from tests.support.driver import drive
from tests.support.producing import producer, submit_backup, submit_restore
from tests.support.workers import ENVRESTORE

pytestmark = pytest.mark.integration

# The restore tests' environment (shop.dev with content and one backup) and helpers.
backed_up = restores.backed_up
change_everything = restores.change_everything
_databases = restores._databases


async def restore(rt, element: str = "all") -> uuid.UUID:
    job = await submit_restore(rt, "shop.dev", element=element)
    assert (await drive(rt, job.job_id))["status"] == "succeeded"
    return job.job_id


async def kept(rt) -> dict[uuid.UUID, str]:
    rows = await rt.pool.fetch("SELECT job_id, status FROM rollback_points")
    return {r["job_id"]: r["status"] for r in rows}


async def drive_drops(rt) -> list[uuid.UUID]:
    """Run every expire_rollback job to its end; their ids."""
    ids = [uuid.UUID(j["id"]) for j in await list_jobs(rt.pool) if j["kind"] == "expire_rollback"]
    for job_id in ids:
        assert (await drive(rt, job_id))["status"] == "succeeded"
    return ids


async def pg_database_size(dsn, name: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(host=dsn.host, port=dsn.port, user=dsn.user, database="postgres")
    try:
        return int(await conn.fetchval("SELECT pg_database_size($1::name)", name))
    finally:
        await conn.close()


@pytest.mark.parametrize("backed_up", ["mariadb", "postgresql"], indirect=True)
async def test_a_point_records_its_sizes_when_made_and_lists_them(runtime, backed_up):
    site = backed_up
    await change_everything(site)
    job_id = await restore(runtime)
    row = await runtime.pool.fetchrow(
        "SELECT details, disk_bytes, db_bytes FROM rollback_points WHERE job_id = $1", job_id
    )
    details = row["details"]
    trees = [Path(details[e]["rollback"]) for e in ("files", "code")]
    assert all(t.is_dir() for t in trees)
    # Measured when made: the kept trees' blocks on disk, the kept database's size.
    assert row["disk_bytes"] == sum(points.tree_bytes(t) for t in trees) > 0
    kept_db = details["database"]["rollback"]
    if site["dsn"].engine == "postgresql":
        assert row["db_bytes"] == await pg_database_size(site["dsn"], kept_db)
    else:
        assert kept_db in await _databases(site["dsn"])
        assert row["db_bytes"] > 0

    for scope in (None, "shop", "shop.dev"):
        [point] = await points.list_points(runtime.pool, scope)
        assert (point.job_id, point.target) == (job_id, "shop.dev")
        assert (point.disk_bytes, point.db_bytes) == (row["disk_bytes"], row["db_bytes"])
        assert point.public()["job_id"] == str(job_id)
    with pytest.raises(NotFound, match="nosuch"):
        await points.list_points(runtime.pool, "nosuch")
    with pytest.raises(NotFound, match=r"shop\.live"):
        await points.list_points(runtime.pool, "shop.live")

    # A point made before sizes were recorded is measured on its first listing.
    await runtime.pool.execute("UPDATE rollback_points SET disk_bytes = NULL, db_bytes = NULL")
    [point] = await points.list_points(runtime.pool, "shop.dev")
    assert (point.disk_bytes, point.db_bytes) == (row["disk_bytes"], row["db_bytes"])
    assert (
        await runtime.pool.fetchval("SELECT disk_bytes FROM rollback_points") == row["disk_bytes"]
    )


def test_the_cap_drops_the_oldest_first_and_keeps_the_newest():
    a, b, c, d = (uuid.uuid4() for _ in range(4))
    newest_first = [(a, 40), (b, 30), (c, 20), (d, 10)]
    assert points.over_cap(newest_first, 0) == []  # 0: no cap
    assert points.over_cap(newest_first, 100) == []
    assert points.over_cap(newest_first, 99) == [d]
    assert points.over_cap(newest_first, 70) == [c, d]
    assert points.over_cap(newest_first, 69) == [b, c, d]
    assert points.over_cap(newest_first, 1) == [b, c, d]  # the newest stays, alone over it
    assert points.over_cap([], 1) == []


@pytest.mark.parametrize("backed_up", ["mariadb"], indirect=True)
async def test_rollback_max_bytes_drops_the_oldest_points_through_expiry_jobs(runtime, backed_up):
    site = backed_up
    first = await restore(runtime)
    size = await runtime.pool.fetchval(
        "SELECT disk_bytes + db_bytes FROM rollback_points WHERE job_id = $1", first
    )
    first_details = await runtime.pool.fetchval(
        "SELECT details FROM rollback_points WHERE job_id = $1", first
    )
    # Room for one point and a half: the second restore pushes the first out.
    capped = dataclasses.replace(
        runtime, settings=runtime.settings.model_copy(update={"rollback_max_bytes": size * 3 // 2})
    )
    second = await restore(capped)
    assert len(await drive_drops(capped)) == 1
    assert await kept(runtime) == {first: "expired", second: "kept"}
    assert not Path(first_details["files"]["rollback"]).exists()
    assert first_details["database"]["rollback"] not in await _databases(site["dsn"])

    # Without a cap points pile up; a cap smaller than any one point keeps the newest only.
    third = await restore(runtime)
    assert await kept(runtime) == {first: "expired", second: "kept", third: "kept"}
    tiny = dataclasses.replace(
        runtime, settings=runtime.settings.model_copy(update={"rollback_max_bytes": 1})
    )
    fourth = await restore(tiny)
    await drive_drops(tiny)
    assert await kept(runtime) == {
        first: "expired",
        second: "expired",
        third: "expired",
        fourth: "kept",
    }
    assert [p.job_id for p in await points.list_points(runtime.pool, "shop.dev")] == [fourth]
    assert await change_nothing_lost(site)


async def change_nothing_lost(site) -> bool:
    """The live environment is the backup's content after all those drops."""
    from tests.support.content import snapshot

    return await snapshot(site["dsn"], site["files"], site["code"]) == site["before"]


@pytest.mark.parametrize("backed_up", ["postgresql"], indirect=True)
async def test_drop_frees_a_point_at_once_and_is_refused_while_a_job_waits(runtime, backed_up):
    site = backed_up
    job_id = await restore(runtime)
    details = await runtime.pool.fetchval(
        "SELECT details FROM rollback_points WHERE job_id = $1", job_id
    )
    busy = await submit_backup(runtime, "shop.dev")  # queued, not run yet
    with pytest.raises(Conflict, match=str(busy.job_id)):
        await points.check_droppable(runtime.pool, job_id)
    assert (await drive(runtime, busy.job_id))["status"] == "succeeded"

    environment = await points.check_droppable(runtime.pool, job_id)
    assert environment.target == "shop.dev"
    submitted = await points.submit_drop(producer(runtime), job_id, key=None)
    view = await drive(runtime, submitted.job_id)
    assert view["status"] == "succeeded"
    assert view["kind"] == "expire_rollback"
    assert await kept(runtime) == {job_id: "expired"}
    assert not Path(details["files"]["rollback"]).exists()
    assert not Path(details["code"]["rollback"]).exists()
    assert await pg_database_size_or_none(site["dsn"], details["database"]["rollback"]) is None
    assert await points.list_points(runtime.pool) == []

    with pytest.raises(Conflict, match="already expired"):
        await points.check_droppable(runtime.pool, job_id)
    with pytest.raises(NotFound, match="left no rollback point"):
        await points.check_droppable(runtime.pool, busy.job_id)
    with pytest.raises(NotFound, match="does not exist"):
        await points.check_droppable(runtime.pool, uuid.uuid4())


async def pg_database_size_or_none(dsn, name: str) -> int | None:
    import asyncpg

    conn = await asyncpg.connect(host=dsn.host, port=dsn.port, user=dsn.user, database="postgres")
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
    finally:
        await conn.close()
    return None if exists is None else await pg_database_size(dsn, name)


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ENVRESTORE, *args],
        env={**env, "COLUMNS": "80"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("backed_up", ["postgresql"], indirect=True)
async def test_rollback_list_and_drop_from_the_cli(runtime, backed_up, cli_env):
    job_id = await restore(runtime)
    shown = cli(cli_env, "rollback", "list", "shop.dev")
    assert shown.returncode == 0, shown.stderr
    assert str(job_id) in shown.stdout  # whole, at 80 columns
    assert max(len(line) for line in shown.stdout.splitlines()) <= 80
    [item] = json.loads(cli(cli_env, "rollback", "list", "--json").stdout)
    assert item["job_id"] == str(job_id) and item["target"] == "shop.dev"
    assert item["disk_bytes"] > 0 and item["db_bytes"] > 0
    assert set(item["elements"]) == {"database", "files", "code"}

    missing = cli(cli_env, "rollback", "list", "nosuch")
    assert missing.returncode == 3 and "nosuch" in missing.stderr
    unknown = cli(cli_env, "rollback", "drop", str(uuid.uuid4()), "--yes")
    assert unknown.returncode == 3 and "does not exist" in unknown.stderr
    # The spelling before the group existed, `rollback JOB`, is `rollback run JOB`.
    nothing = str(uuid.uuid4())
    for spelling in (("rollback", nothing), ("rollback", "run", nothing)):
        old = cli(cli_env, *spelling)
        assert old.returncode == 3 and f"job {nothing} does not exist" in old.stderr, old.stderr
    assert cli(cli_env, "rollback", "lst").returncode == 2  # a typo is not a job id
    unasked = cli(cli_env, "rollback", "drop", str(job_id))
    assert unasked.returncode == 2 and "--yes" in unasked.stderr
    assert await kept(runtime) == {job_id: "kept"}  # not confirmed: nothing queued

    queued = cli(cli_env, "rollback", "drop", str(job_id), "--yes", "--no-wait", "--json")
    assert queued.returncode == 0, queued.stderr
    drop_id = uuid.UUID(json.loads(queued.stdout)["id"])
    again = cli(cli_env, "rollback", "drop", str(job_id), "--yes")
    assert again.returncode == 4 and str(drop_id) in again.stderr  # it waits for the lease
    assert (await drive(runtime, drop_id))["status"] == "succeeded"
    assert await kept(runtime) == {job_id: "expired"}
    assert "no rollback points kept" in cli(cli_env, "rollback", "list").stdout


async def test_a_drop_waits_while_a_part_is_extracted_on_the_same_filesystem(
    runtime, backed_up, monkeypatch
):
    """Deleting a big tree beside an extraction makes ext4 create files 3x slower: the
    expiry's delete waits for the extraction (here: its lock, held by hand) to end."""
    import asyncio

    from envrestore.pipelines.restore import busyfs

    monkeypatch.setattr(busyfs, "POLL_SECONDS", 0.05)
    job_id = await restore(runtime, "files")
    details = await runtime.pool.fetchval(
        "SELECT details FROM rollback_points WHERE job_id = $1", job_id
    )
    kept_tree = Path(details["files"]["rollback"])
    submitted = await points.submit_drop(producer(runtime), job_id, key=None)
    with busyfs.extracting(runtime.settings.state_dir, kept_tree.parent / "staging"):
        drop = asyncio.create_task(drive(runtime, submitted.job_id))
        await asyncio.sleep(1.0)
        assert not drop.done()
        assert kept_tree.exists()  # not deleted beside the extraction
        assert await kept(runtime) == {job_id: "kept"}
    assert (await asyncio.wait_for(drop, 60))["status"] == "succeeded"
    assert not kept_tree.exists()
    assert await kept(runtime) == {job_id: "expired"}
