"""The demo's "content is back" check: it sees each change the demo makes to dev.

The full `make demo` starts its own stack and takes longer than a test should;
these run the demo's own look/change/compare functions on a dev environment
built the demo's way on the test PostgreSQL (127.0.0.1:5432), in a database
with a name of its own.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from deploy.local import demo_checks, demo_site

pytestmark = pytest.mark.integration

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture
async def dev(tmp_path: Path) -> AsyncIterator[demo_site.DemoEnv]:
    """A small dev environment: database with the demo's schema, uploads, a git repo."""
    name = f"demo_check_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(ADMIN_DSN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = f"postgresql://postgres@127.0.0.1:5432/{name}"
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(demo_site.SCHEMA)
        await conn.executemany(
            "INSERT INTO wp_users (user_login, user_email, display_name) VALUES ($1, $2, $3)",
            demo_site.USERS,
        )
        await conn.executemany(
            "INSERT INTO wp_posts (post_author, post_date, post_title, post_name, post_content) "
            "VALUES (1, now() - make_interval(days => $1), $2, $3, 'text')",
            [
                (n, f"{demo_site.TITLES[n % len(demo_site.TITLES)]} #{n + 1}", f"p{n}")
                for n in range(12)
            ],
        )
    finally:
        await conn.close()
    demo_site._write_files(tmp_path / "files", "dev")
    demo_site._make_repo(tmp_path / "code", "dev")
    try:
        yield demo_site.DemoEnv("dev", dsn, tmp_path / "files", tmp_path / "code")
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _look(dev: demo_site.DemoEnv) -> demo_checks.DevContent:
    # look_at_dev runs its own event loop (the demo is synchronous): keep it off ours.
    return await asyncio.to_thread(demo_checks.look_at_dev, dev)


async def test_unchanged_dev_compares_equal_to_itself(dev: demo_site.DemoEnv) -> None:
    """Looking twice at content nobody touched finds no difference: no false alarm."""
    first = await _look(dev)
    second = await _look(dev)
    assert first.differences(second) == []
    demo_checks.check_content_back(first, second)  # does not stop the demo


async def test_each_change_the_demo_makes_is_seen_in_database_files_and_code(
    dev: demo_site.DemoEnv,
) -> None:
    """After the demo's edits, the check names all three parts and stops the demo."""
    before = await _look(dev)
    await asyncio.to_thread(demo_checks.change_dev, dev, before)
    after = await _look(dev)

    problems = before.differences(after)
    assert [p.split(":")[0] for p in problems] == ["database", "files", "code"]
    assert after.newest_title != before.newest_title
    assert dict(after.rows)["wp_posts"] == dict(before.rows)["wp_posts"] - 5
    assert demo_checks.ADDED_UPLOAD in {path for path, _, _ in after.files}
    assert after.head != before.head
    with pytest.raises(SystemExit, match="differs from the backup's"):
        demo_checks.check_content_back(before, after)
