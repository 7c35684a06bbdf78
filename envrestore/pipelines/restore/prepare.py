"""Steps before the imports: resolve the sources, fetch outside bytes, verify, prepare targets."""

from __future__ import annotations

from typing import Any

from envrestore.pipelines import trees
from envrestore.pipelines.archives.formats import check_archive
from envrestore.pipelines.archives.tarpolicy import ArchiveRules, limits_for
from envrestore.pipelines.concurrency import all_or_none
from envrestore.pipelines.engines.shadow import ShadowNames, prepare_shadow
from envrestore.pipelines.jobs.context import StepContext
from envrestore.pipelines.restore.dumps import checked_dump
from envrestore.pipelines.restore.parts import PartStream, spool_dir
from envrestore.pipelines.restore.request import elements_of, request_of
from envrestore.pipelines.restore.targets import RestoreTargets, job_tag, naming_part
from envrestore.pipelines.sources.backup import BackupSource
from envrestore.pipelines.sources.base import PartRef
from envrestore.pipelines.sources.select import sources_for
from envrestore.pipelines.sqlsafety import FilterReport

#: The cap on a decompressed dump, as a multiple of its compressed size.
DUMP_BOMB_RATIO = 40
DUMP_BOMB_FLOOR = 256 << 20
DUMP_BOMB_CEILING = 2 << 40


def dump_cap(compressed: int) -> int:
    return min(max(compressed * DUMP_BOMB_RATIO, DUMP_BOMB_FLOOR), DUMP_BOMB_CEILING)


async def targets_of(ctx: StepContext) -> RestoreTargets:
    return RestoreTargets(await ctx.environment(), job_tag(ctx.job.id))


async def archive_rules(ctx: StepContext, element: str) -> ArchiveRules:
    """What the files or code archive must look like: its source knows."""
    return sources_for(request_of(ctx))[element].archive_rules(element)


async def parts_of(ctx: StepContext) -> dict[str, PartRef]:
    """The parts as `fetch` left them (jobs queued before `fetch` existed: as resolved)."""
    try:
        fetched = await ctx.outputs_of("fetch")
    except LookupError:
        fetched = await ctx.outputs_of("resolve")
    return {name: PartRef.from_outputs(data) for name, data in fetched["parts"].items()}


async def resolve(ctx: StepContext) -> dict[str, Any]:
    """Fix the source of every part and check it can be had; no bytes move yet."""
    sources = sources_for(request_of(ctx))
    parts: dict[str, dict[str, Any]] = {}
    for element in elements_of(ctx):
        parts[element] = await sources[element].resolve(ctx, element)
    origin: dict[str, Any] = {}
    backups = {s for s in sources.values() if isinstance(s, BackupSource)}
    if backups:
        origin = await next(iter(backups)).origin(ctx)
    ctx.progress.set(1, 1)
    return {
        **origin,
        "sources": {element: source.describe() for element, source in sources.items()},
        "parts": parts,
    }


async def fetch(ctx: StepContext) -> dict[str, Any]:
    """Bring outside bytes into `staging/<job>/` (a no-op for backups).

    A URL is checked here (scheme, every address it resolves to, every
    redirect, the size) before a byte of it is read, and before anything of
    the environment changes: `wipe` comes after.
    """
    sources = sources_for(request_of(ctx))
    resolved = (await ctx.outputs_of("resolve"))["parts"]
    refs = await all_or_none(*(sources[e].fetch(ctx, e, resolved[e]) for e in elements_of(ctx)))
    return {"parts": {ref.part: ref.outputs() for ref in refs}}


async def _verify_part(ctx: StepContext, ref: PartRef) -> dict[str, Any]:
    with naming_part(ref.part):
        if ref.part == "database":
            stream = PartStream(ctx, ref, max_output=dump_cap(ref.size))
            report = FilterReport()
            engine = (await ctx.environment()).engine
            async for _ in checked_dump(ctx, stream, engine=engine, report=report):
                pass
            result = {"statements": report.statements, "normalised": list(report.normalised)}
        else:
            limits = limits_for(ref.size, ctx.settings)
            rules = await archive_rules(ctx, ref.part)
            stream = PartStream(ctx, ref, max_output=limits.max_stream_bytes)
            tar = await check_archive(
                stream.raw(),
                codec=ref.codec,  # type: ignore[arg-type]
                key=ref.key,
                limits=limits,
                rules=rules,
                spool_dir=spool_dir(ctx),
            )
            result = {"members": tar.members, "bytes": tar.bytes}
        result.update(stream.verdict())
        return result


async def verify(ctx: StepContext) -> dict[str, Any]:
    """Check every part before anything is destroyed.

    In-place mode reads each part fully here (sha256, archive members, SQL
    statements) because the wipe that follows destroys live content. In the
    default shadow mode the same checks run inside the import streams (one read
    of each part), and nothing live changes until every verdict is in: the
    switch depends on all imports. Here only presence and sizes are checked
    (by resolve).
    """
    if not request_of(ctx).in_place:
        return {"mode": "in-stream", "note": "sha256 and content checks run during the imports"}
    parts = await parts_of(ctx)
    ctx.progress.set(0, sum(p.size for p in parts.values()))
    results = await all_or_none(*(_verify_part(ctx, ref) for ref in parts.values()))
    return {"mode": "full", "parts": {r["part"]: r for r in results}}


async def wipe(ctx: StepContext) -> dict[str, Any]:
    """Empty targets: a shadow database and staging directories (in-place: the live ones)."""
    await ctx.check_lease()
    targets = await targets_of(ctx)
    environment = targets.environment
    in_place = request_of(ctx).in_place
    done: dict[str, Any] = {}
    for element in elements_of(ctx):
        if element == "database":
            names = targets.db_names
            if in_place:
                await ctx.event("restore.in_place_wipe", element="database")
                # Dropping and recreating the live database itself: the shadow is the live name.
                names = ShadowNames(live=names.live, shadow=names.live, rollback=names.rollback)
            await prepare_shadow(environment.dsn, names, settings=ctx.settings)
            done["database"] = names.shadow
        else:
            live = targets.live(element)
            trees.check_beside(live)
            staging = targets.staging(element)
            if staging.exists():
                trees.discard(staging)
            if in_place and live.exists():
                await ctx.event("restore.in_place_wipe", element=element)
                aside = targets.rollback(element)
                if aside.exists():
                    trees.discard(aside)
                live.rename(aside)
                # No room for two copies is why in-place exists: free it now.
                await trees.delete_tree_later(aside)
            done[element] = str(live if in_place else staging)
    return {"targets": done, "in_place": in_place}
