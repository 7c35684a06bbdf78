"""One backup by hand: what it holds (`backup show`) and one part to disk (`backup get`).

The manifest in S3 and the ledger's rows are two records of the same backup;
both are read and must agree, so a tampered manifest is named, never trusted.
A part is streamed to a hidden file beside its destination, hashed on the way,
and only put in place once its sha256 matches: a mismatch leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from envrestore.pipelines.backup.service import BackupRecord, get_backup
from envrestore.pipelines.errors import BadInput, Conflict, IntegrityError, NotFound
from envrestore.pipelines.jobs.views import show_job
from envrestore.pipelines.objectstore import ObjectStore
from envrestore.pipelines.registry import get_environment
from envrestore.pipelines.requests import ELEMENTS

MANIFEST_MAX_BYTES = 1 << 20


async def backup_of(pool: asyncpg.Pool, target: str, backup_id: str) -> BackupRecord:
    """The backup `backup_id`, refused unless it is one of `target`'s."""
    environment = await get_environment(pool, target)
    backup = await get_backup(pool, backup_id)
    if (backup.site, backup.env) != (environment.site, environment.env):
        raise NotFound(
            f"backup {backup_id} is not a backup of {target} (it is {backup.site}.{backup.env}'s)",
            backup_id=backup_id,
        )
    return backup


async def read_manifest(store: ObjectStore, backup: BackupRecord) -> dict[str, Any]:
    """manifest.json, checked to be a JSON object whose parts are the ledger's."""
    try:
        raw = await store.get_bytes(backup.manifest_key, max_size=MANIFEST_MAX_BYTES)
    except NotFound:
        raise NotFound(
            f"backup {backup.id}: its manifest {backup.manifest_key} is missing from the object "
            "store",
            backup_id=backup.id,
        ) from None
    try:
        manifest = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        manifest = None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("parts"), dict):
        raise IntegrityError(f"backup {backup.id}: manifest.json is not a backup manifest")
    for record in backup.parts:
        listed = manifest["parts"].get(record["part"])
        expected = {k: record[k] for k in ("key", "size", "sha256")}
        if not isinstance(listed, dict) or {k: listed.get(k) for k in expected} != expected:
            raise IntegrityError(
                f"backup {backup.id}: the {record['part']} part in manifest.json does not match "
                "the ledger's record; the backup was tampered with",
                backup_id=backup.id,
                part=record["part"],
            )
    return manifest


async def describe_backup(
    pool: asyncpg.Pool, store: ObjectStore, target: str, backup_id: str
) -> dict[str, Any]:
    """Everything `backup show` prints: the record, its manifest and the job that made it."""
    backup = await backup_of(pool, target, backup_id)
    manifest = await read_manifest(store, backup)
    job: dict[str, Any] | None = None
    if backup.job_id is not None:
        with contextlib.suppress(NotFound):
            view = await show_job(pool, backup.job_id)
            job = {k: view[k] for k in ("id", "kind", "status", "requested_by", "created_at")}
    return {**backup.public(), "manifest": manifest, "job": job}


@dataclass(frozen=True)
class Downloaded:
    """A part written to disk, its bytes checked."""

    path: Path
    size: int
    sha256: str


def destination(part_key: str, to: Path | None) -> Path:
    """Where `backup get` writes: `--to` (a file, or a directory to put it in), else here."""
    name = part_key.rsplit("/", 1)[-1]
    if to is None:
        return Path.cwd() / name
    to = to.expanduser()
    return to / name if to.is_dir() else to


async def download_part(
    store: ObjectStore,
    backup: BackupRecord,
    manifest: dict[str, Any],
    part: str,
    dest: Path,
    *,
    force: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> Downloaded:
    """Stream one part to `dest`, its sha256 checked against the manifest's.

    Never holds the part in memory; writes beside `dest` and renames once the
    hash matches. An existing `dest` is refused unless `force`.
    """
    if part not in ELEMENTS:
        raise BadInput(f"--part {part!r}: use database, files or code")
    record = next((p for p in backup.parts if p["part"] == part), None)
    if record is None:
        held = ", ".join(backup.elements) or "no parts"
        raise NotFound(f"backup {backup.id} has no {part} part (it holds {held})")
    expected_sha = str(manifest["parts"][part]["sha256"])
    expected_size = int(manifest["parts"][part]["size"])
    if dest.exists() and not force:  # noqa: ASYNC240 - one stat before a long download
        raise Conflict(f"{dest} exists; choose another --to or pass --force to overwrite it")
    if not dest.parent.is_dir():
        raise BadInput(f"{dest.parent} is not a directory")
    partial = dest.parent / f".{dest.name}.partial-{os.getpid()}"
    digest = hashlib.sha256()
    size = 0
    try:
        with partial.open("xb") as fh:
            async for chunk in store.get_stream(record["key"]):
                digest.update(chunk)
                size += len(chunk)
                fh.write(chunk)
                if on_progress is not None:
                    on_progress(size, expected_size)
        actual = digest.hexdigest()
        if actual != expected_sha or size != expected_size:
            raise IntegrityError(
                f"backup {backup.id}: the {part} part read back as {size} bytes with sha256 "
                f"{actual}, but the manifest says {expected_size} bytes with {expected_sha}; "
                "nothing was written",
                backup_id=backup.id,
                part=part,
            )
        if force:
            partial.replace(dest)
        else:
            os.link(partial, dest)  # fails if dest appeared meanwhile: never overwrite unasked
            partial.unlink()
    except FileExistsError:
        raise Conflict(f"{dest} exists; pass --force to overwrite it") from None
    finally:
        partial.unlink(missing_ok=True)
    return Downloaded(dest, size, expected_sha)
