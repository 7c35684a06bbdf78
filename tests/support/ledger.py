"""A fresh ledger database per test, cloned from a migrated template (fast, isolated)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from envrestore.pipelines.ledger.connection import connect
from envrestore.pipelines.ledger.migrate import migrate

__all__ = ["ledger_template", "ledger_url"]

_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def admin_url() -> str:
    return os.environ.get("ENVRESTORE_TEST_POSTGRES_URL", _ADMIN)


def _url_for(database: str) -> str:
    base, _, _ = admin_url().rpartition("/")
    return f"{base}/{database}"


async def _admin() -> asyncpg.Connection:
    try:
        return await asyncpg.connect(admin_url(), timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        message = f"PostgreSQL for the ledger at {admin_url()} is not reachable ({exc})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


@pytest.fixture(scope="session")
async def ledger_template() -> AsyncIterator[str]:
    """A migrated ledger database used as the template of each test's ledger."""
    name = f"envrestore_tpl_{uuid.uuid4().hex[:8]}"
    admin = await _admin()
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        conn = await connect(_url_for(name))
        try:
            await migrate(conn)
        finally:
            await conn.close()
        yield name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def ledger_url(ledger_template: str) -> AsyncIterator[str]:
    """The URL of an empty, migrated ledger for this test alone."""
    name = f"envrestore_t_{uuid.uuid4().hex[:10]}"
    admin = await _admin()
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{ledger_template}"')
        yield _url_for(name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
