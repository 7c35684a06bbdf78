"""The destructive end of a restore: switch, finalize; and abandon after a failure.

`switch` swaps database, files and code in, each swap atomic and idempotent
(a second run after a worker death finishes or confirms what the first did),
and records the rollback point. The window — how long the environment showed
neither the old nor the new content — is measured and stored on the job.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from envrestore.pipelines import trees
from envrestore.pipelines.engines import shadow
from envrestore.pipelines.errors import PermanentError
from envrestore.pipelines.failpoints import failpoint
from envrestore.pipelines.jobs.cancel import enter_irreversible
from envrestore.pipelines.jobs.context import StepContext
from envrestore.pipelines.ledger.queries import sql
from envrestore.pipelines.restore import points
from envrestore.pipelines.restore.clone import drop_snapshot, keep_snapshot
from envrestore.pipelines.restore.prepare import targets_of
from envrestore.pipelines.restore.request import elements_of, request_of
from envrestore.pipelines.restore.targets import RestoreTargets
from envrestore.pipelines.sources.url import release_fetched


async def switch(ctx: StepContext) -> dict[str, Any]:
    """Swap the imported content in; keep the previous content as the rollback point."""
    await enter_irreversible(ctx)
    await ctx.check_lease()
    targets = await targets_of(ctx)
    environment = targets.environment
    in_place = request_of(ctx).in_place
    windows: dict[str, float] = {}
    details: dict[str, Any] = {"tag": targets.tag, "elements": elements_of(ctx)}
    # The environment is mixed (some parts new, some old) from the moment the
    # first swap took effect until the last one ends; each swap reports its
    # own window, which ends when its call returns.
    mixed_since: float | None = None
    last_end = 0.0
    if not in_place:
        done: list[str] = []
        try:
            for element in elements_of(ctx):
                if element == "database":
                    names = targets.db_names
                    report = await shadow.switch(environment.dsn, names, settings=ctx.settings)
                    windows["database"] = report.window_seconds
                    details["database"] = {
                        "live": names.live,
                        "shadow": names.shadow,
                        "rollback": names.rollback,
                    }
                else:
                    live, staging = targets.live(element), targets.staging(element)
                    rollback = targets.rollback(element)
                    windows[element] = await asyncio.to_thread(
                        trees.swap_in, live, staging, rollback
                    )
                    details[element] = {"live": str(live), "rollback": str(rollback)}
                last_end = time.monotonic()
                if mixed_since is None:
                    mixed_since = last_end - windows[element]
                done.append(element)
                await failpoint(ctx.settings, f"switch.after_{element}")
        except PermanentError:
            # Never leave the environment half-restored: undo the swaps already made.
            await _undo(ctx, targets, done)
            raise
    window = round(last_end - mixed_since, 6) if mixed_since is not None else 0.0
    async with ctx.runtime.pool.acquire() as conn, conn.transaction():
        if not in_place:
            await conn.execute(
                sql("insert_rollback_point"),
                ctx.job.id,
                environment.id,
                details,
                ctx.settings.rollback_hours,
            )
        await conn.execute(
            sql("merge_job_outputs"),
            ctx.job.id,
            {"switch_window_seconds": window, "switch_windows": windows},
        )
    await ctx.event("restore.switched", window_seconds=window, windows=windows)
    sizes = {} if in_place else await points.point_made(ctx.runtime, ctx.job.id, environment)
    return {"window_seconds": window, "windows": windows, "rollback": details, **sizes}


async def _undo(ctx: StepContext, targets: RestoreTargets, done: list[str]) -> None:
    aside_tag = f"{targets.tag}u"
    for element in reversed(done):
        if element == "database":
            await shadow.rollback(
                targets.environment.dsn, targets.db_names, aside_tag, settings=ctx.settings
            )
        else:
            await asyncio.to_thread(
                trees.swap_back,
                targets.live(element),
                targets.rollback(element),
                targets.aside(element, aside_tag),
            )
    await ctx.event("restore.switch_undone", elements=done)


async def finalize(ctx: StepContext) -> dict[str, Any]:
    """Report what the environment holds now; the lease is released when the job ends."""
    outputs: dict[str, Any] = {}
    if "database" in elements_of(ctx):
        targets = await targets_of(ctx)
        await shadow.drop_import_login(targets.environment.dsn, targets.tag, settings=ctx.settings)
    resolved = await ctx.outputs_of("resolve")
    if resolved.get("backup_id"):
        outputs["backup_id"] = resolved["backup_id"]
    if resolved.get("sources"):
        outputs["sources"] = resolved["sources"]
    for element, step in (
        ("database", "import_db"),
        ("files", "import_files"),
        ("code", "apply_code"),
    ):
        if element in elements_of(ctx):
            done = await ctx.outputs_of(step)
            if element == "database":
                outputs["tables"] = done["tables"]
                outputs["rows"] = done["rows"]
            elif element == "files":
                outputs["files"] = done["members"]
            else:
                outputs["git_head"] = done["head"]
    try:
        rewritten = await ctx.outputs_of("rewrite_urls")
    except LookupError:
        rewritten = {}
    if rewritten.get("rewritten"):
        outputs["urls"] = {
            key: rewritten.get(key)
            for key in ("old_url", "new_url", "rows_changed", "values_changed", "values_skipped")
        }
    await _release_staging(ctx)
    outputs.update(await keep_snapshot(ctx, request_of(ctx)))
    await ctx.runtime.pool.execute(sql("merge_job_outputs"), ctx.job.id, outputs)
    return outputs


async def _release_staging(ctx: StepContext) -> None:
    request = request_of(ctx)
    uploads = tuple(p.upload_key for p in getattr(request, "parts", ()) if p.upload_key is not None)
    removed = await release_fetched(ctx, uploads)
    if removed:
        await ctx.event("restore.staging_released", objects=removed)


async def abandon_restore(ctx: StepContext) -> dict[str, Any]:
    """After a failure or cancel before the switch: drop the shadow and staging, live untouched."""
    await _release_staging(ctx)
    await drop_snapshot(ctx, request_of(ctx))
    if "database" in elements_of(ctx):
        # Ends the import's sessions first, so dropping the shadow never waits on them.
        targets = await targets_of(ctx)
        await shadow.drop_import_login(targets.environment.dsn, targets.tag, settings=ctx.settings)
    if request_of(ctx).in_place:
        await ctx.event(
            "restore.in_place_failed",
            note="the live targets were wiped before the failure; restore again or import a backup",
        )
        return {"in_place": True}
    targets = await targets_of(ctx)
    removed: list[str] = []
    for element in elements_of(ctx):
        if element == "database":
            await shadow.drop_shadow(
                targets.environment.dsn, targets.db_names, settings=ctx.settings
            )
            removed.append(targets.db_names.shadow)
        else:
            staging = targets.staging(element)
            if staging.exists():
                trees.discard(staging)
                removed.append(str(staging))
    await ctx.event("restore.abandoned", removed=removed)
    return {"removed": removed}
