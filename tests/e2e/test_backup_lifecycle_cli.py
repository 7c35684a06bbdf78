"""A backup's life by hand, as an operator runs it: show, get, delete, expiry, with real workers.

Checked as a user would: every downloaded part hashes to the manifest's
sha256; after a delete or an expiry no object of the backup is left in S3;
a backup that a running restore reads outlives its expiry until the restore
ends.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from envrestore.pipelines.backup.lifecycle import expire_backups
from envrestore.pipelines.jobs.principal import Principal
from envrestore.pipelines.ledger.connection import create_pool
from envrestore.pipelines.objectstore import open_object_store
from envrestore.pipelines.producer import Producer
from tests.e2e.test_backup_cli import s3_client
from tests.support.workers import run_cli, run_json, wait_for

pytestmark = pytest.mark.e2e


def s3_keys(env: dict[str, str], prefix: str) -> list[str]:
    listed = s3_client(env).list_objects_v2(Bucket=env["ENVRESTORE_S3_BUCKET"], Prefix=prefix)
    return [o["Key"] for o in listed.get("Contents", [])]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.mark.parametrize("site", ["postgresql"], indirect=True)
def test_show_get_and_delete_a_backup(cli_env, worker_pool, site, tmp_path):
    [backup] = run_json(cli_env, "backup", "list", "shop.dev")
    backup_id = backup["id"]
    shown = run_json(cli_env, "backup", "show", "shop.dev", backup_id)
    manifest = shown["manifest"]
    assert shown["elements"] == ["database", "files", "code"]
    assert shown["job"]["kind"] == "backup" and shown["job"]["status"] == "succeeded"
    assert shown["expires_at"] == manifest["expires_at"]
    assert {p["part"]: p["sha256"] for p in shown["parts"]} == {
        part: entry["sha256"] for part, entry in manifest["parts"].items()
    }
    table = run_cli({**cli_env, "COLUMNS": "80"}, "backup", "show", "shop.dev", backup_id)
    assert table.returncode == 0, table.stderr
    assert backup_id in table.stdout
    for part in manifest["parts"].values():
        assert part["sha256"] in table.stdout  # whole, even at 80 columns

    # Every part downloads, streamed, and hashes to the manifest's sha256.
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    for part, entry in manifest["parts"].items():
        got = run_cli(
            cli_env, "backup", "get", "shop.dev", backup_id, "--part", part, "--to", str(downloads)
        )
        assert got.returncode == 0, got.stderr
        path = downloads / entry["key"].rsplit("/", 1)[-1]
        assert sha256_of(path) == entry["sha256"]
        assert path.stat().st_size == entry["size"]
    # An existing file is not overwritten unasked.
    database = downloads / manifest["parts"]["database"]["key"].rsplit("/", 1)[-1]
    again = run_cli(
        cli_env, "backup", "get", "shop.dev", backup_id, "--part", "database", "--to", str(database)
    )
    assert again.returncode == 4 and "--force" in again.stderr, again.stderr
    assert sha256_of(database) == manifest["parts"]["database"]["sha256"]

    # A part changed in S3 behind the ledger's back: refused, and no file is left.
    s3_client(cli_env).put_object(
        Bucket=cli_env["ENVRESTORE_S3_BUCKET"],
        Key=manifest["parts"]["files"]["key"],
        Body=b"tampered",
    )
    bad = run_cli(
        cli_env, "backup", "get", "shop.dev", backup_id, "--part", "files", "--to", str(tmp_path)
    )
    assert bad.returncode != 0 and "sha256" in bad.stderr, bad.stderr
    assert not [p for p in tmp_path.iterdir() if p.is_file()]

    # A backup of the code only: the manifest and `show` list that part alone.
    only = run_cli(cli_env, "backup", "create", "shop.dev", "--element", "code", "--wait", "--json")
    assert only.returncode == 0, only.stderr
    code_id = json.loads(only.stdout)["outputs"]["backup_id"]
    code_backup = run_json(cli_env, "backup", "show", "shop.dev", code_id)
    assert code_backup["elements"] == ["code"]
    assert set(code_backup["manifest"]["parts"]) == {"code"}
    assert len(s3_keys(cli_env, f"backups/shop/dev/{code_id}/")) == 2
    refused = run_cli(cli_env, "restore", "shop.dev", "--backup", code_id)
    assert refused.returncode == 3 and "it holds code" in refused.stderr, refused.stderr

    # Off a terminal, delete needs --yes; with it, nothing of the backup is left.
    unasked = run_cli(cli_env, "backup", "delete", "shop.dev", backup_id)
    assert unasked.returncode == 2 and "--yes" in unasked.stderr, unasked.stderr
    deleted = run_cli(
        cli_env, "backup", "delete", "shop.dev", backup_id, "--yes", "--wait", "--json"
    )
    assert deleted.returncode == 0, deleted.stderr + worker_pool.log_text()[-3000:]
    assert json.loads(deleted.stdout)["status"] == "succeeded"
    assert s3_keys(cli_env, f"backups/shop/dev/{backup_id}/") == []
    assert [b["id"] for b in run_json(cli_env, "backup", "list", "shop.dev")] == [code_id]
    gone = run_cli(cli_env, "backup", "show", "shop.dev", backup_id)
    assert gone.returncode == 3, gone.stderr

    swept = run_json(cli_env, "backup", "sweep", "--dry-run", "--min-age-hours", "0")
    assert swept == {"dry_run": True, "prefixes": [], "multipart_uploads": [], "uploads": []}
    said = run_cli(cli_env, "backup", "sweep", "--dry-run", "--min-age-hours", "0")
    assert said.returncode == 0, said.stderr
    assert said.stdout.strip().endswith(
        "would sweep: 0 orphaned backup prefixes, 0 unfinished uploads, 0 unused import uploads"
    ), said.stdout


def expire(settings, now: datetime) -> int:
    """What the scheduler's leader does each tick, run once with the given clock."""

    async def run() -> int:
        pool = await create_pool(settings.database_url, max_size=2)
        try:
            async with open_object_store(settings) as store:
                producer = Producer(pool, settings, store, Principal.system("scheduler"))
                return await expire_backups(pool, producer, now=now)
        finally:
            await pool.close()

    return asyncio.run(run())


