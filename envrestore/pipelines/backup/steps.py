"""The steps of a backup: three parts streamed into S3 in parallel, then the record.

Each part flows source → gzip or zstd → (rate cap) → object store, sha256 and size
computed by the upload on the way; nothing is held whole in memory. Keys are
fixed by the job's parameters, so a second attempt overwrites the first's
object whole.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from envrestore.pipelines.archives.code import code_archive
from envrestore.pipelines.archives.files import files_archive
from envrestore.pipelines.archives.formats import codec_for_key
from envrestore.pipelines.archives.git import head_commit, tags
from envrestore.pipelines.backup.naming import BackupLayout, Part
from envrestore.pipelines.engines.base import engine_for
from envrestore.pipelines.errors import BadInput
from envrestore.pipelines.jobs.context import StepContext
from envrestore.pipelines.ledger.queries import sql
from envrestore.pipelines.requests import BackupRequest
from envrestore.pipelines.streams import StreamMeter, gzip_compress, rate_limited, zstd_compress

MANIFEST_VERSION = 1
#: zstd level for new `.zst` parts: faster than gzip -6, and a smaller part.
ZSTD_LEVEL = 3
DISCARD_SETTLE_SECONDS = 2.0


def layout_of(ctx: StepContext) -> BackupLayout:
    request = BackupRequest.from_params(ctx.job.params)
    assert request.backup_id, "the producer pins it"
    assert request.created_at, "the producer pins it"
    return BackupLayout(
        site=str(ctx.job.site),
        env=str(ctx.job.env),
        backup_id=request.backup_id,
        created_at=datetime.fromisoformat(request.created_at),
        compression=ctx.settings.backup_compression,
    )


async def _upload(ctx: StepContext, part: Part, source: AsyncIterator[bytes]) -> dict[str, Any]:
    """source → count progress → gzip or zstd (as the key says) → rate cap → S3;
    returns the part's record."""
    layout = layout_of(ctx)
    key = layout.key(part)
    meter = StreamMeter(on_progress=lambda done: ctx.progress.set(done))
    if codec_for_key(key) == "zstd":
        compressed = zstd_compress(meter.wrap(source), ZSTD_LEVEL)
    else:
        compressed = gzip_compress(meter.wrap(source), ctx.settings.gzip_level)
    capped = rate_limited(compressed, ctx.settings.stream_rate_limit)
    result = await ctx.store.put_stream(key, capped)
    await ctx.event(
        "part.uploaded", part=part.value, key=result.key, size=result.size, raw_bytes=meter.size
    )
    return {"part": part.value, "key": result.key, "size": result.size, "sha256": result.sha256}


_BLOCK = 512
# What tar --format=posix writes per member besides its data: a ustar header and a
# pax header (a header block and at least one block of records).
_MEMBER_OVERHEAD = 3 * _BLOCK
# tar pads the archive to whole records of 20 blocks.
_RECORD = 20 * _BLOCK


