"""The orphan sweep and backups of some elements, against real SeaweedFS and PostgreSQL.

The sweep removes what a killed or cancelled backup left under `backups/`
with no ledger row, once old enough, and nothing else: not a young prefix,
not a recorded backup, not the parts of a backup job still running, not a
key outside `backups/<site>/<env>/<id>/`. It also aborts the unfinished
multipart uploads such a job left (which no listing of objects shows), and
removes import uploads under `staging/uploads/` that no unfinished job reads.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from envrestore.pipelines.backup.inspect import backup_of, download_part, read_manifest
from envrestore.pipelines.backup.lifecycle import find_orphans, sweep_leftovers, sweep_orphans
from envrestore.pipelines.backup.service import list_backups
from envrestore.pipelines.errors import Conflict, IntegrityError, NotFound
from envrestore.pipelines.jobs.runtime import Runtime
from envrestore.pipelines.requests import ImportRequest, PartInput
from tests.integration.test_backup_delete import drive_steps, keys_under, make_backup
from tests.support.driver import drive
from tests.support.producing import producer, submit_backup, submit_restore

pytestmark = pytest.mark.integration

DAY = timedelta(days=1)


@pytest.fixture
def engine() -> str:
    return "mariadb"


async def put(rt: Runtime, *keys: str) -> None:
    for key in keys:
        await rt.store.put_bytes(key, b"left behind " + key.encode())


async def test_sweep_removes_old_orphans_only(runtime, make_env):
    await make_env("shop.dev")
    live = await make_backup(runtime, "shop.dev")
    orphan = "20260101T000000Z-dead01"
    await put(
        runtime,
        f"backups/shop/dev/{orphan}/shop_dev_2026-01-01T00-00-00_UTC_database.sql.gz",
        f"backups/shop/dev/{orphan}/shop_dev_2026-01-01T00-00-00_UTC_files.tar.gz",
        "backups/stray-object",  # not shaped like a backup's key: never judged
        "staging/someone/archive.tar.gz",  # outside what the sweep judges
    )
    # A backup job that has written a part but not its row yet (record_backup is last).
    writing = await submit_backup(runtime, "shop.dev", elements=("database", "files"))
    await drive_steps(runtime, writing.job_id, {"dump_db"})
    [writing_id] = [
        r["params"]["backup_id"]
        for r in await runtime.pool.fetch("SELECT params FROM jobs WHERE id = $1", writing.job_id)
    ]
    assert await keys_under(runtime, f"backups/shop/dev/{writing_id}/")
    now = datetime.now(UTC)

    # Young: nothing is removed yet.
    assert await sweep_orphans(runtime.pool, runtime.store, now=now) == 0
    assert len(await keys_under(runtime, f"backups/shop/dev/{orphan}/")) == 2

    # A day later: the dry run names the orphan and removes nothing.
    later = now + DAY + timedelta(minutes=1)
    found = await find_orphans(runtime.pool, runtime.store, now=later, min_age=DAY)
    assert list(found) == [f"backups/shop/dev/{orphan}/"]
    assert await sweep_orphans(runtime.pool, runtime.store, now=later, dry_run=True) == 1
    assert len(await keys_under(runtime, f"backups/shop/dev/{orphan}/")) == 2

    assert await sweep_orphans(runtime.pool, runtime.store, now=later) == 1

    assert await keys_under(runtime, f"backups/shop/dev/{orphan}/") == []
    assert len(await keys_under(runtime, f"backups/shop/dev/{live}/")) == 4
    assert await keys_under(runtime, f"backups/shop/dev/{writing_id}/")
    assert await keys_under(runtime, "backups/stray-object") == ["backups/stray-object"]
    assert await keys_under(runtime, "staging/") == ["staging/someone/archive.tar.gz"]

    # The running backup finishes and is a backup like any other.
    view = await drive(runtime, writing.job_id)
    assert view["status"] == "succeeded", view
    assert await sweep_orphans(runtime.pool, runtime.store, now=later) == 0
    assert {b.id for b in await list_backups(runtime.pool, "shop.dev")} == {live, writing_id}


async def start_upload(rt: Runtime, key: str) -> str:
    """An unfinished multipart upload of `key` holding one part, as a killed job leaves it."""
    upload_id = await rt.store._create_multipart(key, None)
    await rt.store._upload_part(key, upload_id, 1, b"part of " + key.encode())
    return upload_id


async def pending(rt: Runtime, prefix: str) -> set[str]:
    return {u.key async for u in rt.store.list_pending_uploads(prefix)}


async def test_sweep_aborts_abandoned_backup_uploads_only(runtime, make_env):
    await make_env("shop.dev")
    live = await make_backup(runtime, "shop.dev")
    # A backup job that has dumped its database and is still running (files next).
    running = await submit_backup(runtime, "shop.dev")
    await drive_steps(runtime, running.job_id, {"dump_db"})
    status = "SELECT status, params FROM jobs WHERE id = $1"
    row = await runtime.pool.fetchrow(status, running.job_id)
    assert row["status"] == "running"
    writing_id = row["params"]["backup_id"]
    dead = "backups/shop/dev/20260101T000000Z-dead01/shop_database.sql.gz"
    leftover = f"backups/shop/dev/{live}/retry_leftover_files.tar.gz"  # a dead attempt's
    writing = f"backups/shop/dev/{writing_id}/shop_files.tar.gz"
    outside = ["backups/stray-upload", "staging/0123/database"]
    for key in [dead, leftover, writing, *outside]:
        await start_upload(runtime, key)
    await asyncio.sleep(4)
    young = "backups/shop/dev/20260101T000000Z-young1/shop_database.sql.gz"
    await start_upload(runtime, young)
    now = datetime.now(UTC)
    assert [k async for k in runtime.store.list("backups/shop/dev/20260101T")] == []

    dry = await sweep_leftovers(
        runtime.pool, runtime.store, now=now, min_age=timedelta(seconds=2), dry_run=True
    )
    assert sorted(u.key for u in dry.backup_uploads) == sorted([dead, leftover])
    assert dry.prefixes == {} and dry.upload_keys == [] and dry.upload_pending == []
    assert await pending(runtime, "backups/") == {dead, leftover, writing, young, outside[0]}

    swept = await sweep_leftovers(
        runtime.pool, runtime.store, now=now, min_age=timedelta(seconds=2)
    )

    assert sorted(u.key for u in swept.backup_uploads) == sorted([dead, leftover])
    assert await pending(runtime, "backups/") == {writing, young, outside[0]}
    assert await pending(runtime, "staging/") == {outside[1]}
    assert len(await keys_under(runtime, f"backups/shop/dev/{live}/")) == 4
    # The default minimum age (a day): nothing is old enough yet.
    assert await sweep_orphans(runtime.pool, runtime.store, now=now) == 0

    # Once the job is gone, what it left goes too, a day later.
    await runtime.pool.execute("UPDATE jobs SET status = 'cancelled' WHERE id = $1", running.job_id)
    later = now + DAY + timedelta(minutes=1)
    # Its prefix (the database part) and the two uploads.
    assert await sweep_orphans(runtime.pool, runtime.store, now=later) == 3
    assert await pending(runtime, "backups/") == {outside[0]}
    assert await keys_under(runtime, f"backups/shop/dev/{writing_id}/") == []


async def test_sweep_removes_import_uploads_no_unfinished_job_reads(runtime, make_env):
    await make_env("shop.dev")
    unused = "staging/uploads/" + "ab" * 16 + "/never_imported.sql.gz"
    read = "staging/uploads/" + "cd" * 16 + "/shop.sql.gz"
    interrupted = "staging/uploads/" + "ef" * 16 + "/big_files.tar.gz"
    download = "staging/00000000-0000-0000-0000-000000000000/database"
    await put(runtime, unused, read, download)
    await start_upload(runtime, interrupted)
    info = await runtime.store.head(read)
    assert info is not None
    part = PartInput("database", upload_key=read, size=info.size, sha256="0" * 64)
    job = await producer(runtime).submit(ImportRequest("shop.dev", (part,)))
    now = datetime.now(UTC)

    assert await sweep_orphans(runtime.pool, runtime.store, now=now) == 0  # all young
    later = now + DAY + timedelta(minutes=1)
    dry = await sweep_leftovers(runtime.pool, runtime.store, now=later, dry_run=True)
    assert dry.upload_keys == [unused]
    assert [u.key for u in dry.upload_pending] == [interrupted]
    assert await keys_under(runtime, "staging/uploads/") == sorted([unused, read])

    swept = await sweep_leftovers(runtime.pool, runtime.store, now=later)

    assert (swept.upload_keys, [u.key for u in swept.upload_pending]) == ([unused], [interrupted])
    assert await keys_under(runtime, "staging/") == sorted([read, download])
    assert await pending(runtime, "staging/") == set()
    assert (await runtime.pool.fetchval("SELECT status FROM jobs WHERE id = $1", job.job_id)) == (
        "queued"
    )
    # The import ends: what it read is nobody's now and goes with the next sweep.
    await runtime.pool.execute("UPDATE jobs SET status = 'failed' WHERE id = $1", job.job_id)
    assert await sweep_orphans(runtime.pool, runtime.store, now=later) == 1
    assert await keys_under(runtime, "staging/") == [download]


async def test_a_database_only_backup_holds_only_its_database(runtime, make_env, tmp_path):
    env = await make_env("shop.dev")
    backup_id = await make_backup(runtime, "shop.dev", elements=("database",))

    [record] = await list_backups(runtime.pool, "shop.dev")
    assert record.id == backup_id
    assert record.elements == ["database"]
    keys = await keys_under(runtime, f"backups/shop/dev/{backup_id}/")
    assert sorted(k.rsplit("/", 1)[-1].rsplit("_", 1)[-1] for k in keys) == [
        "database.sql.gz",
        "manifest.json",
    ]
    manifest = json.loads(await runtime.store.get_bytes(record.manifest_key, max_size=1 << 20))
    assert manifest["elements"] == ["database"]
    assert set(manifest["parts"]) == {"database"}
    assert manifest["engine"] == env.engine and manifest["git_head"] is None

    # Restoring what it does not hold is refused before any job, naming what it holds.
    with pytest.raises(NotFound, match=r"has no files, code part \(it holds database\)"):
        await submit_restore(runtime, "shop.dev", backup=backup_id)
    restored = await submit_restore(runtime, "shop.dev", backup=backup_id, element="database")
    view = await drive(runtime, restored.job_id)
    assert view["status"] == "succeeded", view

    # `backup get` of a part it lacks says so.
    backup = await backup_of(runtime.pool, "shop.dev", backup_id)
    manifest = await read_manifest(runtime.store, backup)
    with pytest.raises(NotFound, match="no code part"):
        await download_part(runtime.store, backup, manifest, "code", tmp_path / "code.tar.gz")


async def test_get_writes_a_checked_part_and_leaves_nothing_on_a_mismatch(
    runtime, make_env, tmp_path
):
    await make_env("shop.dev")
    backup_id = await make_backup(runtime, "shop.dev")
    backup = await backup_of(runtime.pool, "shop.dev", backup_id)
    manifest = await read_manifest(runtime.store, backup)
    seen: list[tuple[int, int]] = []

    got = await download_part(
        runtime.store,
        backup,
        manifest,
        "files",
        tmp_path / "files.tar.gz",
        on_progress=lambda done, total: seen.append((done, total)),
    )
    part: dict[str, Any] = manifest["parts"]["files"]
    assert got.size == part["size"] == (tmp_path / "files.tar.gz").stat().st_size
    assert seen[-1] == (part["size"], part["size"])
    with pytest.raises(Conflict, match="exists"):
        await download_part(runtime.store, backup, manifest, "files", tmp_path / "files.tar.gz")

    # The object is replaced behind the ledger's back: the download is refused, no file stays.
    await runtime.store.put_bytes(part["key"], b"not the backup")
    with pytest.raises(IntegrityError, match="manifest says"):
        await download_part(runtime.store, backup, manifest, "files", tmp_path / "other.tar.gz")
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["files.tar.gz"]
