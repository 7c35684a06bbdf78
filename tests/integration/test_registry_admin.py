"""Changing the registry on the real ledger: list, remove, set; refusals while jobs run.

Removing forgets rows only: the directories (and databases) stay on disk.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from pathlib import Path

import pytest

from envrestore.pipelines import registry, registry_admin
from envrestore.pipelines.errors import BadInput, Conflict, NotFound
from envrestore.pipelines.jobs.outbox import relay_once
from envrestore.pipelines.jobs.runner import run_step
from tests.integration import test_restore_job as restores
from tests.support.driver import drive
from tests.support.producing import submit_backup, submit_restore
from tests.support.sites import make_files, make_repo

pytestmark = pytest.mark.integration

backed_up = restores.backed_up
DB = "mariadb://root@127.0.0.1:3306/shop_{env}"


async def add(runtime, tmp_path: Path, target: str, **fields) -> registry.Environment:
    root = tmp_path / target
    files = make_files(root / "files")
    code = make_repo(root / "code", commits=1)
    site, env = target.split(".")
    await registry.add_site(runtime.pool, site)
    environment, _ = await registry.add_environment(
        runtime.pool, target, db=DB.format(env=env), files=files, code=code, **fields
    )
    return environment


async def test_sites_are_listed_and_removed_without_touching_disk(runtime, tmp_path):
    dev = await add(runtime, tmp_path, "shop.dev")
    live = await add(runtime, tmp_path, "shop.live")
    await registry.add_site(runtime.pool, "blog")
    sites = {s.name: s.envs for s in await registry_admin.list_sites(runtime.pool)}
    assert sites == {"blog": (), "shop": ("dev", "live")}

    with pytest.raises(
        Conflict, match=r"still has environments \(shop\.dev, shop\.live\).*--cascade"
    ):
        await registry_admin.remove_site(runtime.pool, "shop", cascade=False)
    removed = await registry_admin.remove_environment(runtime.pool, "shop.live")
    assert removed.target == "shop.live"
    assert [e.target for e in await registry.list_environments(runtime.pool)] == ["shop.dev"]
    assert [
        e.target for e in await registry_admin.remove_site(runtime.pool, "shop", cascade=True)
    ] == ["shop.dev"]
    assert [s.name for s in await registry_admin.list_sites(runtime.pool)] == ["blog"]
    for environment in (dev, live):  # forgotten, not deleted
        assert (environment.files_dir / "2026" / "11" / "notes.txt").is_file()
        assert (environment.code_dir / ".git").is_dir()
    assert await registry_admin.remove_site(runtime.pool, "blog", cascade=False) == []
    with pytest.raises(NotFound, match="blog"):
        await registry_admin.remove_site(runtime.pool, "blog", cascade=False)
    with pytest.raises(NotFound, match="not registered"):
        await registry_admin.remove_environment(runtime.pool, "shop.dev")


async def test_set_changes_only_the_given_fields(runtime, tmp_path):
    dev = await add(runtime, tmp_path, "shop.dev", url="https://dev.shop.example")
    live = await add(runtime, tmp_path, "shop.live")
    changed, fields = await registry_admin.set_environment(
        runtime.pool, "shop.dev", url="https://new.shop.example/", protected=True
    )
    assert fields == ["url", "protected"]
    assert (changed.url, changed.protected) == ("https://new.shop.example", True)
    assert (changed.db_dsn, changed.files_dir, changed.code_dir) == (
        dev.db_dsn,
        dev.files_dir,
        dev.code_dir,
    )
    moved = make_files(tmp_path / "moved" / "files")
    changed, fields = await registry_admin.set_environment(
        runtime.pool, "shop.dev", files=moved, db="mariadb://root@127.0.0.1:3306/other"
    )
    assert fields == ["db", "files"]
    assert (changed.files_dir, changed.dsn.database, changed.url) == (
        moved,
        "other",
        "https://new.shop.example",
    )
    assert changed.code_dir == dev.code_dir and changed.protected

    with pytest.raises(BadInput, match="nothing to change"):
        await registry_admin.set_environment(runtime.pool, "shop.dev")
    with pytest.raises(BadInput, match="is inside the code directory"):
        await registry_admin.set_environment(runtime.pool, "shop.dev", files=dev.code_dir / "x")
    with pytest.raises(Conflict, match=r"is the files directory of shop\.live"):
        await registry_admin.set_environment(runtime.pool, "shop.dev", files=live.files_dir)
    with pytest.raises(BadInput, match="system directory"):
        await registry_admin.set_environment(runtime.pool, "shop.dev", code=Path("/usr/src"))
    with pytest.raises(BadInput, match="state directory"):
        await registry_admin.set_environment(
            runtime.pool, "shop.dev", files=tmp_path / "state" / "f", state_dir=tmp_path / "state"
        )
    with pytest.raises(NotFound, match=r"shop\.test"):
        await registry_admin.set_environment(runtime.pool, "shop.test", protected=False)
    # Nothing refused was written.
    assert (await registry.get_environment(runtime.pool, "shop.dev")).files_dir == moved


async def test_env_add_refuses_another_environments_directories(runtime, tmp_path):
    dev = await add(runtime, tmp_path, "shop.dev")
    with pytest.raises(Conflict, match=r"contains the files directory of shop\.dev"):
        await registry.add_environment(
            runtime.pool,
            "shop.live",
            db=DB.format(env="live"),
            files=dev.files_dir.parent,
            code=make_repo(tmp_path / "live-code", commits=1),
        )
    # Registering dev again with its own directories still updates it.
    again, created = await registry.add_environment(
        runtime.pool,
        "shop.dev",
        db=dev.db_dsn,
        files=dev.files_dir,
        code=dev.code_dir,
        url="https://d.example",
    )
    assert (created, again.url) == (False, "https://d.example")


@pytest.mark.parametrize("backed_up", ["mariadb"], indirect=True)
async def test_changes_are_refused_while_a_job_waits_backups_or_points_are_kept(runtime, backed_up):
    site = backed_up
    job = await submit_backup(runtime, "shop.dev")  # queued: it waits for the lease
    who = re.escape(f"job {job.job_id} (backup) is queued for it")
    for change in (
        registry_admin.set_environment(runtime.pool, "shop.dev", url="https://x.example"),
        registry_admin.remove_environment(runtime.pool, "shop.dev"),
        registry_admin.remove_site(runtime.pool, "shop", cascade=True),
        registry.add_environment(
            runtime.pool,
            "shop.dev",
            db=restores._dsn_text(site["dsn"]),
            files=site["files"],
            code=site["code"],
        ),
    ):
        with pytest.raises(Conflict, match=who):
            await change
    assert (await drive(runtime, job.job_id))["status"] == "succeeded"

    # Idle now, but the ledger holds its backups: removing would orphan them.
    with pytest.raises(Conflict, match=r"holds 2 backup\(s\).*backup delete"):
        await registry_admin.remove_environment(runtime.pool, "shop.dev")
    restore = await submit_restore(runtime, "shop.dev", element="files")
    assert (await drive(runtime, restore.job_id))["status"] == "succeeded"
    # A kept rollback point names the old directories: no move until it is dropped.
    with pytest.raises(Conflict, match=re.escape(f"envrestore rollback drop {restore.job_id}")):
        await registry_admin.set_environment(
            runtime.pool, "shop.dev", files=make_files(site["files"].parent.parent / "elsewhere")
        )
    changed, _ = await registry_admin.set_environment(runtime.pool, "shop.dev", protected=True)
    assert changed.protected and changed.files_dir == site["files"]


@pytest.mark.parametrize("backed_up", ["postgresql"], indirect=True)
async def test_changes_are_refused_while_a_running_job_holds_the_lease(runtime, backed_up):
    job = await submit_backup(runtime, "shop.dev")
    sent: list[tuple[uuid.UUID, str]] = []
    await relay_once(runtime.pool, lambda j, s: sent.append((j, s)))
    first_job, first_step = next((j, s) for j, s in sent if j == job.job_id)
    await run_step(runtime, first_job, first_step)  # one step done, the others pending
    lease = await runtime.pool.fetchval(
        "SELECT l.job_id FROM env_leases l JOIN environments e ON e.id = l.environment_id "
        "WHERE e.name = 'dev'"
    )
    assert lease == job.job_id
    holds = re.escape(f"job {job.job_id} (backup) holds the lease on it")
    with pytest.raises(Conflict, match=holds):
        await registry_admin.set_environment(runtime.pool, "shop.dev", protected=True)
    with pytest.raises(Conflict, match=holds):
        await registry_admin.remove_site(runtime.pool, "shop", cascade=True)
    for other_job, other_step in sent:  # deliver what was relayed but not run yet
        if (other_job, other_step) != (first_job, first_step):
            await run_step(runtime, other_job, other_step)
    assert (await drive(runtime, job.job_id))["status"] == "succeeded"
    changed, _ = await registry_admin.set_environment(runtime.pool, "shop.dev", protected=True)
    assert changed.protected


async def test_two_concurrent_adds_cannot_register_the_same_directories(
    runtime, tmp_path, monkeypatch
):
    import asyncio

    await registry.add_site(runtime.pool, "shop")
    files = make_files(tmp_path / "shared" / "files")
    code = make_repo(tmp_path / "shared" / "code", commits=1)
    real_check = registry.check_paths_in_ledger
    checked: list[str] = []
    both_checked = asyncio.Event()

    async def check_then_linger(conn, target, *args, **kwargs):
        # Each add holds its transaction open after its check, for the other's to overlap.
        await real_check(conn, target, *args, **kwargs)
        checked.append(target)
        if len(checked) == 2:
            both_checked.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(both_checked.wait(), 1.5)

    monkeypatch.setattr(registry, "check_paths_in_ledger", check_then_linger)
    results = await asyncio.gather(
        *(
            registry.add_environment(
                runtime.pool, target, db=DB.format(env=target[5:]), files=files, code=code
            )
            for target in ("shop.dev", "shop.test")
        ),
        return_exceptions=True,
    )
    refused = [r for r in results if isinstance(r, Conflict)]
    assert len(refused) == 1, results
    assert "files directory of shop." in refused[0].message
    assert len(await registry.list_environments(runtime.pool)) == 1
