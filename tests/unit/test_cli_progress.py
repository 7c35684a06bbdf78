"""Progress as `--wait` draws it, and the counters steps report that feed it."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from rich.console import Console

from envrestore.cli.follow import FrameRenderer, amount_text, rate_text, render_frame
from envrestore.config.settings import load_settings
from envrestore.pipelines.archives.files import tar_argv
from envrestore.pipelines.backup.steps import _tree_size
from envrestore.pipelines.jobs.progress import Progress
from envrestore.pipelines.objectstore.memory import MemoryObjectStore
from envrestore.pipelines.restore.parts import PartStream, drain
from envrestore.pipelines.sources.base import PartRef

NOW = datetime(2026, 12, 2, 6, 0, 0, tzinfo=UTC)


def step(
    name: str,
    status: str,
    done: int = 0,
    total: int | None = None,
    *,
    started: float | None = None,
    finished: float | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """A step view as the ledger gives it; times are seconds before NOW."""
    return {
        "name": name,
        "status": status,
        "attempts": 1,
        "bytes_done": done,
        "bytes_total": total,
        "started_at": (NOW - timedelta(seconds=started)).isoformat() if started else None,
        "finished_at": (NOW - timedelta(seconds=finished)).isoformat() if finished else None,
        "error": error,
    }


def frame_text(view: dict[str, Any], width: int = 80) -> list[str]:
    console = Console(width=width, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(render_frame(view, NOW))
    return console.export_text().splitlines()


def line_of(lines: list[str], name: str) -> str:
    [line] = [line for line in lines if line.startswith(name + " ")]
    return line


def test_done_above_total_is_shown_without_a_total():
    view = {
        "status": "running",
        "steps": [step("import_db", "running", 9_000_000, 4_000_000, started=10)],
    }
    line = line_of(frame_text(view), "import_db")
    assert "9.0 MB" in line
    assert "/ 4.0 MB" not in line and "4.0 MB" not in line


def test_a_byte_step_shows_done_of_total_and_a_rate_per_second():
    running = step("extract_files", "running", 2_000_000, 8_000_000, started=10)
    line = line_of(frame_text({"status": "running", "steps": [running]}), "extract_files")
    assert "2.0 MB / 8.0 MB" in line
    assert "200.0 kB/s" in line  # 2 MB in 10 s
    assert "running" in line and "0:00:10" in line
    finished = step("fetch", "done", 5_000_000, None, started=19, finished=9)
    assert rate_text(finished, NOW) == "500.0 kB/s"  # its own 10 s, not until now
    assert amount_text(finished) == "5.0 MB"


def test_a_step_that_moves_no_bytes_shows_a_spinner_and_its_state_not_zero_bytes():
    view = {
        "status": "running",
        "steps": [
            step("check_paths", "running", 0, 0, started=3),
            step("resolve", "done", started=9, finished=8),
        ],
    }
    lines = frame_text(view)
    running = line_of(lines, "check_paths")
    assert "running" in running
    assert "0/0" not in running and "bytes" not in running and " 0 " not in running
    assert any(ch in running for ch in "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏")  # the dots spinner
    done = line_of(lines, "resolve")
    assert "done" in done and "B" not in done.replace("done", "")


def test_spinners_turn_between_frames():
    renderer = FrameRenderer()
    view = {"status": "running", "steps": [step("check_paths", "running", started=3)]}
    first = renderer.render(view, NOW).columns[1]._cells[0]  # type: ignore[attr-defined]
    again = renderer.render(view, NOW).columns[1]._cells[0]  # type: ignore[attr-defined]
    assert first is again  # one spinner per step, so it animates instead of restarting


def test_a_failed_jobs_last_frame_shows_every_step_as_the_ledger_has_it():
    view = {
        "status": "failed",
        "steps": [
            step("resolve", "done", started=30, finished=29),
            step("fetch_database", "done", 4_000_000, 4_000_000, started=29, finished=20),
            step("import_db", "failed", 1_000_000, 4_000_000, started=20, finished=12, error="x"),
            step("switch", "skipped"),
            step("discard_shadow", "done", started=11, finished=10),
        ],
    }
    lines = frame_text(view)
    assert [line.split()[0] for line in lines] == [
        "resolve",
        "fetch_database",
        "import_db",
        "switch",
        "discard_shadow",
    ]
    assert "failed" in line_of(lines, "import_db")
    assert "1.0 MB / 4.0 MB" in line_of(lines, "import_db")
    assert "skipped" in line_of(lines, "switch")
    assert "done" in line_of(lines, "discard_shadow")
    assert "running" not in "\n".join(lines)


def test_progress_never_reports_done_above_total():
    progress = Progress()
    progress.set(0, 100)
    progress.advance(60)
    assert (progress.done, progress.total) == (60, 100)
    progress.advance(60)
    assert progress.total is None  # a short estimate: no total rather than 120/100


def test_the_backup_total_is_the_tar_streams_size(tmp_path: Path):
    tree = tmp_path / "files"
    (tree / "a" / "b").mkdir(parents=True)
    for index in range(60):
        (tree / "a" / f"f{index}").write_bytes(os.urandom(index * 37))
    (tree / "a" / "b" / ("long-name-" * 15)).write_text("x")
    (tree / "a" / "link").symlink_to("f1")
    streamed = len(
        subprocess.run(tar_argv(tree, "files_dev"), capture_output=True, check=True).stdout
    )
    files_only = sum(
        p.stat().st_size for p in tree.rglob("*") if p.is_file() and not p.is_symlink()
    )
    assert files_only < streamed  # counting file sizes, done used to pass total
    assert _tree_size(tree) >= streamed


async def test_parts_read_at_once_count_their_sum_against_their_summed_size():
    store = MemoryObjectStore()
    progress = Progress()
    ctx = SimpleNamespace(progress=progress, store=store, settings=load_settings(), step="verify")
    refs = []
    for part, size in (("database", 3_000_000), ("files", 300_000)):
        data = os.urandom(size)
        await store.put_bytes(f"b/{part}", data)
        refs.append(PartRef(part, f"b/{part}", size, hashlib.sha256(data).hexdigest()))
    progress.set(0, sum(ref.size for ref in refs))  # what verify does before reading
    seen: list[tuple[int, int | None]] = []

    async def read(ref: PartRef) -> None:
        stream = PartStream(ctx, ref, max_output=1 << 30)  # type: ignore[arg-type]
        async for _ in stream.raw():
            seen.append((progress.done, progress.total))
            await asyncio.sleep(0)
        stream.verdict()

    await asyncio.gather(*(read(ref) for ref in refs))
    assert all(total == 3_300_000 and done <= total for done, total in seen)
    assert progress.done == 3_300_000


async def test_a_single_part_counts_against_its_own_size():
    store = MemoryObjectStore()
    data = os.urandom(200_000)
    await store.put_bytes("k", data)
    ctx = SimpleNamespace(progress=Progress(), store=store, settings=load_settings(), step="s")
    ref = PartRef("database", "k", len(data), hashlib.sha256(data).hexdigest())
    stream = PartStream(ctx, ref, max_output=1 << 30)  # type: ignore[arg-type]
    await drain(stream.raw())
    assert (ctx.progress.done, ctx.progress.total) == (200_000, 200_000)
