"""Restores run through the step protocol on real services (in-process delivery).

Content is compared as a user would: tables and rows, every file's sha256,
git HEAD and tags. A restore that fails leaves the environment exactly as it
was; a rollback brings back exactly what the restore replaced.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile

import pytest

from pipelines import registry
from pipelines.backup.service import create_backup, list_backups
from pipelines.dsn import Dsn
from pipelines.engines import engine_for
from pipelines.errors import Conflict, NotFound, Refused
from pipelines.jobs.cancel import cancel_job
from pipelines.jobs.outbox import relay_once
from pipelines.jobs.runner import run_step
from pipelines.jobs.views import show_job
from pipelines.restore.service import create_restore, create_rollback
from tests.integration.test_backup_job import _dsn_text, fill
from tests.support.content import snapshot
from tests.support.driver import drive
from tests.support.sites import git, make_files, make_repo

pytestmark = pytest.mark.integration


@pytest.fixture(params=["mariadb", "postgresql"])
async def backed_up(request, runtime, tmp_path, make_mariadb_db, make_postgres_db):
    """shop.dev with content and one backup of it; returns paths and the snapshot."""
    dsn = make_mariadb_db() if request.param == "mariadb" else make_postgres_db()
    await fill(dsn)
    files = make_files(tmp_path / "site" / "files")
    code = make_repo(tmp_path / "site" / "code")
    await registry.add_site(runtime.pool, "shop")
    await registry.add_environment(
        runtime.pool, "shop.dev", db=_dsn_text(dsn), files=files, code=code
    )
    job = await create_backup(runtime.pool, runtime.settings, runtime.store, "shop.dev")
    assert (await drive(runtime, job.job_id))["status"] == "succeeded"
    [backup] = await list_backups(runtime.pool, "shop.dev")
    return {
        "dsn": dsn,
        "files": files,
        "code": code,
        "backup": backup,
        "before": await snapshot(dsn, files, code),
    }


async def change_everything(site) -> None:
    dsn: Dsn = site["dsn"]
    engine = engine_for(dsn)
    if dsn.engine == "mariadb":
        await engine.query(
            dsn,
            "DELETE FROM wp_posts WHERE ID % 2 = 0; "  # type: ignore[attr-defined]
            "UPDATE wp_options SET option_value = 'changed'; CREATE TABLE extra (i INT);",
        )
    else:
        conn = await engine.connect(dsn)  # type: ignore[attr-defined]
        try:
            await conn.execute(
                "DELETE FROM node WHERE nid % 2 = 0; UPDATE variable SET value = "
                "'changed'; CREATE TABLE extra (i int);"
            )
        finally:
            await conn.close()
    (site["files"] / "new-upload.jpg").write_bytes(os.urandom(1000))
    (site["files"] / "2026" / "11" / "notes.txt").write_text("edited\n")
    (site["code"] / "index.php").write_text("<?php // hotfix\n")
    git(site["code"], "commit", "-qam", "hotfix")
    git(site["code"], "tag", "-a", "v9.9", "-m", "later")


async def test_restore_brings_back_the_backup_and_rollback_undoes_it(runtime, backed_up):
    site = backed_up
    await change_everything(site)
    changed = await snapshot(site["dsn"], site["files"], site["code"])
    assert changed != site["before"]

    job = await create_restore(runtime.pool, runtime.settings, "shop.dev", backup=site["backup"].id)
    view = await drive(runtime, job.job_id)
    assert view["status"] == "succeeded", view
    after = await snapshot(site["dsn"], site["files"], site["code"])
    assert after == site["before"]
    assert isinstance(view["outputs"]["switch_window_seconds"], float)
    assert view["outputs"]["tables"] == site["before"].tables
    # The newer commit stays reachable in the restored repository.
    preserved = git(site["code"], "for-each-ref", "--format=%(objectname)", "refs/envrestore/")
    assert changed.head in preserved.split()

    rollback = await create_rollback(runtime.pool, runtime.settings, job.job_id)
    assert (await drive(runtime, rollback.job_id))["status"] == "succeeded"
    assert await snapshot(site["dsn"], site["files"], site["code"]) == changed
    with pytest.raises(Conflict, match="rolled_back"):
        await create_rollback(runtime.pool, runtime.settings, job.job_id)


@pytest.mark.parametrize("backed_up", ["postgresql"], indirect=True)
async def test_one_element_only(runtime, backed_up):
    site = backed_up
    await change_everything(site)
    changed = await snapshot(site["dsn"], site["files"], site["code"])
    job = await create_restore(runtime.pool, runtime.settings, "shop.dev", element="files")
    view = await drive(runtime, job.job_id)
    assert view["status"] == "succeeded"
    assert "import_db" not in {s["name"] for s in view["steps"]}
    after = await snapshot(site["dsn"], site["files"], site["code"])
    assert after.files == site["before"].files
    assert (after.rows, after.head) == (changed.rows, changed.head)


async def _rewrite_part(runtime, backup, part: str, data: bytes) -> None:
    record = {p["part"]: p for p in backup.parts}[part]

    async def chunks():
        yield data

    await runtime.store.put_stream(record["key"], chunks())


async def _part_bytes(runtime, backup, part: str) -> bytes:
    record = {p["part"]: p for p in backup.parts}[part]
    return await runtime.store.get_bytes(record["key"], max_size=1 << 30)


@pytest.mark.parametrize("backed_up", ["mariadb"], indirect=True)
@pytest.mark.parametrize(
    ("part", "damage", "expected"),
    [
        ("database", "flip", "database part"),
        ("files", "flip", "files part"),
        ("database", "truncate", "database part"),
        ("code", "truncate", "code part"),
    ],
)
async def test_damaged_part_fails_and_leaves_the_environment_untouched(
    runtime, backed_up, part, damage, expected
):
    site = backed_up
    await change_everything(site)
    changed = await snapshot(site["dsn"], site["files"], site["code"])
    data = bytearray(await _part_bytes(runtime, site["backup"], part))
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        data = data[: len(data) // 2]
    await _rewrite_part(runtime, site["backup"], part, bytes(data))
    job = await create_restore(runtime.pool, runtime.settings, "shop.dev")
    view = await drive(runtime, job.job_id)
    assert view["status"] == "failed"
    assert expected in view["error"]
    steps = {s["name"]: s["status"] for s in view["steps"]}
    assert steps["switch"] == "skipped" and steps["abandon_restore"] == "done"
    assert await snapshot(site["dsn"], site["files"], site["code"]) == changed
    leftovers = [p.name for p in site["files"].parent.iterdir() if "envrestore" in p.name]
    assert leftovers == []


def _tar_gz(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return gzip.compress(raw.getvalue())


def _member(name: str, data: bytes | None = b"x", **kw) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    for k, v in kw.items():
        setattr(info, k, v)
    if data is not None and info.type == tarfile.REGTYPE:
        info.size = len(data)
    return info, data if info.type == tarfile.REGTYPE else None


UNSAFE_FILES = {
    "absolute path": [_member("/etc/evil")],
    "dot-dot": [_member("files_dev/../../evil")],
    "symlink outside": [_member("files_dev/l", None, type=tarfile.SYMTYPE, linkname="/etc")],
    "device": [_member("files_dev/d", None, type=tarfile.CHRTYPE, devmajor=1, devminor=3)],
    "fifo": [_member("files_dev/f", None, type=tarfile.FIFOTYPE)],
}

UNSAFE_DUMPS = {
    "mariadb": [
        b"CREATE TABLE t (i INT);\n\\! touch /tmp/pwned\n",
        b"CREATE TABLE t (i INT);\nSELECT * INTO OUTFILE '/tmp/x' FROM t;\n",
        b"GRANT ALL ON *.* TO 'x'@'%';\n",
        b"USE mysql;\nDROP TABLE user;\n",
    ],
}


@pytest.mark.parametrize("backed_up", ["mariadb"], indirect=True)
@pytest.mark.parametrize("kind", sorted(UNSAFE_FILES))
async def test_unsafe_files_archive_is_refused(runtime, backed_up, kind, tmp_path):
    site = backed_up
    data = _tar_gz(
        [(tarfile.TarInfo("files_dev"), None), *UNSAFE_FILES[kind]]
        if kind != "absolute path"
        else UNSAFE_FILES[kind]
    )
    await _forge_part(runtime, site["backup"], "files", data)
    changed = await snapshot(site["dsn"], site["files"], site["code"])
    job = await create_restore(runtime.pool, runtime.settings, "shop.dev")
    view = await drive(runtime, job.job_id)
    assert view["status"] == "failed"
    assert "files part" in view["error"]
    assert await snapshot(site["dsn"], site["files"], site["code"]) == changed
    assert not (tmp_path / "evil").exists()


@pytest.mark.parametrize("backed_up", ["mariadb"], indirect=True)
@pytest.mark.parametrize("dump", range(4))
async def test_unsafe_dump_is_refused_with_the_line(runtime, backed_up, dump):
    site = backed_up
    await _forge_part(
        runtime, site["backup"], "database", gzip.compress(UNSAFE_DUMPS["mariadb"][dump])
    )
    changed = await snapshot(site["dsn"], site["files"], site["code"])
    job = await create_restore(runtime.pool, runtime.settings, "shop.dev")
    view = await drive(runtime, job.job_id)
    assert view["status"] == "failed"
    assert "database part" in view["error"] and "line" in view["error"]
    assert await snapshot(site["dsn"], site["files"], site["code"]) == changed


async def _forge_part(runtime, backup, part: str, data: bytes) -> None:
    """Replace a part and make the ledger and manifest agree (an attacker with write access)."""
    import hashlib
    import json

    await _rewrite_part(runtime, backup, part, data)
    digest = hashlib.sha256(data).hexdigest()
    await runtime.pool.execute(
        "UPDATE backup_parts SET size = $3, sha256 = $4 WHERE backup_id = $1 AND part = $2",
        backup.id,
        part,
        len(data),
        digest,
    )
    manifest = json.loads(await runtime.store.get_bytes(backup.manifest_key, max_size=1 << 20))
    manifest["parts"][part].update(size=len(data), sha256=digest)
    await runtime.store.put_bytes(backup.manifest_key, json.dumps(manifest).encode())


@pytest.mark.parametrize("backed_up", ["postgresql"], indirect=True)
async def test_protected_environment_is_refused_unless_forced(runtime, backed_up):
    await registry.add_environment(
        runtime.pool,
        "shop.dev",
        db=_dsn_text(backed_up["dsn"]),
        files=backed_up["files"],
        code=backed_up["code"],
        protected=True,
    )
    with pytest.raises(Refused, match="clone the content"):
        await create_restore(runtime.pool, runtime.settings, "shop.dev")
    job = await create_restore(runtime.pool, runtime.settings, "shop.dev", force_live=True)
    assert (await drive(runtime, job.job_id))["status"] == "succeeded"


@pytest.mark.parametrize("backed_up", ["postgresql"], indirect=True)
async def test_cancel_before_switch_leaves_env_untouched_and_after_is_refused(runtime, backed_up):
    site = backed_up
    await change_everything(site)
    changed = await snapshot(site["dsn"], site["files"], site["code"])
    job = await create_restore(runtime.pool, runtime.settings, "shop.dev")
    sent: list = []
    await relay_once(runtime.pool, lambda j, s: sent.append((j, s)))
    await run_step(runtime, job.job_id, "resolve")
    await cancel_job(runtime.pool, job.job_id, runtime.kinds)
    view = await drive(runtime, job.job_id)
    assert view["status"] == "cancelled"
    assert await snapshot(site["dsn"], site["files"], site["code"]) == changed

    second = await create_restore(runtime.pool, runtime.settings, "shop.dev")
    view = await drive(runtime, second.job_id)
    assert view["status"] == "succeeded"
    with pytest.raises(Conflict, match="already succeeded"):
        await cancel_job(runtime.pool, second.job_id, runtime.kinds)


@pytest.mark.parametrize("backed_up", ["postgresql"], indirect=True)
async def test_missing_backup_and_env_are_clear_errors(runtime, backed_up):
    with pytest.raises(NotFound, match="nope"):
        await create_restore(runtime.pool, runtime.settings, "shop.dev", backup="nope")
    with pytest.raises(NotFound, match=r"shop\.test"):
        await create_restore(runtime.pool, runtime.settings, "shop.test")
    job = await show_job(
        runtime.pool,
        (
            await create_restore(runtime.pool, runtime.settings, "shop.dev", idempotency_key="r1")
        ).job_id,
    )
    assert job["kind"] == "restore"
