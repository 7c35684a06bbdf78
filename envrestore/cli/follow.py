"""`--wait`: follow a job in the ledger, a progress bar per running step."""

from __future__ import annotations

import asyncio
import sys
import uuid
from typing import Any

import asyncpg
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from envrestore.pipelines.jobs.views import show_job
from envrestore.pipelines.text import clean_text

TERMINAL = {"succeeded", "failed", "cancelled"}


async def follow_job(
    pool: asyncpg.Pool, job_id: uuid.UUID, *, quiet: bool = False, interval: float = 0.5
) -> dict[str, Any]:
    """Poll the job until it ends; draw bars unless quiet. Returns the final view."""
    console = Console(stderr=True)
    if quiet:
        while True:
            view = await show_job(pool, job_id)
            if view["status"] in TERMINAL:
                return view
            await asyncio.sleep(interval)
    columns = (
        TextColumn("{task.description:<16}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TextColumn("{task.fields[status]:<9}"),
        TimeElapsedColumn(),
    )
    tasks: dict[str, TaskID] = {}
    with Progress(*columns, console=console, transient=False, disable=not sys.stderr) as bars:
        while True:
            view = await show_job(pool, job_id)
            for step in view["steps"]:
                if step["status"] == "pending" and step["name"] not in tasks:
                    continue
                if step["status"] == "skipped" and step["name"] not in tasks:
                    continue
                if step["name"] not in tasks:
                    # The description is drawn as rich markup: escape it, and
                    # never print control characters.
                    tasks[step["name"]] = bars.add_task(
                        escape(clean_text(step["name"], 80, newlines=False)),
                        total=step["bytes_total"],
                        status=escape(clean_text(step["status"], 20, newlines=False)),
                    )
                total = step["bytes_total"]
                done = step["bytes_done"]
                if step["status"] == "done" and total is None:
                    total = done or 1
                    done = total
                bars.update(
                    tasks[step["name"]],
                    completed=done,
                    total=total,
                    status=escape(clean_text(step["status"], 20, newlines=False)),
                )
            if view["status"] in TERMINAL:
                return view
            await asyncio.sleep(interval)
