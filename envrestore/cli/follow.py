"""`--wait`: follow a job in the ledger, one line per step, redrawn from the ledger's view.

Each frame is drawn from the job view alone (`render_frame`), so what is
shown is what the ledger has — also the last frame, drawn again after the job
ended, when cleanup steps may still have changed. Rules of a frame:

* a bar and `done / total` only for a step that moves bytes; `done` is never
  shown above `total` (an estimate that fell short shows no total);
* the rate is bytes per second since the step started (from the ledger's
  times, so it does not depend on how often we poll);
* a step that moves no bytes shows a spinner while it runs, and its state.

Frames are redrawn when the ledger says the job changed: migration 011's
triggers NOTIFY `envrestore_job` (payload: the job id) when a job, one of its
steps or its events change, and the follower LISTENs on one connection of its
pool. A slow poll (`SAFETY_POLL_SECONDS`) stays as a safety net, so a lost
notification (a dropped connection) never hangs `--wait`. The API's SSE stream
could listen on the same channel.

Ctrl-C stops following, not the job: `StoppedFollowing` says how to follow it
again or cancel it.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from envrestore.pipelines.text import clean_text

if TYPE_CHECKING:  # rich and asyncpg are imported when a job is followed (cli/common.py)
    import asyncpg
    from rich.console import RenderableType
    from rich.spinner import Spinner
    from rich.table import Table

TERMINAL = {"succeeded", "failed", "cancelled"}
#: After the job ended, how long to wait for its cleanup steps to settle before the last frame.
SETTLE_SECONDS = 5.0
#: The channel the ledger notifies with a job's id when it changes (migration 011).
CHANNEL = "envrestore_job"
#: Read the job this often even when no notification came (one lost must not hang --wait).
SAFETY_POLL_SECONDS = 5.0
#: At most this many reads per second, however often a busy job notifies.
MIN_READ_SECONDS = 0.1
_STATUS_STYLE = {
    "done": "green",
    "failed": "bold red",
    "running": "cyan",
    "pending": "dim",
    "skipped": "dim",
}


class StoppedFollowing(Exception):
    """The operator pressed Ctrl-C while following; the job itself goes on."""

    def __init__(self, job_id: uuid.UUID) -> None:
        self.job_id = job_id
        super().__init__(
            f"stopped following job {job_id}; it goes on on the workers. "
            f"Follow it again with: envrestore job show {job_id} --wait; "
            f"cancel it with: envrestore job cancel {job_id}"
        )


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _clock(seconds: float) -> str:
    whole = max(0, int(seconds))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def step_amounts(step: dict[str, Any]) -> tuple[int, int | None]:
    """(done, total) as shown: a total below done (a short estimate) is no total, and a
    finished step with no total is complete."""
    done = max(0, int(step.get("bytes_done") or 0))
    total = step.get("bytes_total")
    if total is not None and (total <= 0 or done > total):
        total = None
    if step["status"] == "done" and total is not None:
        done = total
    return done, total


def moves_bytes(step: dict[str, Any]) -> bool:
    return bool(step.get("bytes_done") or step.get("bytes_total"))


def amount_text(step: dict[str, Any]) -> str:
    """`12.3 MB / 40.0 MB`, `12.3 MB` without a total, or '' for a step that moves no bytes."""
    from rich.filesize import decimal

    if not moves_bytes(step):
        return ""
    done, total = step_amounts(step)
    return f"{decimal(done)} / {decimal(total)}" if total is not None else decimal(done)


def rate_text(step: dict[str, Any], now: datetime) -> str:
    """Bytes per second since the step started, e.g. `4.1 MB/s`; '' when there is none."""
    started = _when(step.get("started_at"))
    if not moves_bytes(step) or started is None or step["status"] == "pending":
        return ""
    end = _when(step.get("finished_at")) if step["status"] != "running" else None
    seconds = ((end or now) - started).total_seconds()
    if seconds < 0.1:
        return ""
    from rich.filesize import decimal

    done, _ = step_amounts(step)
    return f"{decimal(int(done / seconds))}/s"


def elapsed_text(step: dict[str, Any], now: datetime) -> str:
    started = _when(step.get("started_at"))
    if started is None or step["status"] == "pending":
        return ""
    end = _when(step.get("finished_at")) if step["status"] != "running" else None
    return _clock(((end or now) - started).total_seconds())


class FrameRenderer:
    """Draws frames; keeps one spinner per step so spinners turn between frames."""

    def __init__(self) -> None:
        self._spinners: dict[str, Spinner] = {}

    def _progress_cell(self, step: dict[str, Any]) -> RenderableType:
        from rich.progress_bar import ProgressBar
        from rich.spinner import Spinner
        from rich.text import Text

        status = step["status"]
        if not moves_bytes(step):
            if status == "running":
                return self._spinners.setdefault(step["name"], Spinner("dots"))
            return Text("")
        done, total = step_amounts(step)
        if total is None and status == "running":
            return ProgressBar(total=None)  # no total: a pulse, not a wrong bar
        return ProgressBar(total=total or 1, completed=done if total else 1)

    def render(self, view: dict[str, Any], now: datetime | None = None) -> Table:
        """One frame of a job view: every step as the ledger has it."""
        from rich.table import Table
        from rich.text import Text

        now = now or datetime.now(UTC)
        # The bar takes what the other columns leave (they are never cut).
        table = Table.grid(padding=(0, 1), expand=True)
        table.add_column("step", no_wrap=True)
        table.add_column("progress", no_wrap=True, ratio=1, min_width=4)
        table.add_column("amount", no_wrap=True, justify="right")
        table.add_column("rate", no_wrap=True, justify="right")
        table.add_column("status", no_wrap=True)
        table.add_column("elapsed", no_wrap=True, justify="right")
        for step in view["steps"]:
            status = clean_text(step["status"], 20, newlines=False)
            table.add_row(
                Text(clean_text(step["name"], 40, newlines=False)),
                self._progress_cell(step),
                Text(amount_text(step)),
                Text(rate_text(step, now)),
                Text(status, style=_STATUS_STYLE.get(status, "")),
                Text(elapsed_text(step, now)),
            )
        return table


def render_frame(view: dict[str, Any], now: datetime | None = None) -> Table:
    """A single frame (tests, and `job show` could use it)."""
    return FrameRenderer().render(view, now)


class JobWatch:
    """Wakes a follower when the ledger notifies that its job changed, or after
    `safety` seconds without a word; never more often than `MIN_READ_SECONDS`.

    Listens on a connection of its own from `pool` (held while following); if it
    cannot listen, it polls every `safety` seconds instead."""

    def __init__(self, job_id: uuid.UUID, *, safety: float = SAFETY_POLL_SECONDS) -> None:
        self.job_id = str(job_id)
        self.safety = safety
        self._changed = asyncio.Event()
        self._last = 0.0

    def _heard(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        if payload == self.job_id:
            self._changed.set()

    @contextlib.asynccontextmanager
    async def listening(self, pool: asyncpg.Pool) -> AsyncIterator[JobWatch]:
        """Listen while the block runs; when LISTEN cannot be set up (no connection
        to spare, a server that refuses it), the block runs anyway on the safety poll."""
        import asyncpg

        async with contextlib.AsyncExitStack() as stack:
            try:
                conn = await stack.enter_async_context(pool.acquire())
                await conn.add_listener(CHANNEL, self._heard)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                import structlog

                structlog.get_logger(__name__).debug(
                    "follow.not_listening",
                    job_id=self.job_id,
                    error=str(exc),
                    poll_seconds=self.safety,
                )
            else:
                stack.push_async_callback(self._unlisten, conn)
            yield self

    async def _unlisten(self, conn: asyncpg.pool.PoolConnectionProxy[Any]) -> None:
        if not conn.is_closed():
            await conn.remove_listener(CHANNEL, self._heard)

    async def changed(self) -> None:
        """Return when the job may have changed: notified, or `safety` seconds passed."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), self.safety)
        self._changed.clear()
        pause = self._last + MIN_READ_SECONDS - loop.time()
        if pause > 0:
            await asyncio.sleep(pause)
        self._last = loop.time()


