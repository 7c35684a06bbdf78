"""`envrestore api` as an operator runs it: a real process on a loopback port, stopped by SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from tests.support.api import free_port
from tests.support.workers import ENVRESTORE, run_cli

pytestmark = pytest.mark.integration


async def _wait_until_up(base: str, process: subprocess.Popen[str]) -> None:
    async with httpx.AsyncClient(timeout=2) as http:
        for _ in range(200):
            assert process.poll() is None, process.communicate()
            try:
                await http.get(f"{base}/openapi.json")
                return
            except httpx.TransportError:
                await asyncio.sleep(0.1)
    raise AssertionError("envrestore api did not answer")


async def test_envrestore_api_serves_until_sigterm(
    cli_env: dict[str, str], runtime: Any, tmp_path: Any
) -> None:
    port = free_port()
    env = {**cli_env, "ENVRESTORE_API_PORT": str(port)}
    assert run_cli(env, "site", "add", "shop").returncode == 0
    made = run_cli(env, "token", "create", "--name", "dash", "--sites", "shop", "--scopes", "read")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    process = subprocess.Popen(
        [ENVRESTORE, "api"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        base = f"http://127.0.0.1:{port}"
        await _wait_until_up(base, process)
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            document = (await http.get("/openapi.json")).json()
            assert "/jobs/{job_id}/events" in document["paths"]
            assert (await http.get("/sites")).status_code == 401
            sites = await http.get("/sites", headers={"Authorization": f"Bearer {token}"})
            assert sites.status_code == 200
            assert [s["name"] for s in sites.json()] == ["shop"]
    finally:
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    assert "Traceback" not in err


async def test_envrestore_api_refuses_an_unmigrated_ledger_in_one_line(
    cli_env: dict[str, str],
) -> None:
    name = f"envr_api_empty_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        env = {
            **cli_env,
            "ENVRESTORE_DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{name}",
            "ENVRESTORE_API_PORT": str(free_port()),
        }
        done = run_cli(env, "api", timeout=60)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await admin.close()
    assert done.returncode == 6, done.stderr
    assert "envrestore db migrate" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
