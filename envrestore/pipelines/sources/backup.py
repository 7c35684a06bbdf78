"""A backup as a source: the target's own, or any other environment's of any site.

Workers read the parts straight from where the backup keeps them; `fetch`
moves nothing. `resolve` checks the ledger's record against the backup's
manifest and the object store, so a tampered or half-deleted backup is
refused before anything changes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from envrestore.pipelines.archives.formats import codec_for_key
from envrestore.pipelines.archives.tarpolicy import ArchiveRules
from envrestore.pipelines.backup.service import BackupRecord, get_backup
from envrestore.pipelines.errors import IntegrityError, NotFound, PermanentError
from envrestore.pipelines.jobs.context import StepContext
from envrestore.pipelines.sources.base import PartRef


@dataclass(frozen=True)
class BackupSource:
    """The parts of backup `backup_id`, made of environment `site`.`env`."""

    backup_id: str
    site: str
    env: str

    def describe(self) -> dict[str, Any]:
        return {"source": "backup", "backup_id": self.backup_id, "from": f"{self.site}.{self.env}"}

    def archive_rules(self, element: str) -> ArchiveRules:
        """A backup of `dev` keeps its files under `files_dev/` (Pantheon's naming): a
        `files_live/` archive, or members at the root, is the wrong part. The code
        part may have any single top folder."""
        label = f"the {element} part"
        if element != "files":
            return ArchiveRules(label=label)
        return ArchiveRules(
            label=label, top=f"files_{self.env}", top_reason=f"this is a backup of {self.env}"
        )

    async def record(self, ctx: StepContext) -> BackupRecord:
        return await get_backup(ctx.runtime.pool, self.backup_id)

    async def resolve(self, ctx: StepContext, element: str) -> dict[str, Any]:
        backup = await self.record(ctx)
        environment = await ctx.environment()
        if element == "database" and backup.engine != environment.engine:
            raise PermanentError(
                f"backup {backup.id} of {backup.site}.{backup.env} holds a {backup.engine} "
                f"dump but {environment.target} runs {environment.engine}; restore a backup "
                "of the same engine",
                backup_id=backup.id,
            )
        record = next((p for p in backup.parts if p["part"] == element), None)
        if record is None:
            raise NotFound(f"backup {backup.id} has no {element} part", backup_id=backup.id)
        manifest = json.loads(await ctx.store.get_bytes(backup.manifest_key, max_size=1 << 20))
        listed = manifest.get("parts", {}).get(element, {})
        if listed.get("sha256") != record["sha256"] or listed.get("size") != record["size"]:
            raise IntegrityError(
                f"backup {backup.id}: the {element} part in manifest.json does not match the "
                "ledger's record; the backup was tampered with — restore another one",
                part=element,
            )
        head = await ctx.store.head(record["key"])
        if head is None:
            raise NotFound(
                f"backup {backup.id}: the {element} part {record['key']} is missing from the "
                "object store; restore another backup",
                part=element,
            )
        if head.size != record["size"]:
            raise IntegrityError(
                f"verify failed for the {element} part: {record['key']} has {head.size} bytes "
                f"in the object store, the manifest says {record['size']}",
                part=element,
            )
        ref = PartRef(element, record["key"], int(record["size"]), record["sha256"])
        return {**ref.outputs(), "codec": codec_for_key(ref.key)}

    async def fetch(self, ctx: StepContext, element: str, resolved: dict[str, Any]) -> PartRef:
        return PartRef.from_outputs(resolved)

    async def origin(self, ctx: StepContext) -> dict[str, Any]:
        """What later steps check against: the backup's HEAD commit, its engine."""
        backup = await self.record(ctx)
        return {
            "backup_id": backup.id,
            "env": backup.env,
            "site": backup.site,
            "engine": backup.engine,
            "git_head": backup.git_head,
        }
