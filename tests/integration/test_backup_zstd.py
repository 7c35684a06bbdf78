"""`backup_compression = "zstd"`: new backups write `.zst` parts, and restores read them.

Checked as a user would: the part names say `.zst`, the objects are zstd frames
that the `zstd` codec reads back, and a restore from the backup brings back
every table, row, file and commit after the environment was changed.
"""

from __future__ import annotations

import dataclasses

import pytest
import zstandard

from envrestore.pipelines import registry
from envrestore.pipelines.backup.service import list_backups
from tests.integration.test_backup_job import _dsn_text, fill
from tests.integration.test_restore_job import change_everything
from tests.support.content import snapshot
from tests.support.driver import drive
from tests.support.producing import submit_backup, submit_restore
from tests.support.sites import make_files, make_repo

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("engine", ["mariadb", "postgresql"])
async def test_a_zstd_backup_has_zst_parts_and_restores_the_same_content(
    engine, runtime, tmp_path, make_mariadb_db, make_postgres_db
):
    settings = runtime.settings.model_copy(update={"backup_compression": "zstd"})
    rt = dataclasses.replace(runtime, settings=settings)
    dsn = make_mariadb_db() if engine == "mariadb" else make_postgres_db()
    await fill(dsn)
    files = make_files(tmp_path / "site" / "files")
    code = make_repo(tmp_path / "site" / "code")
    await registry.add_site(rt.pool, "shop")
    await registry.add_environment(rt.pool, "shop.dev", db=_dsn_text(dsn), files=files, code=code)
    site = {"dsn": dsn, "files": files, "code": code}
    before = await snapshot(dsn, files, code)

    job = await submit_backup(rt, "shop.dev")
    assert (await drive(rt, job.job_id))["status"] == "succeeded"
    [backup] = await list_backups(rt.pool, "shop.dev")
    keys = {p["part"]: p["key"] for p in backup.parts}
    assert keys["database"].endswith("_UTC_database.sql.zst")
    assert keys["files"].endswith("_UTC_files.tar.zst")
    assert keys["code"].endswith("_UTC_code.tar.gz")  # small: stays gzip
    dump = await rt.store.get_bytes(keys["database"], max_size=64 << 20)
    plain = zstandard.ZstdDecompressor().decompressobj().decompress(dump)
    assert b"CREATE TABLE" in plain

    await change_everything(site)
    assert await snapshot(dsn, files, code) != before
    restore = await submit_restore(rt, "shop.dev", backup=backup.id)
    view = await drive(rt, restore.job_id)
    assert view["status"] == "succeeded", view
    assert await snapshot(dsn, files, code) == before
