"""Errors from untrusted input are recorded on the real ledger, escaped, at the first attempt.

A refusal whose excerpt held a NUL byte once could not be stored (PostgreSQL
takes no NUL in text or jsonb): every attempt died in the failure path and the
job finally said its worker had died. Now the job fails with the real reason.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from envrestore.pipelines import registry
from envrestore.pipelines.errors import UnsafeInput
from envrestore.pipelines.jobs import runner
from envrestore.pipelines.jobs.context import StepContext
from envrestore.pipelines.jobs.kinds import JobKind
from envrestore.pipelines.jobs.model import Plan, StepSpec
from envrestore.pipelines.jobs.submit import submit_job
from tests.support.driver import drive
from tests.support.sites import make_repo

pytestmark = pytest.mark.integration

StepFn = Callable[[StepContext], Awaitable[dict[str, Any]]]
RAW_CONTROLS = ("\x00", "\x1b", "\u202e", "\r")


class Box:
    """The toy job's one working step, set per test."""

    def __init__(self) -> None:
        self.work: StepFn | None = None
        self.calls = 0

    async def run(self, ctx: StepContext) -> dict[str, Any]:
        self.calls += 1
        assert self.work is not None
        return await self.work(ctx)


async def _cleanup(ctx: StepContext) -> dict[str, Any]:
    return {}


@pytest.fixture
async def toy(runtime, tmp_path: Path, postgres_db):
    box = Box()
    kind = JobKind(
        name="toy",
        plan=Plan((StepSpec("work"), StepSpec("cleanup", on_failure=True))),
        steps={"work": box.run, "cleanup": _cleanup},
    )
    rt = dataclasses.replace(runtime, kinds={"toy": kind})
    await registry.add_site(rt.pool, "toy")
    (tmp_path / "files").mkdir()  # apart from the code: a files dir may not contain it
    env, _ = await registry.add_environment(
        rt.pool,
        "toy.dev",
        db=f"postgresql://postgres@127.0.0.1:5432/{postgres_db.database}",
        files=tmp_path / "files",
        code=make_repo(tmp_path / "code", commits=1),
    )

    async def run(work: StepFn, *, max_attempts: int = 3) -> dict[str, Any]:
        box.work = work
        job = await submit_job(rt.pool, kind, {}, environment=env, max_attempts=max_attempts)
        view = await drive(rt, job.job_id, timeout=60)
        view["_job_id"] = job.job_id
        return view

    return rt, box, run


def _steps(view: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in view["steps"]}


async def _stored(rt, job_id) -> dict[str, Any]:
    """What the ledger itself holds (not the cleaned view): no raw control characters."""
    job = await rt.pool.fetchrow("SELECT error FROM jobs WHERE id = $1", job_id)
    step = await rt.pool.fetchrow(
        "SELECT error, outputs, attempts FROM job_steps WHERE job_id = $1 AND name = 'work'",
        job_id,
    )
    events = await rt.pool.fetch(
        "SELECT event, data FROM job_events WHERE job_id = $1 ORDER BY id", job_id
    )
    stored = {
        "job_error": job["error"],
        "step_error": step["error"],
        "step_outputs": step["outputs"],
        "attempts": step["attempts"],
        "events": [(e["event"], e["data"]) for e in events],
    }
    text = json.dumps(stored, ensure_ascii=False, default=str)
    for char in RAW_CONTROLS:
        assert char not in text, f"raw {char!r} stored in the ledger"
    return stored


async def test_a_refusal_with_nul_and_esc_fails_the_job_at_once_with_the_escaped_reason(toy):
    rt, box, run = toy

    async def work(ctx: StepContext) -> dict[str, Any]:
        raise UnsafeInput("line 3: bad \x00\x1b[31m thing", line=3, excerpt="\x00\x1b[31m")

    view = await run(work)
    assert view["status"] == "failed"
    assert view["error"] == "line 3: bad \\x00\\x1b[31m thing"
    assert view["error_step"] == "work"
    assert "worker died" not in view["error"]
    work_step = _steps(view)["work"]
    assert work_step["attempts"] == 1
    assert work_step["status"] == "failed"
    assert _steps(view)["cleanup"]["status"] == "done"
    assert box.calls == 1
    stored = await _stored(rt, view["_job_id"])
    assert stored["job_error"] == "line 3: bad \\x00\\x1b[31m thing"
    assert stored["step_error"] == stored["job_error"]
    assert ("job.failed", {"error": stored["job_error"]}) in stored["events"]


