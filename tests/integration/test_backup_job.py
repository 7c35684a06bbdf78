"""A backup job, run through the ledger's step protocol against the real services.

Each part is checked as a user would: the dump loads with the engine's own
client into an empty database with the same rows; the files archive holds
`files_<env>/` with every file byte-identical; the code archive is a repo at
the same HEAD with the same tags.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from envrestore.pipelines import registry
from envrestore.pipelines.backup.service import latest_backup, list_backups
from envrestore.pipelines.dsn import Dsn
from envrestore.pipelines.engines import engine_for
from envrestore.pipelines.errors import BadInput, Conflict, NotFound, Unavailable
from envrestore.pipelines.registry import get_environment
from envrestore.pipelines.streams import gzip_decompress, run_consumer
from tests.support.driver import drive
from tests.support.producing import submit_backup
from tests.support.sites import git, make_files, make_repo, tags_of, tree_digest

pytestmark = pytest.mark.integration

MARIADB_CONTENT = """
CREATE TABLE wp_posts (ID BIGINT PRIMARY KEY AUTO_INCREMENT, post_title TEXT, post_content LONGTEXT);
INSERT INTO wp_posts (post_title, post_content)
  SELECT CONCAT('Post ', seq, ' ☃'), REPEAT('lorem ipsum ', 50) FROM seq_1_to_2000;
CREATE TABLE wp_options (option_name VARCHAR(191) PRIMARY KEY, option_value LONGTEXT);
INSERT INTO wp_options VALUES ('siteurl', 'https://example.test'), ('blogname', 'Démo');
"""

POSTGRES_CONTENT = """
CREATE TABLE node (nid serial PRIMARY KEY, title text NOT NULL, body text);
INSERT INTO node (title, body)
  SELECT 'Node ' || n || ' ☃', repeat('lorem ipsum ', 50) FROM generate_series(1, 2000) n;
