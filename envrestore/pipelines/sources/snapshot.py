"""A live environment as a source: clone content from it, consistently, without a backup.

`fetch` streams a consistent snapshot of the source into `staging/<job>/`:
the database through its dump tool in one transaction (`--single-transaction`,
pg_dump's snapshot), the files from a hard-linked copy taken first, so writes
to the source during the clone never reach the archive halfway. The steps
after `fetch` read those objects like backup parts; they are deleted when the
job ends (unless the clone keeps them as a backup).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from envrestore.pipelines import trees
from envrestore.pipelines.archives.files import files_archive
from envrestore.pipelines.archives.tarpolicy import ArchiveRules
from envrestore.pipelines.backup.naming import BackupLayout, Part
from envrestore.pipelines.engines.base import engine_for
from envrestore.pipelines.errors import BadInput, PermanentError
from envrestore.pipelines.jobs.context import StepContext
from envrestore.pipelines.registry import Environment, get_environment, parse_target
from envrestore.pipelines.requests import CloneRequest
from envrestore.pipelines.restore.targets import job_tag
from envrestore.pipelines.sources.base import PartRef, counted
from envrestore.pipelines.streams import gzip_compress, rate_limited

SNAPSHOT_NAMES = {"database": "database.sql.gz", "files": "files.tar.gz"}


def snapshot_layout(request: CloneRequest) -> BackupLayout | None:
    """Where a clone's snapshot goes when it is kept as a backup of the source."""
    if not (request.keep_snapshot and request.snapshot_backup_id and request.snapshot_created_at):
        return None
    site, env = parse_target(request.source)
    return BackupLayout(
        site, env, request.snapshot_backup_id, datetime.fromisoformat(request.snapshot_created_at)
    )


@dataclass(frozen=True)
class SnapshotSource:
    """The live content of environment `site`.`env`; kept as backup `keep` if given."""

    site: str
    env: str
    keep: BackupLayout | None = None

    @property
    def target(self) -> str:
        return f"{self.site}.{self.env}"

    def describe(self) -> dict[str, Any]:
        return {"source": "snapshot", "from": self.target}

    def archive_rules(self, element: str) -> ArchiveRules:
        return ArchiveRules(
            label=f"the {element} snapshot",
            top=f"files_{self.env}",
            top_reason=f"this is a snapshot of {self.env}",
        )

    async def environment(self, ctx: StepContext) -> Environment:
        return await get_environment(ctx.runtime.pool, self.target)

    async def resolve(self, ctx: StepContext, element: str) -> dict[str, Any]:
        source = await self.environment(ctx)
        target = await ctx.environment()
        if source.id == target.id:
            raise BadInput(f"cannot clone {source.target} into itself")
        if element == "database":
            if source.engine != target.engine:
                raise PermanentError(
                    f"{source.target} runs {source.engine} but {target.target} runs "
                    f"{target.engine}; content can only be cloned between the same engine",
                )
            await engine_for(source.dsn, ctx.settings).check(source.dsn)
        elif element == "files" and not source.files_dir.is_dir():
            raise BadInput(
                f"files directory {source.files_dir} of {source.target} does not exist",
                path=str(source.files_dir),
            )
        elif element == "code":
            raise BadInput("clone-content copies the database and files, not the code")
        return {"from": source.target, "engine": source.engine}

    async def fetch(self, ctx: StepContext, element: str, resolved: dict[str, Any]) -> PartRef:
        source = await self.environment(ctx)
        if self.keep is not None:
            key = self.keep.key(Part(element))
        else:
            key = f"staging/{ctx.job_id}/{SNAPSHOT_NAMES[element]}"
        if element == "database":
            dsn = source.dsn
            engine = engine_for(dsn, ctx.settings)
            put = await ctx.store.put_stream(key, self._packed(ctx, engine.dump(dsn)))
        else:
            snapshot = trees.snapshot_path(source.files_dir, job_tag(ctx.job_id))
            try:
                await trees.hardlink_snapshot(source.files_dir, snapshot)
                tar = files_archive(snapshot, f"files_{source.env}", snapshot=True)
                put = await ctx.store.put_stream(key, self._packed(ctx, tar))
            finally:
                trees.discard(snapshot)
        await ctx.event("clone.snapshot_taken", part=element, source=source.target, bytes=put.size)
        return PartRef(element, put.key, put.size, put.sha256, "gzip")

    def _packed(self, ctx: StepContext, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        return rate_limited(
            gzip_compress(counted(ctx, chunks), ctx.settings.gzip_level),
            ctx.settings.stream_rate_limit,
        )