def _tree_size(path: Path) -> int:
    """The tar stream's size, estimated from `path` (not following links): the total
    for the progress bar, which counts the tar bytes. Data is padded to blocks and
    every member, directories too, has headers: the files' sizes alone fall short
    (a step's `done` would pass its `total`)."""
    total = 2 * _BLOCK + _MEMBER_OVERHEAD  # the end-of-archive blocks, the top folder
    for root, dirs, files in os.walk(path):
        total += _MEMBER_OVERHEAD * (len(dirs) + len(files))
        for name in files:
            try:
                # os.path in this hot loop: Path objects per file cost more.
                size = os.lstat(os.path.join(root, name)).st_size  # noqa: PTH118
            except OSError:
                continue
            total += -(-size // _BLOCK) * _BLOCK
    return -(-total // _RECORD) * _RECORD


async def dump_db(ctx: StepContext) -> dict[str, Any]:
    """The database, dumped by the engine's own tool, compressed into S3."""
    environment = await ctx.environment()
    dsn = environment.dsn
    engine = engine_for(dsn, ctx.settings)
    await engine.check(dsn)
    tables = await engine.list_tables(dsn)
    outputs = await _upload(ctx, Part.DATABASE, engine.dump(dsn))
    outputs.update(engine=dsn.engine, tables=len(tables), rows=sum(tables.values()))
    return outputs


async def archive_files(ctx: StepContext) -> dict[str, Any]:
    """The uploaded files under `files_<env>/`, as tar.gz (or tar.zst) into S3."""
    environment = await ctx.environment()
    files_dir = environment.files_dir
    if not files_dir.is_dir():
        raise BadInput(
            f"files directory {files_dir} of {environment.target} does not exist or is not a "
            "directory; fix it with envrestore env add",
            path=str(files_dir),
        )
    ctx.progress.total = await asyncio.to_thread(_tree_size, files_dir)
    return await _upload(ctx, Part.FILES, files_archive(files_dir, layout_of(ctx).files_top))


async def archive_code(ctx: StepContext) -> dict[str, Any]:
    """The git repository, `.git` and all tags, as tar.gz into S3."""
    environment = await ctx.environment()
    repo = environment.code_dir
    head = await head_commit(repo)
    repo_tags = await tags(repo)
    ctx.progress.total = await asyncio.to_thread(_tree_size, repo)
    outputs = await _upload(ctx, Part.CODE, code_archive(repo, layout_of(ctx).code_top))
    outputs.update(git_head=head, tags=len(repo_tags))
    return outputs


async def record_backup(ctx: StepContext) -> dict[str, Any]:
    """Write manifest.json beside the parts, then record the backup in one transaction."""
    layout = layout_of(ctx)
    request = BackupRequest.from_params(ctx.job.params)
    steps = {"database": "dump_db", "files": "archive_files", "code": "archive_code"}
    outputs = {e: await ctx.outputs_of(steps[e]) for e in request.elements}
    if "database" in outputs:
        engine = str(outputs["database"]["engine"])
    else:  # a backup without its database still says what engine it came from
        engine = (await ctx.environment()).engine
    await record_parts(
        ctx,
        layout,
        list(outputs.values()),
        kind=request.backup_kind,
        engine=engine,
        git_head=outputs["code"]["git_head"] if "code" in outputs else None,
        keep_days=int(request.keep_days or 0),
    )
    return {"backup_id": layout.backup_id, "manifest_key": layout.manifest_key}


async def record_parts(
    ctx: StepContext,
    layout: BackupLayout,
    parts: list[dict[str, Any]],
    *,
    kind: str,
    engine: str,
    git_head: str | None,
    keep_days: int,
) -> None:
    """The manifest beside the parts, then the backup and its parts in the ledger, at once.

    Also how a clone keeps its snapshot (database and files only) as a backup.
    """
    expires_at = layout.created_at + timedelta(days=keep_days)
    manifest = {
        "version": MANIFEST_VERSION,
        "backup_id": layout.backup_id,
        "site": layout.site,
        "env": layout.env,
        "kind": kind,
        "created_at": layout.created_at.isoformat(),
        "expires_at": expires_at.isoformat(),
        "engine": engine,
        "git_head": git_head,
        "job_id": str(ctx.job.id),
        "elements": [p["part"] for p in parts],
        "parts": {
            p["part"]: {"key": p["key"], "size": p["size"], "sha256": p["sha256"]} for p in parts
        },
    }
    body = json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8")
    await ctx.store.put_bytes(layout.manifest_key, body, content_type="application/json")
    environment_id = await ctx.runtime.pool.fetchval(
        sql("environment_id_of"), layout.site, layout.env
    )
    async with ctx.runtime.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            sql("insert_backup"),
            layout.backup_id,
            environment_id,
            layout.site,
            layout.env,
            kind,
            engine,
            git_head,
            layout.manifest_key,
            ctx.job.id,
            layout.created_at,
            expires_at,
        )
        for p in parts:
            await conn.execute(
                sql("insert_backup_part"),
                layout.backup_id,
                p["part"],
                p["key"],
                p["size"],
                p["sha256"],
            )
        await conn.execute(sql("merge_job_outputs"), ctx.job.id, {"backup_id": layout.backup_id})


async def discard_backup(ctx: StepContext) -> dict[str, Any]:
    """After a failure: delete every object the job wrote, so no orphan stays in S3."""
    layout = layout_of(ctx)
    removed = await ctx.store.delete_prefix(layout.prefix)
    # A sibling step cancelled mid-PUT may still have its object land on the
    # server after the client gave up (the body was already sent): sweep again
    # once such a request has had time to finish.
    await asyncio.sleep(DISCARD_SETTLE_SECONDS)
    removed += await ctx.store.delete_prefix(layout.prefix)
    await ctx.event("backup.discarded", prefix=layout.prefix, objects=removed)
    return {"objects_removed": removed}
