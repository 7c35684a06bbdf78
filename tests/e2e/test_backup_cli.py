"""Backups as a user runs them: the CLI against real worker processes and services."""

from __future__ import annotations

import hashlib

import boto3
import pytest

from tests.support.sites import make_files, make_repo
from tests.support.workers import run_cli, run_json

pytestmark = pytest.mark.e2e


def _pg_fill(dsn_text: str) -> None:
    import subprocess

    subprocess.run(
        [
            "psql",
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            dsn_text,
            "-c",
            "CREATE TABLE node (nid serial PRIMARY KEY, title text);"
            "INSERT INTO node (title) SELECT 'n' || g FROM generate_series(1, 500) g;",
        ],
        check=True,
    )


def register(env, tmp_path, dsn) -> dict:
    dsn_text = f"postgresql://{dsn.user}@{dsn.host}:{dsn.port}/{dsn.database}"
    _pg_fill(dsn_text)
    files = make_files(tmp_path / "files")
    code = make_repo(tmp_path / "code")
    assert run_cli(env, "db", "migrate").returncode == 0
    assert run_cli(env, "site", "add", "shop").returncode == 0
    added = run_cli(
        env, "env", "add", "shop.dev", "--db", dsn_text, "--files", str(files), "--code", str(code)
    )
    assert added.returncode == 0, added.stderr
    return {"files": files, "code": code, "dsn": dsn_text}


