"""The CLI on first contact, against a real PostgreSQL ledger: what an operator sees
when the ledger is fresh, a name is wrong, a service is down, or a risky option is used."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from rich.console import Console
from typer.testing import CliRunner, Result

from envrestore.cli import common, imports, restores
from envrestore.cli.follow import follow_job, render_frame
from envrestore.cli.main import app
from envrestore.config.settings import load_settings
from envrestore.pipelines import registry
from envrestore.pipelines.backup.naming import new_backup_id
from envrestore.pipelines.ledger.connection import connect, create_pool
from envrestore.pipelines.ledger.migrate import available_migrations
from envrestore.pipelines.ledger.queries import sql
from envrestore.pipelines.objectstore.memory import MemoryObjectStore
from envrestore.pipelines.producer import Producer
from envrestore.pipelines.requests import BackupRequest
from tests.support.ledger import _admin, _url_for
from tests.support.producing import TESTER
from tests.support.sites import make_repo
from tests.support.workers import ENVRESTORE

pytestmark = pytest.mark.integration

runner = CliRunner()


def shell_env(ledger: str, **extra: str) -> dict[str, str | None]:
    """A user's shell on this ledger at 80 columns, with no other ENVRESTORE_* around."""
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("ENVRESTORE_")}
    env.update({"ENVRESTORE_DATABASE_URL": ledger, "COLUMNS": "80", **extra})
    return env


async def cli(env: dict[str, str | None], *args: str, input: str | None = None) -> Result:
    # In a thread: the CLI runs its own event loop.
    return await asyncio.to_thread(runner.invoke, app, list(args), input=input, env=env)


def one_line_error(result: Result) -> str:
    """The error an operator reads: one line on stderr, nothing on stdout, no traceback."""
    assert result.stdout == "", result.stdout
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def json_error(result: Result) -> dict[str, str]:
    """The same error under --json: one object on stdout."""
    assert "Traceback" not in result.output
    data = json.loads(result.stdout)
    assert list(data) == ["error"] and set(data["error"]) == {"code", "message"}, data
    return dict(data["error"])


