"""Fixtures shared by the suite; the service fixtures live in tests/support."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator

import pytest
import structlog

from envrestore.config.settings import Settings
from envrestore.pipelines.catalog import job_kinds
from envrestore.pipelines.jobs.runtime import Runtime, open_runtime
from tests.support.databases import *  # noqa: F403 - fixtures
from tests.support.ledger import *  # noqa: F403 - fixtures
from tests.support.seaweed import *  # noqa: F403 - fixtures
from tests.support.workers import *  # noqa: F403 - fixtures


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """A test that runs the CLI in-process (CliRunner) sets logging up for the CLI,
    at WARNING: later tests that capture INFO logs must not inherit that."""
    config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.configure(**config)
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def settings(s3_settings: Settings, ledger_url: str) -> Settings:
    """Settings on this test's ledger and bucket, with quick heartbeats and retries."""
    return s3_settings.model_copy(
        update={
            "database_url": ledger_url,
            "heartbeat_seconds": 0.2,
            "stale_after_seconds": 2.0,
            "retry_backoff_seconds": 0.1,
            "max_attempts": 3,
        }
    )


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    async with open_runtime(settings, kinds=job_kinds()) as rt:
        yield rt
