"""Restore steps before the imports: resolve the backup, verify it, prepare empty targets."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from pipelines import trees
from pipelines.archives.safety import ArchiveRules, check_tar, decompress_archive, limits_for
from pipelines.backup.service import get_backup
from pipelines.engines.shadow import ShadowNames, prepare_shadow
from pipelines.errors import IntegrityError, NotFound, PermanentError
from pipelines.jobs.context import StepContext
from pipelines.restore.dumps import checked_dump
from pipelines.restore.parts import PartRef, PartStream
from pipelines.restore.targets import RestoreTargets, job_tag, naming_part
from pipelines.sqlsafety import FilterReport

#: The cap on a decompressed dump, as a multiple of its compressed size.
DUMP_BOMB_RATIO = 40
DUMP_BOMB_FLOOR = 256 << 20
DUMP_BOMB_CEILING = 2 << 40


def dump_cap(compressed: int) -> int:
    return min(max(compressed * DUMP_BOMB_RATIO, DUMP_BOMB_FLOOR), DUMP_BOMB_CEILING)


def elements_of(ctx: StepContext) -> list[str]:
    return list(ctx.job.params["elements"])


async def targets_of(ctx: StepContext) -> RestoreTargets:
    return RestoreTargets(await ctx.environment(), job_tag(ctx.job.id))


async def archive_rules(ctx: StepContext, element: str) -> ArchiveRules:
    """What the files or code part of the backup must look like.

    A backup of `dev` keeps its files under `files_dev/` (Pantheon's naming, see
    `backup.naming`): a `files_live/` archive, or members at the root, is the
    wrong part. The code part may have any single top folder.
    """
    label = f"the {element} part"
    if element != "files":
        return ArchiveRules(label=label)
    resolved = await ctx.outputs_of("resolve")
    env = resolved.get("env") or (await ctx.environment()).env  # jobs resolved before "env"
    return ArchiveRules(label=label, top=f"files_{env}", top_reason=f"this is a backup of {env}")


async def parts_of(ctx: StepContext) -> dict[str, PartRef]:
    resolved = await ctx.outputs_of("resolve")
    return {name: PartRef.from_outputs(data) for name, data in resolved["parts"].items()}


async def resolve(ctx: StepContext) -> dict[str, Any]:
    """Fix the source: the backup's parts with size and sha256, each present in S3."""
    backup = await get_backup(ctx.runtime.pool, ctx.job.params["backup_id"])
    environment = await ctx.environment()
    if backup.engine != environment.engine:
        raise PermanentError(
            f"backup {backup.id} holds a {backup.engine} dump but {environment.target} runs "
            f"{environment.engine}; restore a backup of the same engine",
            backup_id=backup.id,
        )
    manifest = json.loads(await ctx.store.get_bytes(backup.manifest_key, max_size=1 << 20))
    parts: dict[str, dict[str, Any]] = {}
    for record in backup.parts:
        name = record["part"]
        if name not in elements_of(ctx):
            continue
        listed = manifest.get("parts", {}).get(name, {})
        if listed.get("sha256") != record["sha256"] or listed.get("size") != record["size"]:
            raise IntegrityError(
                f"backup {backup.id}: the {name} part in manifest.json does not match the "
                "ledger's record; the backup was tampered with — restore another one",
                part=name,
            )
        head = await ctx.store.head(record["key"])
        if head is None:
            raise NotFound(
                f"backup {backup.id}: the {name} part {record['key']} is missing from the "
                "object store; restore another backup",
                part=name,
            )
        if head.size != record["size"]:
            raise IntegrityError(
                f"verify failed for the {name} part: {record['key']} has {head.size} bytes in "
                f"the object store, the manifest says {record['size']}",
                part=name,
            )
        parts[name] = dict(record)
    missing = [e for e in elements_of(ctx) if e not in parts]
    if missing:
        raise NotFound(f"backup {backup.id} has no {', '.join(missing)} part", backup_id=backup.id)
    ctx.progress.set(1, 1)
    return {
        "backup_id": backup.id,
        "env": backup.env,
        "engine": backup.engine,
        "git_head": backup.git_head,
        "parts": parts,
    }


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
            chunks = decompress_archive(
                stream.raw(), key=ref.key, max_output=stream.max_output, label=rules.label
            )
            tar = await check_tar(chunks, limits=limits, rules=rules)
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
    if not ctx.job.params.get("in_place"):
        return {"mode": "in-stream", "note": "sha256 and content checks run during the imports"}
    parts = await parts_of(ctx)
    ctx.progress.set(0, sum(p.size for p in parts.values()))
    results = await asyncio.gather(*(_verify_part(ctx, ref) for ref in parts.values()))
    return {"mode": "full", "parts": {r["part"]: r for r in results}}


async def wipe(ctx: StepContext) -> dict[str, Any]:
    """Empty targets: a shadow database and staging directories (in-place: the live ones)."""
    await ctx.check_lease()
    targets = await targets_of(ctx)
    environment = targets.environment
    in_place = bool(ctx.job.params.get("in_place"))
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
