"""`backup delete` asks on a terminal: the CLI run on a pseudo-terminal, against the real ledger."""

from __future__ import annotations

import os
import pty
import subprocess

import pytest

from tests.integration.test_backup_delete import make_backup
from tests.support.workers import ENVRESTORE

pytestmark = pytest.mark.integration


@pytest.fixture
def engine() -> str:
    return "mariadb"


def on_terminal(env: dict[str, str], answer: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI with a terminal as stdin, typing `answer`."""
    leader, follower = pty.openpty()
    try:
        os.write(leader, answer.encode())
        return subprocess.run(
            [ENVRESTORE, *args],
            env=env,
            stdin=follower,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(follower)
        os.close(leader)


async def delete_jobs(runtime) -> int:
    return int(
        await runtime.pool.fetchval("SELECT count(*) FROM jobs WHERE kind = 'delete_backup'")
    )


async def test_delete_asks_on_a_terminal(runtime, make_env, cli_env):
    await make_env("shop.dev")
    backup_id = await make_backup(runtime, "shop.dev")

    declined = on_terminal(cli_env, "n\n", "backup", "delete", "shop.dev", backup_id)
    assert declined.returncode == 1, declined.stderr
    assert f"Delete backup {backup_id}" in declined.stdout
    assert "nothing deleted" in declined.stderr
    assert await delete_jobs(runtime) == 0

    missing = on_terminal(cli_env, "y\n", "backup", "delete", "shop.dev", "20200101T000000Z-0a0b0c")
    assert missing.returncode == 3, missing.stderr
    assert "Delete backup" not in missing.stdout  # named before anyone is asked
    assert await delete_jobs(runtime) == 0

    accepted = on_terminal(cli_env, "y\n", "backup", "delete", "shop.dev", backup_id)
    assert accepted.returncode == 0, accepted.stderr
    assert "queued" in accepted.stdout
    assert await delete_jobs(runtime) == 1

    unasked = on_terminal(cli_env, "", "backup", "delete", "shop.dev", backup_id, "--yes")
    assert unasked.returncode == 4, unasked.stderr  # the first delete is still queued
    assert "already being deleted" in unasked.stderr