def s3_client(env):
    return boto3.client(
        "s3",
        endpoint_url=env["ENVRESTORE_S3_ENDPOINT_URL"],
        aws_access_key_id=env["ENVRESTORE_S3_ACCESS_KEY_ID"],
        aws_secret_access_key=env["ENVRESTORE_S3_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )


def test_backup_create_wait_then_list_shows_three_parts_in_s3(
    cli_env, worker_pool, tmp_path, postgres_db
):
    register(cli_env, tmp_path, postgres_db)
    worker_pool.start()
    [env] = run_json(cli_env, "env", "list")
    assert env["site"] == "shop" and env["env"] == "dev" and env["protected"] is False

    done = run_cli(cli_env, "backup", "create", "shop.dev", "--wait", "--json")
    assert done.returncode == 0, done.stderr + worker_pool.log_text()[-3000:]
    [backup] = run_json(cli_env, "backup", "list", "shop.dev")
    assert {p["part"] for p in backup["parts"]} == {"code", "database", "files"}
    s3 = s3_client(cli_env)
    for part in backup["parts"]:
        body = s3.get_object(Bucket=cli_env["ENVRESTORE_S3_BUCKET"], Key=part["key"])["Body"]
        digest = hashlib.sha256()
        for chunk in iter(lambda: body.read(1 << 20), b""):
            digest.update(chunk)
        assert digest.hexdigest() == part["sha256"]

    job = run_json(cli_env, "job", "show", backup["job_id"])
    assert job["status"] == "succeeded"
    assert {s["name"]: s["status"] for s in job["steps"]}["record_backup"] == "done"
    for step in job["steps"]:
        assert {"name", "status", "attempts", "bytes_done", "bytes_total"} <= set(step)


def test_idempotency_key_on_the_cli(cli_env, worker_pool, tmp_path, postgres_db):
    register(cli_env, tmp_path, postgres_db)
    first = run_json(cli_env, "backup", "create", "shop.dev", "--idempotency-key", "k1")
    again = run_json(cli_env, "backup", "create", "shop.dev", "--idempotency-key", "k1")
    assert again["id"] == first["id"] and again["created"] is False
    other = run_cli(
        cli_env, "backup", "create", "shop.dev", "--idempotency-key", "k1", "--keep-for", "2"
    )
    assert other.returncode == 4
    assert "k1" in other.stderr and "different request" in other.stderr
    worker_pool.start()
    shown = run_cli(cli_env, "job", "show", first["id"], "--wait", "--json")
    assert shown.returncode == 0, shown.stderr
    assert len(run_json(cli_env, "backup", "list", "shop.dev")) == 1


def test_bad_input_is_one_clear_line_and_a_named_exit_code(cli_env, tmp_path, postgres_db):
    paths = register(cli_env, tmp_path, postgres_db)
    missing = run_cli(cli_env, "backup", "create", "nosuch.dev")
    assert missing.returncode == 3 and "nosuch" in missing.stderr
    bad_dsn = run_cli(
        cli_env,
        "env",
        "add",
        "shop.test",
        "--db",
        "oracle://x/y",
        "--files",
        str(paths["files"]),
        "--code",
        str(paths["code"]),
    )
    assert bad_dsn.returncode == 2 and "oracle" in bad_dsn.stderr
    no_files = run_cli(
        cli_env,
        "env",
        "add",
        "shop.test",
        "--db",
        paths["dsn"],
        "--files",
        str(tmp_path / "absent"),
        "--code",
        str(paths["code"]),
    )
    assert no_files.returncode == 2 and "absent" in no_files.stderr
    plain_files, plain_code = tmp_path / "test-files", tmp_path / "test-code"
    plain_files.mkdir()
    plain_code.mkdir()  # a directory, but not a git working tree
    not_git = run_cli(
        cli_env,
        "env",
        "add",
        "shop.test",
        "--db",
        paths["dsn"],
        "--files",
        str(plain_files),
        "--code",
        str(plain_code),
    )
    assert not_git.returncode == 2 and "git" in not_git.stderr
    bad_job = run_cli(cli_env, "job", "show", "not-a-uuid")
    assert bad_job.returncode == 2
    for result in (missing, bad_dsn, no_files, not_git):
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    env = {**cli_env, "ENVRESTORE_S3_BUCKET": "no-such-bucket-here"}
    no_bucket = run_cli(env, "backup", "create", "shop.dev")
    assert no_bucket.returncode == 3 and "no-such-bucket-here" in no_bucket.stderr
    assert cli_env["ENVRESTORE_S3_SECRET_ACCESS_KEY"] not in no_bucket.stderr


def test_env_load_registers_all_or_nothing(cli_env, tmp_path):
    for env in ("dev", "live"):
        (tmp_path / env / "files").mkdir(parents=True)
        make_repo(tmp_path / env / "code", commits=1)
    good = tmp_path / "good.toml"
    good.write_text(
        "[[env]]\ntarget = 'blog.dev'\ndb = 'mariadb://root@127.0.0.1:3306/blog_dev'\n"
        "files = 'dev/files'\ncode = 'dev/code'\n\n"
        "[[env]]\ntarget = 'blog.live'\ndb = 'postgresql://app@127.0.0.1/blog'\n"
        "files = 'live/files'\ncode = 'live/code'\n"
    )
    bad = tmp_path / "bad.toml"
    bad.write_text(
        "[[env]]\ntarget = 'news.dev'\ndb = 'mariadb://root@127.0.0.1:3306/news'\n"
        "files = 'dev/files'\ncode = 'dev/code'\n\n"
        "[[env]]\ntarget = 'news.live'\ndb = 'mariadb://root@127.0.0.1:3306/news'\n"
        "files = 'live/files'\ncode = 'nowhere'\n"
    )
    assert run_cli(cli_env, "db", "migrate").returncode == 0
    refused = run_cli(cli_env, "env", "load", str(bad))
    assert refused.returncode == 2
    assert "nowhere" in refused.stderr
    assert run_json(cli_env, "env", "list") == []
    loaded = run_cli(cli_env, "env", "load", str(good))
    assert loaded.returncode == 0, loaded.stderr
    envs = {f"{e['site']}.{e['env']}": e for e in run_json(cli_env, "env", "list")}
    assert set(envs) == {"blog.dev", "blog.live"}
    assert envs["blog.live"]["protected"] is True
    assert envs["blog.dev"]["protected"] is False
