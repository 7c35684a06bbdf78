"""Cloning content from one live environment into another, on real services, as a user checks it.

A clone (`CloneRequest`) reads the source as it is now (a dump in one
transaction, files from a hard-linked copy) and replaces the target's
database and files through the content pipeline. Every environment starts
with content of its own (rows, files, commits, tags), so "the target now
equals the source" holds only if the clone made it so; refusals leave every
environment as it was and create no job. The last tests keep writing to the
source while the clone reads it: what arrives must be one consistent moment
of the database, and only whole files.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from envrestore.pipelines.backup.service import list_backups
from envrestore.pipelines.dsn import Dsn
from envrestore.pipelines.engines import engine_for
from envrestore.pipelines.errors import BadInput
from envrestore.pipelines.jobs.outbox import relay_once
from envrestore.pipelines.jobs.runner import run_step
from envrestore.pipelines.jobs.runtime import Runtime
from envrestore.pipelines.jobs.views import list_jobs, show_job
from envrestore.pipelines.registry import get_environment
from envrestore.pipelines.requests import CloneRequest, RestoreRequest
from tests.support.driver import drive
from tests.support.environments import (
    SiteEnv,
    assert_all_differ,
    assert_failed,
    run_sql,
    staging_keys,
    step_statuses,
    with_settings,
)
from tests.support.producing import producer, submit_rollback
from tests.support.sites import tree_digest

pytestmark = pytest.mark.integration


async def clone(rt: Runtime, source: str, target: str, **fields: Any) -> tuple[uuid.UUID, dict]:
    job = await producer(rt).submit(CloneRequest(source, target, **fields))
    return job.job_id, await drive(rt, job.job_id)


async def job_count(rt: Runtime) -> int:
    return len(await list_jobs(rt.pool, limit=1000))


async def rollback_status(rt: Runtime, job_id: uuid.UUID) -> str | None:
    return await rt.pool.fetchval("SELECT status FROM rollback_points WHERE job_id = $1", job_id)


def leftovers_beside(env: SiteEnv) -> list[str]:
    """envrestore's own directories beside an environment's files (snapshots, staging, ...)."""
    return sorted(p.name for p in env.files.parent.iterdir() if ".envrestore-" in p.name)


async def object_keys(rt: Runtime, prefix: str) -> list[str]:
    return sorted([info.key async for info in rt.store.list(prefix)])


async def drop_database(dsn: Dsn) -> None:
    """Drop `dsn`'s database from another database of the same server (as an admin would)."""
    if dsn.engine == "mariadb":
        await run_sql(dsn.with_database("mysql"), f"DROP DATABASE `{dsn.database}`")
    else:
        await run_sql(dsn.with_database("postgres"), f'DROP DATABASE "{dsn.database}" WITH (FORCE)')