CREATE TABLE variable (name text PRIMARY KEY, value bytea);
INSERT INTO variable VALUES ('site_name', 'Démo'::bytea), ('cron_last', NULL);
"""


async def fill(dsn: Dsn) -> dict[str, int]:
    engine = engine_for(dsn)
    if dsn.engine == "mariadb":
        await engine.query(dsn, MARIADB_CONTENT)  # type: ignore[attr-defined]
    else:
        conn = await engine.connect(dsn)  # type: ignore[attr-defined]
        try:
            await conn.execute(POSTGRES_CONTENT)
        finally:
            await conn.close()
    return await engine.list_tables(dsn)


@pytest.fixture(params=["mariadb", "postgresql"])
async def site_env(request, runtime, tmp_path, make_mariadb_db, make_postgres_db):
    """A registered environment `shop.dev` on the given engine, with real content."""
    dsn = make_mariadb_db() if request.param == "mariadb" else make_postgres_db()
    rows = await fill(dsn)
    files = make_files(tmp_path / "files")
    code = make_repo(tmp_path / "code")
    await registry.add_site(runtime.pool, "shop")
    await registry.add_environment(
        runtime.pool, "shop.dev", db=_dsn_text(dsn), files=files, code=code
    )
    return {"dsn": dsn, "rows": rows, "files": files, "code": code}


def _dsn_text(dsn: Dsn) -> str:
    scheme = "mariadb" if dsn.engine == "mariadb" else "postgresql"
    return f"{scheme}://{dsn.user}@{dsn.host}:{dsn.port}/{dsn.database}"


async def test_backup_parts_restore_to_the_same_content(
    runtime, site_env, tmp_path, make_mariadb_db, make_postgres_db
):
    submitted = await submit_backup(runtime, "shop.dev")
    view = await drive(runtime, submitted.job_id)
    assert view["status"] == "succeeded", view
    assert {s["name"]: s["status"] for s in view["steps"]} == {
        "dump_db": "done",
        "archive_files": "done",
        "archive_code": "done",
        "record_backup": "done",
        "discard_backup": "skipped",
    }

    [backup] = await list_backups(runtime.pool, "shop.dev")
    parts = {p["part"]: p for p in backup.parts}
    assert set(parts) == {"code", "database", "files"}
    stamp = backup.created_at.strftime("%Y-%m-%dT%H-%M-%S")
    for part, suffix in (
        ("code", "code.tar.gz"),
        ("database", "database.sql.gz"),
        ("files", "files.tar.gz"),
    ):
        assert parts[part]["key"] == (f"backups/shop/dev/{backup.id}/shop_dev_{stamp}_UTC_{suffix}")

    # Every part's bytes in S3 hash to what the ledger and the manifest say.
    manifest = json.loads(await runtime.store.get_bytes(backup.manifest_key, max_size=1 << 20))
    local: dict[str, Path] = {}
    for part, record in parts.items():
        target = tmp_path / f"{part}.gz"
        digest = hashlib.sha256()
        with target.open("wb") as fh:
            async for chunk in runtime.store.get_stream(record["key"]):
                digest.update(chunk)
                fh.write(chunk)
        assert digest.hexdigest() == record["sha256"] == manifest["parts"][part]["sha256"]
        assert target.stat().st_size == record["size"] == manifest["parts"][part]["size"]
        local[part] = target
    assert manifest["git_head"] == git(site_env["code"], "rev-parse", "HEAD")
    assert manifest["kind"] == "manual"

    # Database: loads with the engine's own client into an empty database, same rows.
    source: Dsn = site_env["dsn"]
    empty = make_mariadb_db() if source.engine == "mariadb" else make_postgres_db()
    engine = engine_for(empty)
    argv = engine.client_argv(empty) if empty.engine == "mariadb" else engine.psql_argv(empty)

    async def dump_chunks():
        with local["database"].open("rb") as fh:
            while chunk := fh.read(1 << 20):
                yield chunk

    await run_consumer(argv, gzip_decompress(dump_chunks(), max_output=1 << 30))
    assert await engine.list_tables(empty) == site_env["rows"]

    # Files: files_dev/ with every file byte-identical.
    out = tmp_path / "files_out"
    out.mkdir()
    with tarfile.open(local["files"], "r:gz") as tar:
        names = tar.getnames()
        tar.extractall(out, filter="tar")
    assert all(n == "files_dev" or n.startswith("files_dev/") for n in names)
    assert tree_digest(out / "files_dev") == tree_digest(site_env["files"])

    # Code: a repository at the same HEAD with the same tags.
    code_out = tmp_path / "code_out"
    code_out.mkdir()
    subprocess.run(["tar", "-xzf", str(local["code"]), "-C", str(code_out)], check=True)
    [top] = list(code_out.iterdir())
    assert git(top, "rev-parse", "HEAD") == git(site_env["code"], "rev-parse", "HEAD")
    assert tags_of(top) == tags_of(site_env["code"])
    assert git(top, "status", "--porcelain") == ""


@pytest.mark.parametrize("site_env", ["mariadb"], indirect=True)
async def test_same_idempotency_key_gives_one_job_and_another_request_conflicts(runtime, site_env):
    first = await submit_backup(runtime, "shop.dev", idempotency_key="click-1")
    second = await submit_backup(runtime, "shop.dev", idempotency_key="click-1")
    assert (first.created, second.created) == (True, False)
    assert second.job_id == first.job_id
    with pytest.raises(Conflict, match="click-1"):
        await submit_backup(
            runtime,
            "shop.dev",
            idempotency_key="click-1",
            keep_days=3,
        )
    await drive(runtime, first.job_id)
    assert len(await list_backups(runtime.pool, "shop.dev")) == 1


@pytest.mark.parametrize("site_env", ["postgresql"], indirect=True)
async def test_bad_environment_is_refused_before_any_job(runtime, site_env, tmp_path):
    with pytest.raises(NotFound, match=r"shop\.test"):
        await submit_backup(runtime, "shop.test")
    with pytest.raises(NotFound, match="nosuch"):
        await submit_backup(runtime, "nosuch.dev")

    dsn: Dsn = site_env["dsn"]
    await registry.add_environment(
        runtime.pool,
        "shop.dev",
        db=f"postgresql://postgres@127.0.0.1:1/{dsn.database}",
        files=site_env["files"],
        code=site_env["code"],
    )
    with pytest.raises(Unavailable):
        await submit_backup(runtime, "shop.dev")

    plain = tmp_path / "plain"
    plain.mkdir()
    await registry.add_environment(
        runtime.pool, "shop.dev", db=_dsn_text(dsn), files=site_env["files"], code=plain
    )
    with pytest.raises(BadInput, match="git"):
        await submit_backup(runtime, "shop.dev")
    rows = await runtime.pool.fetchval("SELECT count(*) FROM jobs")
    assert rows == 0


@pytest.mark.parametrize("site_env", ["mariadb"], indirect=True)
async def test_failed_backup_records_nothing_and_leaves_no_objects(runtime, site_env):
    """The database vanishes after queueing: the job fails, no backup, no orphans in S3."""
    submitted = await submit_backup(runtime, "shop.dev")
    dsn: Dsn = site_env["dsn"]
    await engine_for(dsn).query(  # type: ignore[attr-defined]
        dsn.with_database("mysql"), f"DROP DATABASE `{dsn.database}`"
    )
    view = await drive(runtime, submitted.job_id)
    assert view["status"] == "failed"
    assert view["error_step"] == "dump_db"
    assert dsn.database in view["error"]
    steps = {s["name"]: s["status"] for s in view["steps"]}
    assert steps["dump_db"] == "failed"
    assert steps["record_backup"] == "skipped"
    assert steps["discard_backup"] == "done"
    assert await list_backups(runtime.pool, "shop.dev") == []
    assert [o async for o in runtime.store.list("backups/")] == []


@pytest.mark.parametrize("site_env", ["mariadb"], indirect=True)
async def test_latest_is_the_backup_queued_last_even_within_one_second(runtime, site_env):
    """Backup times are whole seconds (Pantheon's names): "latest" must not be a coin
    flip between two backups made in the same second."""
    first = await submit_backup(runtime, "shop.dev")
    second = await submit_backup(runtime, "shop.dev")
    for job in (second, first):  # finished in the other order
        assert (await drive(runtime, job.job_id))["status"] == "succeeded"
    await runtime.pool.execute(
        "UPDATE backups SET created_at = date_trunc('second', now()) WHERE job_id = ANY($1)",
        [first.job_id, second.job_id],
    )
    listed = await list_backups(runtime.pool, "shop.dev")
    assert [b.job_id for b in listed] == [second.job_id, first.job_id]
    environment = await get_environment(runtime.pool, "shop.dev")
    assert (await latest_backup(runtime.pool, environment)).job_id == second.job_id


def test_gzip_module_reads_what_we_write(tmp_path):
    """Our gzip output is standard gzip (sanity for tools like gunzip)."""
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(b"abc"))
    assert gzip.decompress(path.read_bytes()) == b"abc"
