"""The step protocol on the real ledger, with a toy job kind whose steps we control."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from envrestore.pipelines import registry
from envrestore.pipelines.errors import BadInput, TransientError
from envrestore.pipelines.jobs import runner
from envrestore.pipelines.jobs.advance import stop_job
from envrestore.pipelines.jobs.kinds import JobKind
from envrestore.pipelines.jobs.model import JobStatus, Plan, StepSpec
from envrestore.pipelines.jobs.outbox import relay_once
from envrestore.pipelines.jobs.reconciler import reconcile_once
from envrestore.pipelines.jobs.records import JobRecord
from envrestore.pipelines.jobs.runner import LEASE_WAIT_SECONDS, run_step
from envrestore.pipelines.jobs.submit import submit_job
from envrestore.pipelines.jobs.views import show_job
from envrestore.pipelines.ledger.queries import sql
from tests.support.driver import drive
from tests.support.sites import make_repo

pytestmark = pytest.mark.integration


class Script:
    """What each toy step does, set per test."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fail_times: dict[str, int] = {}
        self.permanent: set[str] = set()
        self.block: dict[str, asyncio.Event] = {}
        self.started: dict[str, asyncio.Event] = {}

    def step(self, name: str):
        async def run(ctx):
            self.calls.append(name)
            self.started.setdefault(name, asyncio.Event()).set()
            if name in self.block:
                await self.block[name].wait()
            if name in self.permanent:
                raise BadInput(f"{name} cannot work with this input")
            if self.fail_times.get(name, 0) > 0:
                self.fail_times[name] -= 1
                raise TransientError(f"{name} hit a passing failure")
            ctx.progress.set(10, 10)
            return {"by": name}

        return run


def toy_kind(script: Script) -> JobKind:
    names = ["fetch", "left", "right", "join", "cleanup"]
    return JobKind(
        name="toy",
        plan=Plan(
            (
                StepSpec("fetch"),
                StepSpec("left", depends_on=("fetch",)),
                StepSpec("right", depends_on=("fetch",)),
                StepSpec("join", depends_on=("left", "right")),
                StepSpec("cleanup", on_failure=True),
            )
        ),
        steps={n: script.step(n) for n in names},
    )


@pytest.fixture
def script() -> Script:
    return Script()


@pytest.fixture
async def toy(runtime, script, tmp_path: Path, postgres_db):
    kind = toy_kind(script)
    rt = dataclasses.replace(runtime, kinds={"toy": kind})
    await registry.add_site(rt.pool, "toy")
    code = make_repo(tmp_path / "code", commits=1)
    (tmp_path / "files").mkdir()  # apart from the code: a files dir may not contain it
    env, _ = await registry.add_environment(
        rt.pool,
        "toy.dev",
        db=f"postgresql://postgres@127.0.0.1:5432/{postgres_db.database}",
        files=tmp_path / "files",
        code=code,
    )
    return rt, kind, env


async def submit(rt, kind, env, **kw):
    return await submit_job(
        rt.pool, kind, kw.pop("params", {}), environment=env, max_attempts=3, **kw
    )


async def test_steps_run_in_dependency_order_and_cleanup_is_skipped(toy, script):
    rt, kind, env = toy
    job = await submit(rt, kind, env)
    view = await drive(rt, job.job_id)
    assert view["status"] == "succeeded"
    assert script.calls[0] == "fetch" and script.calls[-1] == "join"
    assert sorted(script.calls[1:3]) == ["left", "right"]
    assert {s["name"]: s["status"] for s in view["steps"]}["cleanup"] == "skipped"
    assert all(s["attempts"] == 1 for s in view["steps"] if s["name"] != "cleanup")


async def test_transient_errors_are_retried_then_succeed(toy, script):
    rt, kind, env = toy
    script.fail_times["left"] = 2
    job = await submit(rt, kind, env)
    view = await drive(rt, job.job_id)
    assert view["status"] == "succeeded"
    left = {s["name"]: s for s in view["steps"]}["left"]
    assert left["attempts"] == 3


async def test_transient_errors_past_the_cap_fail_the_job_and_run_cleanup(toy, script):
    rt, kind, env = toy
    script.fail_times["right"] = 10
    job = await submit(rt, kind, env)
    view = await drive(rt, job.job_id)
    assert view["status"] == "failed"
    assert view["error_step"] == "right"
    assert "gave up after 3 attempts" in view["error"]
    assert "passing failure" in view["error"]
    steps = {s["name"]: s["status"] for s in view["steps"]}
    assert steps["join"] == "skipped" and steps["cleanup"] == "done"
    assert "join" not in script.calls


async def test_permanent_error_fails_at_once_with_the_message(toy, script):
    rt, kind, env = toy
    script.permanent.add("fetch")
    job = await submit(rt, kind, env)
    view = await drive(rt, job.job_id)
    assert view["status"] == "failed"
    assert view["error"] == "fetch cannot work with this input"
    assert {s["name"]: s for s in view["steps"]}["fetch"]["attempts"] == 1
    assert script.calls == ["fetch", "cleanup"]


