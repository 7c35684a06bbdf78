"""`envrestore scheduler` and `envrestore schedule` as an operator runs them.

Two scheduler processes: one leads, the other waits; the leader SIGKILLed is
replaced within seconds; SIGTERM stops a scheduler promptly and gives the
lease up. With a worker beside it, a due slot becomes a real backup whose
expiry is the weekly one's.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from envrestore.pipelines.schedule.slots import WEEKDAYS, weekday_of
from tests.e2e.conftest import dsn_text
from tests.integration.test_backup_job import fill
from tests.support.sites import make_files, make_repo
from tests.support.workers import ENVRESTORE, WorkerPool, run_cli, run_json, wait_for

LEASE_SECONDS = 2.0


def ledger(env: dict[str, str], query: str, *args: Any) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(env["ENVRESTORE_DATABASE_URL"])
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    return asyncio.run(run())


def lease_holder(env: dict[str, str]) -> str | None:
    rows = ledger(env, "SELECT holder FROM scheduler_lease WHERE expires_at > now()")
    return rows[0]["holder"] if rows else None


def start_scheduler(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [ENVRESTORE, "scheduler"],
        env={
            **env,
            "ENVRESTORE_LOG_LEVEL": "INFO",
            "ENVRESTORE_SCHEDULER_LEASE_SECONDS": str(LEASE_SECONDS),
            "ENVRESTORE_SCHEDULER_TICK_SECONDS": "0.2",
        },
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def holds(proc: subprocess.Popen[bytes], env: dict[str, str]) -> bool:
    holder = lease_holder(env)
    return holder is not None and f"-{proc.pid}-" in holder


def test_one_scheduler_leads_a_killed_leader_is_replaced_and_sigterm_stops_promptly(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    assert run_cli(cli_env, "db", "migrate").returncode == 0
    first = start_scheduler(cli_env, tmp_path / "first.log")
    second: subprocess.Popen[bytes] | None = None
    try:
        wait_for(lambda: holds(first, cli_env), timeout=20, what="the first scheduler to lead")
        second = start_scheduler(cli_env, tmp_path / "second.log")
        time.sleep(LEASE_SECONDS * 1.5)
        assert second.poll() is None
        assert holds(first, cli_env), "a running leader keeps the lease"

        first.send_signal(signal.SIGKILL)  # a crash: the lease is not given up
        first.wait(timeout=10)
        killed = time.monotonic()
        wait_for(lambda: holds(second, cli_env), timeout=LEASE_SECONDS + 5, interval=0.05)
        assert time.monotonic() - killed < LEASE_SECONDS + 1.5

        started = time.monotonic()
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=10) == 0
        assert time.monotonic() - started < 3
        assert ledger(cli_env, "SELECT holder FROM scheduler_lease") == [], "lease given up"
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    log = (tmp_path / "second.log").read_text()
    assert "scheduler.leader" in log and "scheduler.stopped" in log
    assert "Traceback" not in log


def test_schedule_commands_and_a_real_scheduled_backup(
    cli_env: dict[str, str], worker_pool: WorkerPool, tmp_path: Path, make_postgres_db: Any
) -> None:
    env = cli_env
    dsn = make_postgres_db()
    asyncio.run(fill(dsn))
    files = make_files(tmp_path / "site" / "files")
    code = make_repo(tmp_path / "site" / "code")
    assert run_cli(env, "db", "migrate").returncode == 0
    assert run_cli(env, "site", "add", "shop").returncode == 0
    added = run_cli(
        env, "env", "add", "shop.dev", "--db", dsn_text(dsn), "--files", str(files),
        "--code", str(code),
    )  # fmt: skip
    assert added.returncode == 0, added.stderr

    # No schedule set: on, at the defaults.
    [shown] = run_json(env, "schedule", "show", "shop.dev")
    assert shown["enabled"] is True
    assert (shown["hour_utc"], shown["hour_is_default"]) == (2, True)
    assert (shown["weekly_day_name"], shown["weekly_day_is_default"]) == ("sunday", True)
    assert shown["last_slot"] is None

    # Operator mistakes: one line, the usual exit codes.
    for args, code_, words in [
        (("schedule", "set", "shop.nope"), 3, "shop.nope"),
        (("schedule", "set", "shop.dev", "--hour", "24"), 2, "--hour"),
        (("schedule", "set", "shop.dev", "--weekly-day", "funday"), 2, "weekly day"),
        (("schedule", "show", "nosuchsite"), 3, "nosuchsite"),
        (("schedule", "off", "shop"), 2, "SITE.ENV"),
    ]:
        result = run_cli(env, *args)
        assert result.returncode == code_, (args, result.stdout, result.stderr)
        assert words in result.stderr and "Traceback" not in result.stderr

    # This hour, today's weekday: the slot that began at :00 is due now ...
    now = datetime.now(UTC)
    today = WEEKDAYS[weekday_of(now)]
    done = run_cli(
        env, "schedule", "set", "shop.dev", "--hour", str(now.hour), "--weekly-day", today
    )
    assert done.returncode == 0, done.stderr
    assert f"daily at {now.hour:02d}:00 UTC, weekly on {today}" in done.stdout
    # ... for an environment that existed then (one added after a slot waits for the next).
    ledger(env, "UPDATE environments SET created_at = now() - interval '1 day'")

    worker_pool.start()
    scheduler = start_scheduler(env, tmp_path / "scheduler.log")
    try:
        backups = wait_for(
            lambda: run_json(env, "backup", "list", "shop.dev"), timeout=90, what="a backup"
        )
    finally:
        scheduler.send_signal(signal.SIGTERM)
        assert scheduler.wait(timeout=10) == 0
    [backup] = backups
    assert backup["kind"] == "automatic"
    created = datetime.fromisoformat(backup["created_at"])
    assert datetime.fromisoformat(backup["expires_at"]) - created == timedelta(days=32)
    [shown] = run_json(env, "schedule", "show", "shop")
    assert shown["last_slot"] == now.replace(minute=0, second=0, microsecond=0).isoformat()
    assert shown["last_slot_kind"] == "weekly"
    assert shown["last_job_id"] == backup["job_id"]
    job = run_json(env, "job", "show", backup["job_id"])
    assert job["requested_by"].startswith("scheduler:")

    off = run_cli(env, "schedule", "off", "shop.dev")
    assert off.returncode == 0 and "off" in off.stdout
    [shown] = run_json(env, "schedule", "show", "shop.dev")
    assert (shown["enabled"], shown["next_slot"]) == (False, None)
    listing = run_cli({**env, "COLUMNS": "80"}, "schedule", "show")
    assert listing.returncode == 0
    assert "shop.dev" in listing.stdout and backup["job_id"] in listing.stdout  # whole at 80
    assert json.loads(run_cli(env, "schedule", "show", "--json").stdout)[0]["enabled"] is False