@pytest.fixture
async def fresh_database() -> AsyncIterator[str]:
    """A database nobody migrated: the ledger of a new install before `db migrate`."""
    name = f"envrestore_fresh_{uuid.uuid4().hex[:10]}"
    admin = await _admin()
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield _url_for(name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def shop(ledger_url: str, tmp_path: Path) -> AsyncIterator[asyncpg.Pool]:
    """A ledger with site `shop` and environments shop.dev and shop.live (protected)."""
    pool = await create_pool(ledger_url, max_size=2)
    await registry.add_site(pool, "shop")
    for env in ("dev", "live"):
        files = tmp_path / env / "files"
        files.mkdir(parents=True)
        await registry.add_environment(
            pool,
            f"shop.{env}",
            db=f"postgresql://postgres@127.0.0.1:5432/shop_{env}_not_used",
            files=files,
            code=make_repo(tmp_path / env / "code", commits=1),
        )
    try:
        yield pool
    finally:
        await pool.close()


async def queue_backups(pool: asyncpg.Pool, ledger: str, count: int) -> list[str]:
    """Jobs in the ledger (no worker takes them): what `job list` shows."""
    settings = load_settings(database_url=ledger)
    producer = Producer(pool, settings, MemoryObjectStore(), TESTER, preflight=False)
    return [str((await producer.submit(BackupRequest("shop.dev"))).job_id) for _ in range(count)]


# --------------------------------------------------------------- not migrated


async def test_a_fresh_ledger_says_to_run_db_migrate(fresh_database: str):
    env = shell_env(fresh_database)
    for args in (("env", "list"), ("job", "list"), ("site", "add", "shop")):
        result = await cli(env, *args)
        assert result.exit_code == 6, result.output
        assert "run `envrestore db migrate`" in one_line_error(result)
    result = await cli(env, "env", "list", "--json")
    assert result.exit_code == 6
    assert json_error(result)["code"] == "not_migrated"

    assert (await cli(env, "db", "migrate")).exit_code == 0
    listed = await cli(env, "env", "list", "--json")
    assert listed.exit_code == 0 and json.loads(listed.stdout) == []


async def test_a_ledger_behind_this_version_names_what_is_missing(fresh_database: str):
    first, *rest = available_migrations()
    conn = await connect(fresh_database)
    try:
        await conn.execute(sql("create_schema_migrations"))
        await conn.execute(first.sql)
        await conn.execute(sql("record_migration"), first.version, first.name)
    finally:
        await conn.close()
    result = await cli(shell_env(fresh_database), "job", "list")
    assert result.exit_code == 6
    line = one_line_error(result)
    assert "envrestore db migrate" in line
    assert f"{rest[0].version:03d}_{rest[0].name}" in line
    assert f"{first.version:03d}_" not in line


# ------------------------------------------------------------------ not found


async def test_listing_an_unknown_site_or_environment_exits_3(shop: asyncpg.Pool, ledger_url: str):
    env = shell_env(ledger_url)
    for args in (
        ("env", "list", "nosuch"),
        ("job", "list", "nosuch"),
        ("job", "list", "nosuch.dev"),
        ("job", "list", "shop.nosuch"),
    ):
        result = await cli(env, *args)
        assert result.exit_code == 3, (args, result.output)
        assert "not registered" in one_line_error(result)
        as_json = await cli(env, *args, "--json")
        assert as_json.exit_code == 3
        assert json_error(as_json)["code"] == "not_found"
    known = await cli(env, "job", "list", "shop.dev", "--json")
    assert known.exit_code == 0 and json.loads(known.stdout) == []


# ---------------------------------------------------------------- 80 columns


async def test_job_list_and_env_list_at_80_columns_print_whole_ids(
    shop: asyncpg.Pool, ledger_url: str
):
    job_ids = await queue_backups(shop, ledger_url, 3)
    env = shell_env(ledger_url)
    result = await cli(env, "job", "list")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    for job_id in job_ids:
        assert any(job_id in line for line in lines), (job_id, result.stdout)
    listed = await cli(env, "job", "list", "shop.dev")
    assert all(job_id in listed.stdout for job_id in job_ids)

    envs = await cli(env, "env", "list")
    assert envs.exit_code == 0
    assert any("shop.live" in line for line in envs.stdout.splitlines())
    assert "…" not in envs.stdout


# ------------------------------------------------------------------ --json


@pytest.mark.parametrize(
    ("args", "overrides", "exit_code", "code", "words"),
    [
        (("job", "show", "not-a-uuid"), {}, 2, "bad_input", "not a job id"),
        (("job", "show", str(uuid.UUID(int=7))), {}, 3, "not_found", "does not exist"),
        (
            ("job", "list"),
            {"ENVRESTORE_DATABASE_URL": "postgresql://u:pw@127.0.0.1:1/x"},
            6,
            "unavailable",
            "cannot reach the ledger",
        ),
        (
            ("job", "list"),
            {"ENVRESTORE_DATABASE_URL": "postgresql://u@[bad/x"},
            2,
            "bad_input",
            "ENVRESTORE_DATABASE_URL is not a valid URL",
        ),
        (
            ("job", "list"),
            {"ENVRESTORE_DATABASE_URL": "mysql://u@h/x"},
            2,
            "bad_input",
            "ENVRESTORE_DATABASE_URL must start with postgresql://",
        ),
        (
            ("env", "list"),
            {"ENVRESTORE_HEARTBEAT_SECONDS": "abc"},
            2,
            "bad_input",
            "ENVRESTORE_HEARTBEAT_SECONDS='abc'",
        ),
        (
            ("env", "list"),
            {"ENVRESTORE_CONFIG": "/nonexistent/envrestore.toml"},
            2,
            "bad_input",
            "ENVRESTORE_CONFIG",
        ),
    ],
)
async def test_errors_are_one_line_or_json_with_the_same_exit_code(
    ledger_url: str,
    args: tuple[str, ...],
    overrides: dict[str, str],
    exit_code: int,
    code: str,
    words: str,
):
    env = shell_env(ledger_url, **overrides)
    plain = await cli(env, *args)
    assert plain.exit_code == exit_code, plain.output
    assert words in one_line_error(plain)
    assert "pw" not in plain.output  # a DSN's password is never shown

    as_json = await cli(env, *args, "--json")
    assert as_json.exit_code == exit_code, as_json.output
    error = json_error(as_json)
    assert error["code"] == code and words in error["message"]


async def test_a_usage_error_under_json_is_json_too(ledger_url: str):
    result = await cli(shell_env(ledger_url), "restore", "--json")
    assert result.exit_code == 2
    error = json_error(result)
    assert error["code"] == "usage" and "target" in error["message"]


# ------------------------------------------------------------- confirmation


@pytest.fixture
def on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in (common, restores, imports):
        monkeypatch.setattr(module, "stdin_is_terminal", lambda: True)


async def jobs_of(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM jobs"))


@pytest.mark.usefixtures("on_a_terminal")
async def test_force_live_and_in_place_ask_on_a_terminal(shop: asyncpg.Pool, ledger_url: str):
    env = shell_env(ledger_url)
    for target, risky in (("shop.live", "--force-live"), ("shop.dev", "--in-place")):
        declined = await cli(env, "restore", target, risky, input="n\n")
        assert declined.exit_code == 1, declined.output
        assert "Go on?" in declined.output and "not confirmed; nothing done" in declined.output
        assert await jobs_of(shop) == 0
        # Yes: the command goes on (to the ledger's answer: no backup to restore yet).
        accepted = await cli(env, "restore", target, risky, input="y\n")
        assert "Go on?" in accepted.output
        assert accepted.exit_code == 3 and "no backup" in accepted.output, accepted.output
        unasked = await cli(env, "restore", target, risky, "--yes")
        assert "Go on?" not in unasked.output and unasked.exit_code == 3

    declined = await cli(
        env, "import", "db", "shop.live", "--url", "https://example.com/d.sql", "--force-live",
        input="n\n",
    )  # fmt: skip
    assert declined.exit_code == 1 and "Go on?" in declined.output
    into_live = await cli(env, "env", "clone-content", "shop.dev", "shop.live", input="n\n")
    assert into_live.exit_code == 1 and "shop.live is protected" in into_live.output
    assert await jobs_of(shop) == 0


async def test_off_a_terminal_risky_options_go_on_unasked(shop: asyncpg.Pool, ledger_url: str):
    result = await cli(shell_env(ledger_url), "restore", "shop.live", "--force-live")
    assert "Go on?" not in result.output
    assert result.exit_code == 3  # it went on: the ledger has no backup of shop.live


# ------------------------------------------------------------------- Ctrl-C


async def connections(pool: asyncpg.Pool) -> int:
    """Sessions on this ledger other than the test's own pool."""
    return int(
        await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        )
    )


async def test_ctrl_c_while_waiting_says_the_job_goes_on(shop: asyncpg.Pool, ledger_url: str):
    [job_id] = await queue_backups(shop, ledger_url, 1)
    baseline = await connections(shop)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENVRESTORE_")}
    env["ENVRESTORE_DATABASE_URL"] = ledger_url
    proc = subprocess.Popen(
        [ENVRESTORE, "job", "show", job_id, "--wait"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Until the CLI is connected and following (its pool shows up on the ledger).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and await connections(shop) <= baseline:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.5)
        proc.send_signal(signal.SIGINT)
        _out, err = await asyncio.to_thread(proc.communicate, timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "goes on on the workers" in err
    assert f"envrestore job show {job_id} --wait" in err
    assert f"envrestore job cancel {job_id}" in err
    status = await shop.fetchval("SELECT status FROM jobs WHERE id = $1", uuid.UUID(job_id))
    assert status == "queued"  # not touched


# ---------------------------------------------------------- the last frame


async def test_the_last_frame_of_a_failed_job_shows_the_steps_once_cleanup_settled(
    shop: asyncpg.Pool, ledger_url: str
):
    """The job row ends before its cleanup steps do: the last frame waits for them and
    draws every step as the ledger finally has it."""
    [job_id] = await queue_backups(shop, ledger_url, 1)
    uid = uuid.UUID(job_id)
    names = [r["name"] for r in await shop.fetch(
        "SELECT name FROM job_steps WHERE job_id = $1 ORDER BY position", uid
    )]  # fmt: skip
    failing, cleanup = names[0], names[-1]
    await shop.execute(
        "UPDATE job_steps SET status = 'failed', started_at = now() - interval '3 s', "
        "finished_at = now(), bytes_done = 9000, bytes_total = 4000, error = 'boom' "
        "WHERE job_id = $1 AND name = $2",
        uid,
        failing,
    )
    await shop.execute(
        "UPDATE job_steps SET status = 'running', started_at = now() "
        "WHERE job_id = $1 AND name = $2",
        uid,
        cleanup,
    )
    await shop.execute("UPDATE jobs SET status = 'failed', error = 'boom' WHERE id = $1", uid)

    async def cleanup_finishes() -> None:
        await asyncio.sleep(1.0)
        await shop.execute(
            "UPDATE job_steps SET status = 'done', finished_at = now() "
            "WHERE job_id = $1 AND name = $2",
            uid,
            cleanup,
        )

    finishing = asyncio.create_task(cleanup_finishes())
    view = await follow_job(shop, uid, quiet=False, interval=0.1)
    await finishing
    statuses = {s["name"]: s["status"] for s in view["steps"]}
    assert statuses[failing] == "failed" and statuses[cleanup] == "done"
    console = Console(width=80, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(render_frame(view))
    lines = console.export_text().splitlines()
    failed_line = next(line for line in lines if line.startswith(failing + " "))
    assert "failed" in failed_line and "9.0 kB" in failed_line and "4.0 kB" not in failed_line
    assert "done" in next(line for line in lines if line.startswith(cleanup + " "))
    assert not any("running" in line for line in lines)


async def test_backup_list_and_job_show_at_80_columns_print_whole_ids(
    shop: asyncpg.Pool, ledger_url: str
):
    job_ids = await queue_backups(shop, ledger_url, 2)
    environment = await registry.get_environment(shop, "shop.dev")
    backup_ids = []
    for index, job_id in enumerate(job_ids):
        moment = datetime(2026, 12, 1, 3, index, tzinfo=UTC)
        backup_id = new_backup_id(moment, uuid.UUID(job_id))
        await shop.execute(
            sql("insert_backup"),
            backup_id,
            environment.id,
            "shop",
            "dev",
            "manual",
            "postgresql",
            "0123456789abcdef0123456789abcdef01234567",
            f"sites/shop/dev/{backup_id}/manifest.json",
            uuid.UUID(job_id),
            moment,
            moment + timedelta(days=30),
        )
        for part, size in (("database", 123_456_789), ("files", 98_765_432_100), ("code", 42)):
            await shop.execute(
                sql("insert_backup_part"), backup_id, part, f"k/{part}", size, "0" * 64
            )
        backup_ids.append(backup_id)
    env = shell_env(ledger_url)
    listed = await cli(env, "backup", "list", "shop.dev")
    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    for backup_id in backup_ids:
        assert any(backup_id in line for line in lines), listed.stdout

    shown_job = await cli(env, "job", "show", job_ids[0])
    assert shown_job.exit_code == 0
    assert any(job_ids[0] in line for line in shown_job.stdout.splitlines())
    assert "…" not in shown_job.stdout