async def test_cleanup_step_delivered_while_the_job_runs_does_nothing(toy, script):
    """A stray cleanup message (reconciler, duplicate) must not touch a live job."""
    rt, kind, env = toy
    job = await submit(rt, kind, env)
    await run_step(rt, job.job_id, "cleanup")
    assert "cleanup" not in script.calls
    view = await drive(rt, job.job_id)
    assert view["status"] == "succeeded"
    assert "cleanup" not in script.calls


async def test_a_cleanup_message_that_came_too_early_is_sent_again_once_ready(toy, script):
    """Cancel while a step runs; a cleanup message that arrives before that step has
    stopped is not lost: the step that makes it ready sends it (no minute-long wait)."""
    from envrestore.pipelines.jobs.cancel import cancel_job

    rt, kind, env = toy
    job = await submit(rt, kind, env)
    await relay_once(rt.pool, lambda j, s: None)
    script.block["fetch"] = asyncio.Event()
    running = asyncio.create_task(run_step(rt, job.job_id, "fetch"))
    await script.started.setdefault("fetch", asyncio.Event()).wait()
    await cancel_job(rt.pool, job.job_id, rt.kinds)
    # A stray or early cleanup message is relayed (marking it sent) and delivered.
    await rt.pool.execute("INSERT INTO outbox (job_id, step) VALUES ($1, 'cleanup')", job.job_id)
    await relay_once(rt.pool, lambda j, s: None)
    await run_step(rt, job.job_id, "cleanup")
    assert "cleanup" not in script.calls
    script.block.pop("fetch").set()
    await running  # fetch stops (or finishes): cleanup is now ready
    queued = await rt.pool.fetchval(
        "SELECT count(*) FROM outbox WHERE job_id = $1 AND step = 'cleanup'", job.job_id
    )
    assert queued == 1
    sent: list = []
    await relay_once(rt.pool, lambda j, s: sent.append(s))
    assert sent == ["cleanup"]
    await run_step(rt, job.job_id, "cleanup")
    assert script.calls == ["fetch", "cleanup"]
    view = await show_job(rt.pool, job.job_id)
    assert view["status"] == "cancelled"


async def test_a_step_whose_worker_died_is_reclaimed_after_its_heartbeat_expires(toy, script):
    rt, kind, env = toy
    job = await submit(rt, kind, env)
    sent: list = []
    await relay_once(rt.pool, lambda j, s: sent.append((j, s)))
    script.block["fetch"] = asyncio.Event()
    dying = asyncio.create_task(run_step(rt, job.job_id, "fetch"))
    await script.started.setdefault("fetch", asyncio.Event()).wait()
    dying.cancel()  # the worker vanishes: no more heartbeats, the step stays 'running'
    with pytest.raises(asyncio.CancelledError):
        await dying
    script.block.pop("fetch").set()
    # A redelivery before expiry is refused: the attempt might still be alive.
    await run_step(rt, job.job_id, "fetch")
    assert script.calls == ["fetch"]
    await asyncio.sleep(rt.settings.stale_after_seconds + 0.5)
    report = await reconcile_once(rt)
    assert report.expired == 1
    view = await drive(rt, job.job_id)
    assert view["status"] == "succeeded"
    assert {s["name"]: s for s in view["steps"]}["fetch"]["attempts"] == 2


async def test_a_second_job_waits_for_the_lease_and_runs_after(toy, script):
    rt, kind, env = toy
    script.block["join"] = asyncio.Event()
    first = await submit(rt, kind, env)
    second = await submit(rt, kind, env)
    first_run = asyncio.create_task(drive(rt, first.job_id))
    await script.started.setdefault("join", asyncio.Event()).wait()
    # While the first holds the lease, the second cannot start any step.
    for _ in range(3):
        sent: list = []
        await relay_once(rt.pool, lambda j, s: sent.append((j, s)))
        for j, s in sent:
            if j == second.job_id:
                await run_step(rt, j, s)
        await asyncio.sleep(0.3)
    view = await show_job(rt.pool, second.job_id)
    assert view["status"] == "queued"
    assert all(s["attempts"] == 0 for s in view["steps"])
    script.block.pop("join").set()
    assert (await first_run)["status"] == "succeeded"
    assert (await drive(rt, second.job_id))["status"] == "succeeded"
    lease = await rt.pool.fetchrow("SELECT job_id, fencing_token FROM env_leases")
    assert lease["job_id"] is None
    assert lease["fencing_token"] == 2


async def test_a_job_that_lost_its_lease_fails_without_running_its_step(toy, script):
    rt, kind, env = toy
    job = await submit(rt, kind, env)
    sent: list = []
    await relay_once(rt.pool, lambda j, s: sent.append((j, s)))
    await run_step(rt, job.job_id, "fetch")  # takes the lease (token 1)
    # An operator (or a bug) hands the environment to someone else: token 2.
    await rt.pool.execute("UPDATE env_leases SET job_id = NULL, fencing_token = fencing_token + 1")
    await run_step(rt, job.job_id, "left")
    view = await show_job(rt.pool, job.job_id)
    steps = {s["name"]: s for s in view["steps"]}
    assert "left" not in script.calls
    assert steps["left"]["status"] == "pending"
    assert view["status"] == "running"


