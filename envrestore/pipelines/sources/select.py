"""Which source feeds each part of a content request."""

from __future__ import annotations

from envrestore.pipelines.registry import parse_target
from envrestore.pipelines.requests import CloneRequest, ContentRequest, ImportRequest
from envrestore.pipelines.sources.backup import BackupSource
from envrestore.pipelines.sources.base import Source
from envrestore.pipelines.sources.snapshot import SnapshotSource, snapshot_layout
from envrestore.pipelines.sources.url import UploadSource, UrlSource


def sources_for(request: ContentRequest) -> dict[str, Source]:
    """element → its source. A restore reads every part from one (pinned) backup."""
    if isinstance(request, CloneRequest):
        site, env = parse_target(request.source)
        snapshot = SnapshotSource(site, env, snapshot_layout(request))
        return dict.fromkeys(request.elements, snapshot)
    if isinstance(request, ImportRequest):
        chosen: dict[str, Source] = {}
        for part in request.parts:
            if part.url is not None:
                chosen[part.element] = UrlSource(part.url)
            else:
                assert part.upload_key is not None
                assert part.size is not None
                assert part.sha256 is not None
                chosen[part.element] = UploadSource(part.upload_key, part.size, part.sha256)
        return chosen
    site, env = parse_target(request.source or request.target)
    backup = BackupSource(request.backup, site, env)
    return dict.fromkeys(request.elements, backup)
