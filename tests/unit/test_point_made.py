"""`point_made` runs after a restore switched the content: nothing it meets may fail the step."""

from __future__ import annotations

import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest

from envrestore.config.settings import Settings
from envrestore.pipelines.restore.points import point_made


class BlippingPool:
    """A ledger that answers every query with the error given."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.calls = 0

    async def fetchrow(self, *_: Any) -> Any:
        self.calls += 1
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.exceptions.QueryCanceledError("canceling statement due to statement timeout"),
        asyncpg.exceptions.InterfaceError("connection is closed"),
        OSError("connection reset"),
    ],
)
async def test_a_ledger_error_after_the_switch_is_reported_not_raised(error):
    pool = BlippingPool(error)
    runtime = SimpleNamespace(pool=pool, settings=Settings(), store=None)
    environment = SimpleNamespace(id=1, target="shop.dev", files_dir=Path("/nowhere"))

    outcome = await point_made(runtime, uuid.uuid4(), environment)  # type: ignore[arg-type]

    assert pool.calls == 1
    assert outcome["size_error"]
