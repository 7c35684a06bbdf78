"""Rewriting a WordPress site's URL when its database moves to another address.

Runs on the shadow database after `import_db` and before `switch`, so the
site never goes live pointing at the address it came from (a restored dev
that redirects to live). The old URL is the source environment's recorded
URL (`env add --url`), or, for an import or a source without one, the dump's
own `home`/`siteurl` option; the new URL is the target's. `--search-replace
OLD=NEW` pairs are added; `--no-search-replace` leaves the URL alone (the
explicit pairs still run). Values are rewritten serialized-safe
(`pipelines/rewrite`).
"""

from __future__ import annotations

from typing import Any

from envrestore.pipelines.dsn import Dsn
from envrestore.pipelines.errors import BadInput
from envrestore.pipelines.jobs.context import StepContext
from envrestore.pipelines.registry import get_environment
from envrestore.pipelines.requests import CloneRequest, ContentRequest, RestoreRequest
from envrestore.pipelines.restore.prepare import targets_of
from envrestore.pipelines.restore.request import request_of
from envrestore.pipelines.restore.targets import RestoreTargets
from envrestore.pipelines.rewrite.database import rewrite_database
from envrestore.pipelines.rewrite.model import RewriteSettings
from envrestore.pipelines.rewrite.values import Replacement, expand_url_pairs
from envrestore.pipelines.rewrite.wordpress import wordpress_home


def moves_database(request: ContentRequest) -> bool:
    """Whether the job brings a database from elsewhere (or was asked for pairs)."""
    if "database" not in request.elements:
        return False
    if isinstance(request, RestoreRequest):
        moved = request.source is not None and request.source != request.target
        return moved or bool(request.replace_pairs)
    return True


def shadow_dsn(ctx: StepContext, targets: RestoreTargets) -> Dsn:
    live = targets.environment.dsn
    return live if request_of(ctx).in_place else live.with_database(targets.db_names.shadow)


async def _source_url(ctx: StepContext, request: ContentRequest) -> str | None:
    name = request.source if isinstance(request, RestoreRequest | CloneRequest) else None
    if name is None:
        return None
    return (await get_environment(ctx.runtime.pool, name)).url


async def url_pairs(
    ctx: StepContext, request: ContentRequest, dsn: Dsn, settings: RewriteSettings
) -> tuple[list[Replacement], dict[str, Any]]:
    """The (old, new) forms to replace, and what was decided, for the outputs."""
    decided: dict[str, Any] = {}
    pairs: list[Replacement] = []
    new_url = (await ctx.environment()).url
    same_env = isinstance(request, RestoreRequest) and request.source in (None, request.target)
    if not request.search_replace:
        decided["url"] = "not rewritten: --no-search-replace"
    elif same_env:
        decided["url"] = "not rewritten: the database comes from this environment"
    elif new_url is None:
        decided["url"] = (
            f"not rewritten: {request.target} has no URL recorded (envrestore env add "
            f"{request.target} --url https://…)"
        )
    else:
        old_url = await _source_url(ctx, request)
        found_in = "the source environment's URL"
        if old_url is None:
            old_url = await wordpress_home(dsn, settings=settings)
            found_in = "the dump's home option"
        if old_url is None:
            decided["url"] = "not rewritten: no source URL and no WordPress home option"
        elif old_url.rstrip("/") == new_url.rstrip("/"):
            decided["url"] = f"not rewritten: the URL is already {new_url}"
        else:
            try:
                pairs += expand_url_pairs(old_url, new_url)
            except ValueError as exc:
                raise BadInput(f"the URL rewrite cannot run: {exc}") from exc
            decided.update(old_url=old_url, new_url=new_url, old_url_from=found_in)
    pairs += [Replacement(old, new) for old, new in request.replace_pairs]
    decided["pairs"] = [[p.old, p.new] for p in pairs]
    return pairs, decided


async def rewrite_urls(ctx: StepContext) -> dict[str, Any]:
    """Rewrite the old URL (and asked-for pairs) in the shadow database."""
    await ctx.check_lease()
    request = request_of(ctx)
    targets = await targets_of(ctx)
    dsn = shadow_dsn(ctx, targets)
    settings = RewriteSettings.from_settings(ctx.settings)
    pairs, decided = await url_pairs(ctx, request, dsn, settings)
    if not pairs:
        await ctx.event("restore.urls_not_rewritten", reason=decided.get("url"))
        return {"rewritten": False, **decided}
    # Rows scanned are not bytes: the step's byte counters stay empty, so `--wait`
    # shows it as a step that moves no bytes (a spinner), not rows labelled bytes.
    # The counts are in its outputs.
    report = await rewrite_database(dsn, pairs, settings=settings)
    tables = {
        t.table: {
            "rows_changed": t.rows_changed,
            "values_changed": t.values_changed,
            "values_skipped": t.values_skipped,
            **({"skipped": t.skipped} if t.skipped else {}),
        }
        for t in report.tables
        if t.rows_changed or t.values_skipped or t.skipped
    }
    totals = report.totals()
    await ctx.event(
        "restore.urls_rewritten",
        old_url=decided.get("old_url"),
        new_url=decided.get("new_url"),
        rows_changed=totals["rows_changed"],
        values_changed=totals["values_changed"],
    )
    return {"rewritten": True, **decided, **totals, "per_table": tables}
