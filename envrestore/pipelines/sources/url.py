"""A URL as a source: one of our own temporary links, or a download from outside.

Our own links are checked against their record and read through the S3
client (`links`). Any other URL is fetched by `download`, which refuses
private addresses, unchecked redirects and oversized bodies before and while
it reads, into `staging/<job>/<element>` in the object store; the steps after
`fetch` read that object like any backup part.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from envrestore.pipelines.archives.formats import codec_for_key
from envrestore.pipelines.archives.tarpolicy import ArchiveRules
from envrestore.pipelines.backup.service import get_backup
from envrestore.pipelines.errors import IntegrityError, NotFound
from envrestore.pipelines.jobs.context import StepContext
from envrestore.pipelines.ledger.queries import sql
from envrestore.pipelines.sources.base import AUTO, PartRef, counted
from envrestore.pipelines.sources.download import download
from envrestore.pipelines.sources.links import check_link, own_store_key
from envrestore.pipelines.sources.urlsafety import check_url

#: An imported files archive whose only top folder is one of these is unwrapped.
IMPORT_UNWRAP = r"files(_[A-Za-z0-9][A-Za-z0-9._-]*)?"


def staging_key(ctx: StepContext, element: str) -> str:
    """Where `fetch` puts a downloaded part; all of `staging/<job>/` goes when the job ends."""
    return f"{staging_prefix(ctx)}{element}"


def staging_prefix(ctx: StepContext) -> str:
    return f"staging/{ctx.job_id}/"


def import_rules(element: str) -> ArchiveRules:
    """An imported archive may have any layout; `files/` or `files_<env>/` is unwrapped."""
    label = f"the imported {element} part"
    if element == "files":
        return ArchiveRules(label=label, unwrap=re.compile(IMPORT_UNWRAP))
    return ArchiveRules(label=label)


@dataclass(frozen=True)
class UrlSource:
    """A part at `url` (never logged with its query: link signatures stay out of logs)."""

    url: str

    @property
    def shown(self) -> str:
        return self.url.split("?", 1)[0].split("#", 1)[0]

    def describe(self) -> dict[str, Any]:
        return {"source": "url", "url": self.shown}

    def archive_rules(self, element: str) -> ArchiveRules:
        return import_rules(element)

    async def resolve(self, ctx: StepContext, element: str) -> dict[str, Any]:
        if own_store_key(self.url, ctx.settings) is None:
            check_url(self.url)  # the scheme and shape; addresses are checked as it is fetched
        return {"url": self.shown}

    async def fetch(self, ctx: StepContext, element: str, resolved: dict[str, Any]) -> PartRef:
        key = own_store_key(self.url, ctx.settings)
        if key is not None:
            return await self._own_link(ctx, element, key)
        settings = ctx.settings
        chunks = download(
            self.url,
            allow_hosts=settings.import_allow_hosts,
            max_bytes=settings.import_max_bytes,
            connect_timeout=settings.import_connect_timeout,
            read_timeout=settings.import_read_timeout,
            max_redirects=settings.import_max_redirects,
        )
        put = await ctx.store.put_stream(staging_key(ctx, element), counted(ctx, chunks))
        await ctx.event("import.fetched", part=element, url=self.shown, bytes=put.size)
        return PartRef(element, put.key, put.size, put.sha256, AUTO)

    async def _own_link(self, ctx: StepContext, element: str, key: str) -> PartRef:
        link = await check_link(ctx.runtime.pool, self.url, key)
        backup = await get_backup(ctx.runtime.pool, link["backup_id"])
        record = next((p for p in backup.parts if p["key"] == key), None)
        if record is None:
            raise NotFound(f"backup {backup.id} no longer has the part this link names")
        await ctx.event(
            "import.link_used", part=element, backup_id=backup.id, link_part=link["part"]
        )
        return PartRef(element, key, int(record["size"]), record["sha256"], codec_for_key(key))


@dataclass(frozen=True)
class UploadSource:
    """A part already uploaded to `staging/uploads/`, with the size and sha256 sent."""

    key: str
    size: int
    sha256: str

    def describe(self) -> dict[str, Any]:
        return {"source": "upload", "key": self.key}

    def archive_rules(self, element: str) -> ArchiveRules:
        return import_rules(element)

    async def resolve(self, ctx: StepContext, element: str) -> dict[str, Any]:
        head = await ctx.store.head(self.key)
        if head is None:
            raise NotFound(
                f"the uploaded {element} part {self.key} is not in the object store (was the "
                "upload finished, or the job's staging area cleaned?); upload it again",
                part=element,
            )
        if head.size != self.size:
            raise IntegrityError(
                f"the uploaded {element} part has {head.size} bytes in the object store, the "
                f"upload sent {self.size}; upload it again",
                part=element,
            )
        return {"key": self.key, "size": self.size}

    async def fetch(self, ctx: StepContext, element: str, resolved: dict[str, Any]) -> PartRef:
        return PartRef(element, self.key, self.size, self.sha256, AUTO)


async def release_fetched(ctx: StepContext, upload_keys: tuple[str, ...]) -> int:
    """Delete what the job brought into staging (downloads, and the uploads it imported).

    Called when the job ends either way. An upload's key is the same for the
    same file (that is how an interrupted upload resumes), so the same dump
    imported into two environments is one object: it stays while another
    unfinished job still names it.
    """
    removed = await ctx.store.delete_prefix(staging_prefix(ctx))
    for key in upload_keys:
        if await ctx.runtime.pool.fetchval(sql("upload_in_use"), ctx.job_id, key):
            continue
        await ctx.store.delete(key)
        removed += 1
    return removed