@pytest.mark.parametrize("max_attempts", [1, 3])
async def test_a_plain_value_error_with_nul_is_retried_then_fails_with_the_real_reason(
    toy, max_attempts
):
    """Not an envrestore error, so transient: retried, each retry recorded, then failed."""
    rt, box, run = toy

    async def work(ctx: StepContext) -> dict[str, Any]:
        raise ValueError("bad byte \x00 in \x1b]0;title\x07 dump")

    view = await run(work, max_attempts=max_attempts)
    assert view["status"] == "failed"
    assert view["error"] == (
        f"gave up after {max_attempts} attempts: "
        "ValueError: bad byte \\x00 in \\x1b]0;title\\x07 dump"
    )
    assert "without finishing" not in view["error"]
    assert _steps(view)["work"]["attempts"] == max_attempts
    assert box.calls == max_attempts
    stored = await _stored(rt, view["_job_id"])
    retries = [data for event, data in stored["events"] if event == "step.retrying"]
    assert len(retries) == max_attempts - 1
    assert all("\\x00" in data["error"] for data in retries)


async def test_an_os_error_on_an_undecodable_file_name_is_recorded(toy):
    """A lone surrogate (what os.fsdecode makes of a non-UTF-8 name) cannot be stored as is."""
    rt, _box, run = toy
    name = os.fsdecode(b"files/\xff\x1b.txt")

    async def work(ctx: StepContext) -> dict[str, Any]:
        raise FileNotFoundError(2, "No such file or directory", name)

    view = await run(work, max_attempts=1)
    assert view["status"] == "failed"
    assert "FileNotFoundError" in view["error"]
    assert "files/\\udcff\\x1b.txt" in view["error"]
    assert _steps(view)["work"]["attempts"] == 1
    await _stored(rt, view["_job_id"])


async def test_a_failure_the_ledger_refuses_is_recorded_again_in_ascii(toy, monkeypatch):
    """Defence in depth: if raw text still reaches the ledger, the job fails with the reason."""
    rt, _box, run = toy
    monkeypatch.setattr(runner, "clean_text", lambda text, limit=0, **kw: text)

    async def work(ctx: StepContext) -> dict[str, Any]:
        exc = UnsafeInput("refused")
        exc.message = "member caf\u00e9\x00.sql refused"  # as if set after construction
        raise exc

    with capture_logs() as logs:
        view = await run(work)
    assert view["status"] == "failed"
    assert view["error"] == "member caf\\xe9\\x00.sql refused"
    refused = [e for e in logs if e["event"] == "step.failure.not_recorded"]
    assert len(refused) == 1, "the first write should have been refused"
    assert _steps(view)["work"]["attempts"] == 1
    await _stored(rt, view["_job_id"])


async def test_events_and_outputs_with_control_characters_are_stored_escaped(toy):
    rt, _box, run = toy

    async def work(ctx: StepContext) -> dict[str, Any]:
        await ctx.event(
            "archive.member",
            member="evil\x00\x1b[2J\u202etxt.sh",
            nested={"lines": ["ok", "\r\x1b[1A"]},
            size=12,
            blob="z" * 10_000,
        )
        return {"name": "a\x00b", "count": 2}

    view = await run(work)
    assert view["status"] == "succeeded"
    stored = await _stored(rt, view["_job_id"])
    assert stored["step_outputs"] == {"name": "a\\x00b", "count": 2}
    (data,) = [data for event, data in stored["events"] if event == "archive.member"]
    assert data["member"] == "evil\\x00\\x1b[2J\\u202etxt.sh"
    assert data["nested"] == {"lines": ["ok", "\\r\\x1b[1A"]}
    assert data["size"] == 12
    assert len(data["blob"]) < 2100 and data["blob"].endswith("more characters)")