@pytest.mark.parametrize("site", ["postgresql"], indirect=True)
def test_a_backup_read_by_a_running_restore_outlives_its_expiry(
    cli_env, worker_pool, site, settings
):
    [backup] = run_json(cli_env, "backup", "list", "shop.dev")
    prefix = f"backups/shop/dev/{backup['id']}/"
    assert len(s3_keys(cli_env, prefix)) == 4
    for proc in list(worker_pool.procs):
        worker_pool.kill(proc)
    slow = {
        **cli_env,
        "ENVRESTORE_FAILPOINTS": json.dumps({"import_db.mid_stream": "sleep:20"}),
        "ENVRESTORE_BACKUP_DELETE_POLL_SECONDS": "0.5",
    }
    worker_pool.env = slow
    worker_pool.start()
    restore_id = run_json(slow, "restore", "shop.dev", "--backup", backup["id"])["id"]

    def importing() -> bool:
        steps = {s["name"]: s for s in run_json(slow, "job", "show", restore_id)["steps"]}
        return steps["import_db"]["status"] == "running"

    wait_for(importing, timeout=90, what="the restore to read the backup")
    later = datetime.now(UTC) + timedelta(days=31)
    assert expire(settings, later) == 1
    assert expire(settings, later) == 0  # the next tick finds the same job
    jobs = [j for j in run_json(cli_env, "job", "list") if j["kind"] == "delete_backup"]
    assert len(jobs) == 1
    delete_id = jobs[0]["id"]

    # While the restore runs, the delete waits and every object stays.
    def kept() -> bool:
        events = run_json(cli_env, "job", "show", delete_id)
        steps = {s["name"]: s["status"] for s in events["steps"]}
        return steps["wait_readers"] == "running"

    wait_for(kept, timeout=30, what="the delete to wait for the restore")
    objects_then = len(s3_keys(cli_env, prefix))
    restore_view = run_json(cli_env, "job", "show", restore_id)
    assert restore_view["status"] == "running"  # 20 s of import left: a wide margin
    assert objects_then == 4

    done = run_cli(cli_env, "job", "show", restore_id, "--wait", "--json", timeout=180)
    assert done.returncode == 0, done.stderr + worker_pool.log_text()[-3000:]
    restored = json.loads(done.stdout)
    assert restored["status"] == "succeeded", restored
    ended = run_cli(cli_env, "job", "show", delete_id, "--wait", "--json", timeout=120)
    assert ended.returncode == 0, ended.stderr + worker_pool.log_text()[-3000:]
    view = json.loads(ended.stdout)
    assert view["status"] == "succeeded", view
    assert view["finished_at"] >= restored["finished_at"]
    # The objects went only once the restore had ended (ledger timestamps).
    deleting = {s["name"]: s for s in view["steps"]}["delete_objects"]
    assert deleting["started_at"] >= restored["finished_at"]
    assert s3_keys(cli_env, prefix) == []
    assert run_json(cli_env, "backup", "list", "shop.dev") == []