async def _settled(pool: asyncpg.Pool, job_id: uuid.UUID, watch: JobWatch) -> dict[str, Any]:
    """The view once the job ended and its cleanup steps stopped running (bounded wait)."""
    from envrestore.pipelines.jobs.views import show_job

    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE_SECONDS
    view = await show_job(pool, job_id)
    while any(s["status"] == "running" for s in view["steps"]) and loop.time() < deadline:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(watch.changed(), max(0.0, deadline - loop.time()))
        view = await show_job(pool, job_id)
    return view


async def follow_job(
    pool: asyncpg.Pool,
    job_id: uuid.UUID,
    *,
    quiet: bool = False,
    interval: float = SAFETY_POLL_SECONDS,
) -> dict[str, Any]:
    """Follow the job until it ends, redrawn when the ledger notifies a change (and
    every `interval` seconds regardless); draw frames unless quiet. Returns the final
    view. `pool` needs two connections: one listens, one reads.

    Raises StoppedFollowing on Ctrl-C (the job is not touched)."""
    watch = JobWatch(job_id, safety=interval)
    try:
        async with watch.listening(pool):  # before the first read: no change is missed
            return await _follow(pool, job_id, watch, quiet=quiet)
    except (asyncio.CancelledError, KeyboardInterrupt):
        raise StoppedFollowing(job_id) from None


async def _follow(
    pool: asyncpg.Pool, job_id: uuid.UUID, watch: JobWatch, *, quiet: bool
) -> dict[str, Any]:
    from envrestore.pipelines.jobs.views import show_job

    if quiet:
        while (await show_job(pool, job_id))["status"] not in TERMINAL:
            await watch.changed()
        return await _settled(pool, job_id, watch)
    from rich.console import Console
    from rich.live import Live

    renderer = FrameRenderer()
    console = Console(stderr=True)
    view = await show_job(pool, job_id)
    with Live(renderer.render(view), console=console, refresh_per_second=8) as live:
        while view["status"] not in TERMINAL:
            await watch.changed()
            view = await show_job(pool, job_id)
            live.update(renderer.render(view))
        # The job row ends before its cleanup steps do: draw the steps as the
        # ledger has them once they settled, so a failure's last frame is true.
        view = await _settled(pool, job_id, watch)
        live.update(renderer.render(view), refresh=True)
    return view