async def drive_through(rt: Runtime, job_id: uuid.UUID, step: str, timeout: float = 60) -> None:
    """Run the job's steps until `step` is done; the next steps' messages stay queued."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while step_statuses(await show_job(rt.pool, job_id)).get(step) != "done":
        assert loop.time() < deadline, f"{step} of job {job_id} did not finish"
        sent: list[tuple[uuid.UUID, str]] = []
        await relay_once(rt.pool, lambda j, s: sent.append((j, s)))
        if sent:
            await asyncio.gather(*(run_step(rt, j, s) for j, s in sent))
        else:
            await asyncio.sleep(0.05)


async def let_background_work_finish(timeout: float = 60) -> None:
    """Wait for every other task of this event loop (none, once a job has truly settled)."""
    others = asyncio.all_tasks() - {asyncio.current_task()}
    if others:
        await asyncio.wait(others, timeout=timeout)


async def add_later_content(env: SiteEnv) -> None:
    """The source after some work: a new table with a row and a new file."""
    await run_sql(
        env.dsn, "CREATE TABLE later_work (id INT PRIMARY KEY); INSERT INTO later_work VALUES (7);"
    )
    (env.files / "later.txt").write_text("written after the clone\n")


# -- 1. into live, without force, with a rollback point --------------------------------------


async def test_clone_into_live_needs_no_force_and_rolls_back(runtime, make_env):
    dev = await make_env("shop.dev")
    live = await make_env("shop.live")
    assert (await get_environment(runtime.pool, "shop.live")).protected
    source = await dev.snapshot()
    before = await live.snapshot()
    assert_all_differ(source, before)

    job_id, view = await clone(runtime, "shop.dev", "shop.live")

    assert view["status"] == "succeeded", view
    assert (view["kind"], view["requested_by"]) == ("clone", "operator:tests")
    after = await live.snapshot()
    assert (after.tables, after.rows, after.files) == (source.tables, source.rows, source.files)
    assert (after.head, after.tags, after.status) == (before.head, before.tags, before.status)
    assert await dev.snapshot() == source  # the source is only read
    assert await staging_keys(runtime) == []
    assert leftovers_beside(dev) == []
    assert await rollback_status(runtime, job_id) == "kept"

    undo = await submit_rollback(runtime, job_id)
    assert (await drive(runtime, undo.job_id))["status"] == "succeeded"
    assert await live.snapshot() == before
    assert await rollback_status(runtime, job_id) == "rolled_back"
    assert await dev.snapshot() == source


# -- 2. one part only --------------------------------------------------------------------------


@pytest.mark.parametrize("part", ["files", "database"])
async def test_clone_of_one_part_changes_only_that_part(runtime, make_env, part):
    dev = await make_env("shop.dev")
    test = await make_env("shop.test")
    source = await dev.snapshot()
    before = await test.snapshot()
    assert_all_differ(source, before)

    _, view = await clone(runtime, "shop.dev", "shop.test", elements=(part,))

    assert view["status"] == "succeeded", view
    after = await test.snapshot()
    if part == "files":
        assert after.files == source.files
        assert (after.tables, after.rows) == (before.tables, before.rows)
        assert "import_db" not in step_statuses(view)
    else:
        assert (after.tables, after.rows) == (source.tables, source.rows)
        assert after.files == before.files
        assert "import_files" not in step_statuses(view)
    assert (after.head, after.tags, after.status) == (before.head, before.tags, before.status)
    assert await dev.snapshot() == source
    assert await staging_keys(runtime) == []
    assert leftovers_beside(dev) == []


# -- 3. the snapshot kept as a backup of the source -------------------------------------------


async def test_a_kept_snapshot_is_a_backup_of_the_source(runtime, make_env):
    dev = await make_env("shop.dev")
    live = await make_env("shop.live")
    test = await make_env("shop.test")
    source = await dev.snapshot()
    test_before = await test.snapshot()

    job_id, view = await clone(runtime, "shop.dev", "shop.live", keep_snapshot=True)

    assert view["status"] == "succeeded", view
    after = await live.snapshot()
    assert (after.tables, after.rows, after.files) == (source.tables, source.rows, source.files)
    [backup] = await list_backups(runtime.pool, "shop.dev")
    assert backup.job_id == job_id
    assert view["outputs"]["snapshot_backup_id"] == backup.id
    assert (backup.site, backup.env, backup.engine) == ("shop", "dev", dev.engine)
    assert sorted(p["part"] for p in backup.parts) == ["database", "files"]  # no code
    prefix = f"backups/shop/dev/{backup.id}/"
    for part in backup.parts:
        assert part["key"].startswith(prefix)
        data = await runtime.store.get_bytes(part["key"], max_size=1 << 30)
        assert (len(data), hashlib.sha256(data).hexdigest()) == (part["size"], part["sha256"])
    assert len(await object_keys(runtime, prefix)) == 3  # the two parts and the manifest
    assert await staging_keys(runtime) == []
    assert await list_backups(runtime.pool, "shop.live") == []

    # dev moves on; test restored from the kept snapshot gets dev as it was at the clone.
    await add_later_content(dev)
    request = RestoreRequest(
        "shop.test", source="shop.dev", backup=backup.id, elements=("database", "files")
    )
    restore = await producer(runtime).submit(request)
    restored = await drive(runtime, restore.job_id)

    assert restored["status"] == "succeeded", restored
    now = await test.snapshot()
    assert (now.tables, now.rows, now.files) == (source.tables, source.rows, source.files)
    assert (now.head, now.tags) == (test_before.head, test_before.tags)


async def test_a_failed_clone_keeps_no_snapshot(runtime, make_env):
    dev = await make_env("shop.dev")
    live = await make_env("shop.live")
    before = await live.snapshot()
    # Slow streams: the files part is still uploading when the database part fails.
    rt = with_settings(runtime, stream_rate_limit=200_000)

    job = await producer(rt).submit(CloneRequest("shop.dev", "shop.live", keep_snapshot=True))
    backup_id = (await show_job(rt.pool, job.job_id))["params"]["snapshot_backup_id"]
    assert backup_id
    await drive_through(rt, job.job_id, "resolve")
    await drop_database(dev.dsn)  # the source's database disappears before it is read
    view = await drive(rt, job.job_id)

    assert_failed(view, "fetch", dev.dsn.database)
    assert await live.snapshot() == before
    assert await rollback_status(rt, job.job_id) is None
    assert await list_backups(rt.pool, "shop.dev") == []
    # Once the job has settled, nothing of its snapshot is left, and nothing it started
    # is still at work: whatever was still running is let finish before looking again.
    beside_at_end = leftovers_beside(dev)
    await let_background_work_finish()
    left = {
        "beside the source's files when the job ended": beside_at_end,
        "beside the source's files afterwards": leftovers_beside(dev),
        "under the snapshot backup's prefix": await object_keys(
            rt, f"backups/shop/dev/{backup_id}/"
        ),
        "under backups/": await object_keys(rt, "backups/"),
        "under staging/": await staging_keys(rt),
    }
    assert left == {where: [] for where in left}
    assert await list_backups(rt.pool, "shop.dev") == []


# -- 4. refused before a job exists ----------------------------------------------------------


async def test_clones_refused_at_submit(runtime, make_env, other_db):
    dev = await make_env("shop.dev")
    live = await make_env("shop.live")
    blog = await make_env("blog.dev", make_db=other_db)
    snapshots = [await env.snapshot() for env in (dev, live, blog)]
    jobs = await job_count(runtime)

    with pytest.raises(BadInput, match=r"cannot clone shop\.dev into itself"):
        await producer(runtime).submit(CloneRequest("shop.dev", "shop.dev"))
    with pytest.raises(BadInput, match="engine") as refused:
        await producer(runtime).submit(CloneRequest("blog.dev", "shop.live"))
    assert f"blog.dev runs {blog.engine} but shop.live runs {live.engine}" in str(refused.value)
    with pytest.raises(BadInput, match="code"):
        await producer(runtime).submit(
            CloneRequest("shop.dev", "shop.live", elements=("database", "files", "code"))
        )
    with pytest.raises(BadInput, match="code"):
        await producer(runtime).submit(CloneRequest("shop.dev", "shop.live", elements=("code",)))

    assert await job_count(runtime) == jobs
    assert [await env.snapshot() for env in (dev, live, blog)] == snapshots

    # What the engine refusal suggests works: the files alone, between engines.
    _, view = await clone(runtime, "blog.dev", "shop.live", elements=("files",))
    assert view["status"] == "succeeded", view
    after = await live.snapshot()
    assert after.files == snapshots[2].files
    assert (after.tables, after.rows) == (snapshots[1].tables, snapshots[1].rows)


# -- 5. consistency while the source is being written ----------------------------------------

ORDERS_DDL = (
    "CREATE TABLE orders (id INT PRIMARY KEY, note VARCHAR(64) NOT NULL); "
    "CREATE TABLE items (id INT PRIMARY KEY, order_id INT NOT NULL, n INT NOT NULL, "
    "payload TEXT NOT NULL);"
)


def _order_values(order: int) -> tuple[str, str]:
    """The rows of one order: itself and its 3 items (random, so the dump does not shrink)."""
    items = ", ".join(
        f"({order * 3 + n}, {order}, {n}, '{os.urandom(400).hex()}')" for n in range(3)
    )
    return f"({order}, 'order {order}')", items


class OrderWriter:
    """Writes orders into a database, each order with its 3 items in one transaction."""

    def __init__(self, dsn: Dsn) -> None:
        self.dsn = dsn
        self.count = 0
        self.committed_at: list[float] = []  # time.time() after each commit
        self.under_way = asyncio.Event()  # set after the first few writes
        self.error: BaseException | None = None

    async def create(self, orders: int) -> None:
        await run_sql(self.dsn, ORDERS_DDL)
        for start in range(0, orders, 100):
            values = [_order_values(o) for o in range(start + 1, min(start + 100, orders) + 1)]
            await run_sql(
                self.dsn,
                f"INSERT INTO orders VALUES {', '.join(o for o, _ in values)}; "
                f"INSERT INTO items VALUES {', '.join(i for _, i in values)};",
            )
        self.count = orders

    async def run(self, stop: asyncio.Event) -> None:
        conn = None
        if self.dsn.engine == "postgresql":
            conn = await engine_for(self.dsn).connect(self.dsn)  # type: ignore[attr-defined]
        try:
            while not stop.is_set():
                order = self.count + 1
                own, items = _order_values(order)
                statements = f"INSERT INTO orders VALUES {own}; INSERT INTO items VALUES {items};"
                if conn is None:
                    await run_sql(self.dsn, f"START TRANSACTION; {statements} COMMIT;")
                else:
                    async with conn.transaction():
                        await conn.execute(f"INSERT INTO orders VALUES {own}")
                        await conn.execute(f"INSERT INTO items VALUES {items}")
                self.count = order
                self.committed_at.append(time.time())
                if len(self.committed_at) >= 5:
                    self.under_way.set()
                await asyncio.sleep(0.005)
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            if conn is not None:
                await conn.close()


async def select(dsn: Dsn, sql: str) -> list[tuple[str, ...]]:
    """Rows as tuples of strings, on either engine."""
    engine = engine_for(dsn)
    if dsn.engine == "mariadb":
        return [tuple(row) for row in await engine.query(dsn, sql)]  # type: ignore[attr-defined]
    conn = await engine.connect(dsn)  # type: ignore[attr-defined]
    try:
        return [tuple(str(v) for v in row) for row in await conn.fetch(sql)]
    finally:
        await conn.close()


async def retry_errors(rt: Runtime, job_id: uuid.UUID, step: str) -> list[str]:
    """The errors of the attempts of `step` that were retried (the job's events)."""
    rows = await rt.pool.fetch(
        "SELECT data->>'error' AS error FROM job_events "
        "WHERE job_id = $1 AND step = $2 AND event = 'step.retrying' ORDER BY id",
        job_id,
        step,
    )
    return [row["error"] for row in rows]


def step_window(view: dict[str, Any], name: str) -> tuple[float, float]:
    [step] = [s for s in view["steps"] if s["name"] == name]
    return (
        datetime.fromisoformat(step["started_at"]).timestamp(),
        datetime.fromisoformat(step["finished_at"]).timestamp(),
    )


def written_between(times: list[float], window: tuple[float, float]) -> int:
    return sum(1 for t in times if window[0] <= t <= window[1])


async def test_a_clone_is_one_consistent_moment_of_a_database_being_written(runtime, make_env):
    dev = await make_env("shop.dev")
    live = await make_env("shop.live")
    writer = OrderWriter(dev.dsn)
    await writer.create(400)  # ~1 MB of random items: the dump streams for a few seconds
    others = {t: d for t, d in (await dev.snapshot()).rows.items() if t not in ("orders", "items")}
    rt = with_settings(runtime, stream_rate_limit=250_000)

    stop = asyncio.Event()
    writing = asyncio.create_task(writer.run(stop))
    try:
        await asyncio.wait_for(writer.under_way.wait(), 30)  # writing before the clone is asked
        submitted_at, at_submit = time.time(), writer.count
        job = await producer(rt).submit(
            CloneRequest("shop.dev", "shop.live", elements=("database",))
        )
        view = await drive(rt, job.job_id)
    finally:
        stop.set()
        await writing
    at_end = writer.count

    assert view["status"] == "succeeded", view
    assert writer.error is None
    # The writer did write while the clone ran, and while the source was being read.
    assert written_between(writer.committed_at, (submitted_at, time.time())) > 0
    assert written_between(writer.committed_at, step_window(view, "fetch")) > 0

    orders = {int(o) for (o,) in await select(live.dsn, "SELECT id FROM orders")}
    items = await select(live.dsn, "SELECT order_id, count(*) FROM items GROUP BY order_id")
    per_order = {int(o): int(n) for o, n in items}
    assert at_submit <= len(orders) <= at_end, (at_submit, len(orders), at_end)
    assert orders == set(range(1, len(orders) + 1))  # the orders up to one moment, none missing
    assert per_order == dict.fromkeys(orders, 3)  # every order with exactly its 3 items
    after = await live.snapshot()
    assert {t: d for t, d in after.rows.items() if t not in ("orders", "items")} == others
    assert await staging_keys(runtime) == []


# Files: each upload says its name and version on its first line; the rest follows from both.
UPLOAD_SIZE = 64 << 10


def upload_content(number: int, version: int) -> bytes:
    head = f"{number:05d}.txt v{version}\n".encode()
    body = (f"{number:05d}.{version} " * (UPLOAD_SIZE // 8 + 1)).encode()
    return head + body[: UPLOAD_SIZE - len(head)]


def whole(path: Path) -> bool:
    """The file is one complete version of itself (not cut short, not two versions mixed)."""
    data = path.read_bytes()
    name, _, version = data.split(b"\n", 1)[0].decode("ascii", "replace").partition(" v")
    if name != path.name or not version.isdigit():
        return False
    return data == upload_content(int(path.stem), int(version))


class UploadWriter:
    """Adds uploads and replaces some, each written to a temporary name and renamed in."""

    def __init__(self, uploads: Path, temp: Path) -> None:
        self.uploads = uploads
        self.temp = temp
        self.versions: dict[int, int] = {}
        self.written_at: list[float] = []
        self.under_way = threading.Event()  # set after the first few writes
        self.error: BaseException | None = None
        uploads.mkdir(parents=True, exist_ok=True)
        temp.mkdir(parents=True, exist_ok=True)

    def write(self, number: int) -> None:
        version = self.versions.get(number, 0) + 1
        scratch = self.temp / f"{number:05d}.{version}.part"
        scratch.write_bytes(upload_content(number, version))
        scratch.replace(self.uploads / f"{number:05d}.txt")
        self.versions[number] = version
        self.written_at.append(time.time())

    def add(self) -> None:
        self.write(len(self.versions) + 1)

    def count(self) -> int:
        return len(self.versions)

    def run(self, stop: threading.Event) -> None:
        chosen = random.Random(7)
        try:
            rounds = 0
            while not stop.is_set():
                self.add()
                self.write(chosen.randint(1, len(self.versions)))  # replace one by rename
                rounds += 1
                if rounds >= 5:
                    self.under_way.set()
                time.sleep(0.005)
        except BaseException as exc:
            self.error = exc
            raise


@pytest.mark.parametrize("engine", ["postgresql"], indirect=True)
async def test_a_clone_copies_only_whole_files_while_uploads_are_written(runtime, make_env):
    dev = await make_env("shop.dev")
    live = await make_env("shop.live")
    writer = UploadWriter(dev.files / "uploads", dev.files.parent / "incoming")
    for _ in range(200):
        writer.add()
    (dev.files / "noise.bin").write_bytes(os.urandom(1 << 20))  # the archive streams for seconds
    others = {p: d for p, d in tree_digest(dev.files).items() if not p.startswith("uploads")}
    rt = with_settings(runtime, stream_rate_limit=500_000)

    stop = threading.Event()
    thread = threading.Thread(target=writer.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert await asyncio.to_thread(writer.under_way.wait, 30)  # writing before the clone
        submitted_at, at_submit = time.time(), writer.count()
        job = await producer(rt).submit(CloneRequest("shop.dev", "shop.live", elements=("files",)))
        view = await drive(rt, job.job_id)
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 30)
    at_end = writer.count()

    # tar read a tree that never changed under it: the first attempt of fetch succeeded.
    assert await retry_errors(rt, job.job_id, "fetch") == []
    [fetch] = [s for s in view["steps"] if s["name"] == "fetch"]
    assert (fetch["status"], fetch["attempts"], fetch["error"]) == ("done", 1, None), fetch
    assert "file changed as we read it" not in str(view)
    assert view["status"] == "succeeded", view
    assert writer.error is None
    assert written_between(writer.written_at, (submitted_at, time.time())) > 0
    assert written_between(writer.written_at, step_window(view, "fetch")) > 0

    uploads = sorted((live.files / "uploads").iterdir())
    assert at_submit <= len(uploads) <= at_end, (at_submit, len(uploads), at_end)
    broken = [p.name for p in uploads if not whole(p)]
    assert broken == []
    assert {p.name for p in uploads} <= {f"{n:05d}.txt" for n in writer.versions}
    after = {p: d for p, d in tree_digest(live.files).items() if not p.startswith("uploads")}
    assert after == others
    assert leftovers_beside(dev) == []
    assert await staging_keys(runtime) == []
