"""A clone's snapshot: kept as a backup of the source (`--keep-snapshot`), or gone."""

from __future__ import annotations

from typing import Any

from envrestore.pipelines.backup.steps import record_parts
from envrestore.pipelines.jobs.context import StepContext
from envrestore.pipelines.requests import CloneRequest, ContentRequest
from envrestore.pipelines.sources.snapshot import snapshot_layout


async def keep_snapshot(ctx: StepContext, request: ContentRequest) -> dict[str, Any]:
    """Record the snapshot the clone imported as a backup of its source (finalize)."""
    if not isinstance(request, CloneRequest):
        return {}
    layout = snapshot_layout(request)
    if layout is None:
        return {}
    fetched = (await ctx.outputs_of("fetch"))["parts"]
    resolved = (await ctx.outputs_of("resolve"))["parts"]
    engine = next((p["engine"] for p in resolved.values() if p.get("engine")), "unknown")
    await record_parts(
        ctx,
        layout,
        [dict(part) for part in fetched.values()],
        kind="manual",
        engine=engine,
        git_head=None,
        keep_days=ctx.settings.backup_keep_days,
    )
    await ctx.event("clone.snapshot_kept", backup_id=layout.backup_id)
    return {"snapshot_backup_id": layout.backup_id}


async def drop_snapshot(ctx: StepContext, request: ContentRequest) -> int:
    """A failed clone keeps no snapshot (abandon)."""
    if not isinstance(request, CloneRequest):
        return 0
    layout = snapshot_layout(request)
    if layout is None:
        return 0
    return await ctx.store.delete_prefix(layout.prefix)
