"""Rolling a restore back, and dropping rollback points when they expire.

A rollback swaps the kept content back in and keeps what the restore had
brought as a rollback point of its own, so a rollback can be undone too.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

from envrestore.pipelines import trees
from envrestore.pipelines.archives.code_restore import forget_pre_restore
from envrestore.pipelines.engines import shadow
from envrestore.pipelines.engines.shadow import ShadowNames
from envrestore.pipelines.errors import Conflict, NotFound
from envrestore.pipelines.jobs.context import StepContext
from envrestore.pipelines.ledger.queries import sql
from envrestore.pipelines.requests import RollbackRequest
from envrestore.pipelines.restore import busyfs, points
from envrestore.pipelines.restore.targets import job_tag


def _names(entry: dict[str, Any]) -> ShadowNames:
    return ShadowNames(
        live=entry["live"],
        shadow=entry.get("shadow", entry["rollback"]),
        rollback=entry["rollback"],
    )


async def _point(ctx: StepContext) -> dict[str, Any]:
    restore_id = uuid.UUID(RollbackRequest.from_params(ctx.job.params).restore_job_id)
    row = await ctx.runtime.pool.fetchrow(sql("get_rollback_point"), restore_id)
    if row is None:
        raise NotFound(f"job {restore_id} left no rollback point", job_id=str(restore_id))
    return dict(row)


async def swap_back(ctx: StepContext) -> dict[str, Any]:
    """Put the rollback point's content back in; the restored content becomes a rollback point."""
    point = await _point(ctx)
    if point["status"] == "rolled_back" and point["rollback_job_id"] == ctx.job.id:
        return {"already_done": True}
    if point["status"] != "kept":
        raise Conflict(
            f"the rollback point of job {point['job_id']} is {point['status']}; nothing to roll "
            "back to",
            job_id=str(point["job_id"]),
        )
    await ctx.check_lease()
    environment = await ctx.environment()
    details: dict[str, Any] = point["details"]
    tag = job_tag(ctx.job.id)
    undo: dict[str, Any] = {"tag": tag, "elements": details["elements"]}
    windows: dict[str, float] = {}
    for element in details["elements"]:
        entry = details[element]
        if element == "database":
            names = _names(entry)
            report = await shadow.rollback(environment.dsn, names, tag, settings=ctx.settings)
            windows["database"] = report.window_seconds
            aside_db = shadow.shadow_names(names.live, tag).rollback
            undo["database"] = {"live": names.live, "rollback": aside_db}
        else:
            live, rollback = Path(entry["live"]), Path(entry["rollback"])
            aside = trees.aside_path(live, tag)
            windows[element] = await asyncio.to_thread(trees.swap_back, live, rollback, aside)
            undo[element] = {"live": str(live), "rollback": str(aside)}
    async with ctx.runtime.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            sql("set_rollback_point_status"), point["job_id"], "rolled_back", ctx.job.id
        )
        await conn.execute(
            sql("insert_rollback_point"),
            ctx.job.id,
            environment.id,
            undo,
            ctx.settings.rollback_hours,
        )
        await conn.execute(
            sql("merge_job_outputs"), ctx.job.id, {"switch_window_seconds": sum(windows.values())}
        )
    await ctx.event("restore.rolled_back", restore_job_id=str(point["job_id"]), windows=windows)
    sizes = await points.point_made(ctx.runtime, ctx.job.id, environment)
    return {"windows": windows, "rolled_back": str(point["job_id"]), **sizes}


async def drop_rollback_point(ctx: StepContext) -> dict[str, Any]:
    """Retention: drop the kept database and delete the kept trees, at low priority."""
    point = await _point(ctx)
    if point["status"] != "kept":
        return {"skipped": point["status"]}
    environment = await ctx.environment()
    details: dict[str, Any] = point["details"]
    for element in details["elements"]:
        entry = details[element]
        if element == "database":
            await shadow.drop_rollback(environment.dsn, _names(entry), settings=ctx.settings)
        else:
            path = Path(entry["rollback"])
            if await asyncio.to_thread(path.exists):
                # Never beside an extraction on the same filesystem (PERFORMANCE.md).
                async with busyfs.no_extraction(ctx.settings.state_dir, path):
                    await trees.delete_tree_later(path)
            if element == "code":
                await forget_pre_restore(Path(entry["live"]), job_tag=details["tag"])
    await ctx.runtime.pool.execute(
        sql("set_rollback_point_status"), point["job_id"], "expired", None
    )
    return {"dropped": details["elements"]}