async def test_step_logs_are_bound_with_job_step_site_env_and_attempt(toy):
    rt, kind, env = toy
    job = await submit(rt, kind, env)
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        await drive(rt, job.job_id)
    finished = [e for e in logs if e["event"] == "step.finished"]
    assert {e["step"] for e in finished} == {"fetch", "left", "right", "join"}
    for entry in finished:
        assert entry["job_id"] == str(job.job_id)
        assert (entry["site"], entry["env"], entry["attempt"]) == ("toy", "dev", 1)


async def _relayed(rt) -> list:
    sent: list = []
    await relay_once(rt.pool, lambda j, s: sent.append((j, s)))
    return sent


async def _outbox_due_in(rt, job_id) -> list[float]:
    """Seconds until each of the job's queued messages is due (negative: due already)."""
    rows = await rt.pool.fetch(
        "SELECT extract(epoch FROM available_at - now())::float AS due_in FROM outbox "
        "WHERE job_id = $1",
        job_id,
    )
    return [row["due_in"] for row in rows]


async def test_a_step_waiting_for_the_lease_is_put_off_and_woken_when_the_holder_ends(toy, script):
    """The waiting step is not sent again every second: its message is put off for the
    long safety net, and the job ahead of it makes it due the moment it ends."""
    rt, kind, env = toy
    script.block["join"] = asyncio.Event()
    first = await submit(rt, kind, env)
    second = await submit(rt, kind, env)
    first_run = asyncio.create_task(drive(rt, first.job_id))
    await script.started.setdefault("join", asyncio.Event()).wait()
    # The driver of the first job delivered the second's first message too: it waits.
    view = await show_job(rt.pool, second.job_id)
    assert view["status"] == "queued"
    assert all(s["attempts"] == 0 for s in view["steps"])
    assert all(due > LEASE_WAIT_SECONDS - 5 for due in await _outbox_due_in(rt, second.job_id))
    # Nothing of the second job is due while the first holds the lease.
    sent: list = []
    await relay_once(rt.pool, lambda j, s: sent.append((j, s)))
    assert all(j != second.job_id for j, _ in sent)

    script.block.pop("join").set()
    assert (await first_run)["status"] == "succeeded"
    # Woken by the first job's end: the first job's driver, which delivers whatever is
    # due, ran the second's first step already (not 30 s later).
    steps = {s["name"]: s for s in (await show_job(rt.pool, second.job_id))["steps"]}
    assert steps["fetch"]["attempts"] == 1
    assert (await drive(rt, second.job_id))["status"] == "succeeded"
    tokens = await rt.pool.fetch(
        "SELECT id, lease_token FROM jobs WHERE id = ANY($1::uuid[]) ORDER BY lease_token",
        [first.job_id, second.job_id],
    )
    assert [(r["id"], r["lease_token"]) for r in tokens] == [(first.job_id, 1), (second.job_id, 2)]


async def test_a_waiter_behind_an_older_job_cancelled_while_waiting_is_woken(toy, script):
    """A job waits behind an older one that never held the lease; that one is cancelled:
    it releases nothing, but the newer job is woken at once (not after the safety net)."""
    rt, kind, env = toy
    older = await submit(rt, kind, env)
    newer = await submit(rt, kind, env)
    # The relay took both first messages; only the newer one is delivered (yet).
    assert {j for j, _ in await _relayed(rt)} == {older.job_id, newer.job_id}
    await run_step(rt, newer.job_id, "fetch")  # first come, first served: it must wait
    assert all(d > LEASE_WAIT_SECONDS - 5 for d in await _outbox_due_in(rt, newer.job_id))
    async with rt.pool.acquire() as conn, conn.transaction():
        await conn.execute(sql("lock_job"), older.job_id)
        await stop_job(conn, older.job_id, status=JobStatus.CANCELLED, error=None, step=None)
    due = await _outbox_due_in(rt, newer.job_id)
    assert due and all(d <= 0 for d in due)
    assert (await drive(rt, newer.job_id))["status"] == "succeeded"
    assert (await show_job(rt.pool, older.job_id))["status"] == "cancelled"


async def test_a_lease_that_came_free_while_deciding_to_wait_is_taken_not_waited_for(toy):
    """The last look under the lease's lock: a release between the first try and the
    decision to wait is seen, so the step takes the lease instead of sleeping 30 s."""
    rt, kind, env = toy
    job = await submit(rt, kind, env)
    record = JobRecord.from_row(await rt.pool.fetchrow(sql("get_job"), job.job_id))
    token = await runner._wait_for_lease(rt, record, "fetch")
    assert token == 1
    assert await _outbox_due_in(rt, job.job_id) == [pytest.approx(0, abs=1)]
