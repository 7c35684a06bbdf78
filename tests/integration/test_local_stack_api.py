"""The embedded stack's HTTP API: `up` starts it on a free loopback port, `down` stops it.

The whole stack (PostgreSQL, Redis, SeaweedFS, worker, scheduler, API) in a
temporary state dir, as `make demo` starts it; `make demo-stop` must leave no
API process behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from deploy.local import stack

pytestmark = pytest.mark.integration


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    root = (tmp_path / "state").resolve()
    root.mkdir()
    yield root
    stack.down(root, timeout=5)


def test_up_serves_the_api_on_loopback_and_down_stops_it(state_dir: Path) -> None:
    stack.up(state_dir)
    api = stack.status(state_dir)["api"]
    assert api["running"] is True
    url = api["url"]
    assert url.startswith("http://127.0.0.1:")
    assert int(url.rsplit(":", 1)[1]) not in stack.RESERVED_PORTS
    assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    # No token, no answer: the stack's API is the real one, auth included.
    refused = httpx.get(f"{url}/sites", timeout=5)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "unauthorized"

    # Up again: the API answers on the same port (restarted only if the code changed meanwhile).
    stack.up(state_dir)
    again = stack.status(state_dir)["api"]
    assert again["running"] is True
    assert again["url"] == url
    process = psutil.Process(again["pid"])

    stopped = stack.down(state_dir, timeout=10)
    assert "api" in stopped
    assert not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    assert stack.status(state_dir)["api"]["running"] is False
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthz", timeout=2)
