"""Property-based run of the API against its own OpenAPI document (schemathesis).

Every operation of `/openapi.json` gets generated requests (valid by the
document, and a few that break it) with a valid admin token, sent to a real
uvicorn on the test's ledger and bucket. No answer may be a 5xx, and every
answer must match what the document says (status code declared, body schema,
content type). Bounded: EXAMPLES per operation and mode, so the run takes
well under a minute.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from envrestore.api.app import create_app
from envrestore.config.settings import Settings
from envrestore.pipelines import registry
from envrestore.pipelines.auth.tokens import create_token
from envrestore.pipelines.dsn import Dsn
from envrestore.pipelines.ledger.connection import create_pool
from tests.e2e.conftest import dsn_text
from tests.support.sites import make_files, make_repo

pytestmark = pytest.mark.integration

EXAMPLES = 12
CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def api_url(settings: Settings) -> Iterator[str]:
    """The app under a real uvicorn in a thread of its own (schemathesis calls are blocking)."""
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


async def _prepare(settings: Settings, db: str, root: Path) -> str:
    """shop.dev registered (so not every path is a 404), and an admin token."""
    pool = await create_pool(settings.database_url, max_size=2)
    try:
        await registry.add_site(pool, "shop")
        await registry.add_environment(
            pool, "shop.dev", db=db, files=make_files(root / "files"),
            code=make_repo(root / "code"),
        )  # fmt: skip
        raw, _grant = await create_token(
            pool, name="schemathesis", sites=None, scopes=["admin"], expires_days=None
        )
        return raw
    finally:
        await pool.close()


def test_no_operation_answers_5xx_or_off_schema(
    api_url: str, settings: Settings, postgres_db: Dsn, tmp_path: Path
) -> None:
    raw = asyncio.run(_prepare(settings, dsn_text(postgres_db), tmp_path / "shop"))
    auth = {"Authorization": f"Bearer {raw}"}
    assert httpx.get(f"{api_url}/sites/shop/envs/dev", headers=auth).status_code == 200
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15, [op.label for op in operations]
    failed: dict[str, str] = {}
    calls: dict[str, int] = {}

    for operation in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @hypothesis_settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def check(case: Any) -> None:
                key = f"{operation.label} [{mode.value}]"
                if key in failed:  # one report per operation and mode is enough
                    return
                calls[operation.label] = calls.get(operation.label, 0) + 1
                try:
                    case.call_and_validate(
                        base_url=api_url, headers=auth, checks=CHECKS, timeout=10
                    )
                except (AssertionError, FailureGroup) as exc:  # collected, reported once
                    failed[key] = f"{key}: {str(exc)[:1200]}"

            try:
                check()
            except Unsatisfiable:
                # Negative mode of an operation without parameters or body: nothing to break.
                if mode is schemathesis.GenerationMode.POSITIVE:
                    raise

    assert not failed, "\n\n".join(failed.values())
    assert sum(calls.values()) >= len(operations) * EXAMPLES // 2, calls
