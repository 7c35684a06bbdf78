"""Temporary links: presigned GETs of backup parts, recorded, and recognised when they come back.

A link is handed out with a TTL and recorded (part, expiry, who asked, its
signature). When an import is given a URL of our own object store, the worker
does not fetch it over HTTP: it checks the link against the record (same
signature, same object, not expired) and reads the object through the S3
client. A tampered or expired link fails before a byte is read.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg

from envrestore.config.settings import Settings
from envrestore.pipelines.backup.service import BackupRecord
from envrestore.pipelines.errors import BadInput, Refused, UnsafeInput
from envrestore.pipelines.jobs.principal import Principal
from envrestore.pipelines.ledger.queries import sql
from envrestore.pipelines.objectstore import ObjectStore

_SIGNATURE = "X-Amz-Signature"


@dataclass(frozen=True)
class Link:
    """One temporary link as handed out."""

    backup_id: str
    part: str
    url: str
    expires_at: datetime

    def public(self) -> dict[str, Any]:
        return {
            "backup_id": self.backup_id,
            "part": self.part,
            "url": self.url,
            "expires_at": self.expires_at.isoformat(),
        }


def link_ttl(settings: Settings, ttl: int | None) -> int:
    """The TTL asked for, or the default; refused past ENVRESTORE_LINK_MAX_TTL."""
    chosen = settings.link_default_ttl if ttl is None else ttl
    if chosen < 1:
        raise BadInput(f"--ttl must be at least 1 second, not {chosen}")
    if chosen > settings.link_max_ttl:
        raise BadInput(
            f"--ttl {chosen} is longer than the {settings.link_max_ttl} s this platform allows "
            "(ENVRESTORE_LINK_MAX_TTL)"
        )
    return chosen


async def issue_links(
    pool: asyncpg.Pool,
    store: ObjectStore,
    backup: BackupRecord,
    parts: tuple[str, ...],
    *,
    ttl: int,
    principal: Principal,
) -> list[Link]:
    """Presign a GET for each part and record it."""
    links: list[Link] = []
    by_part = {p["part"]: p for p in backup.parts}
    for part in parts:
        record = by_part.get(part)
        if record is None:
            raise BadInput(f"backup {backup.id} has no {part} part", backup_id=backup.id)
        expires_at = datetime.now(UTC) + timedelta(seconds=ttl)
        url = await store.presign_get(record["key"], ttl)
        signature = _signature_of(url) or url  # stores without one: the whole URL is the token
        await pool.execute(
            sql("insert_link"),
            uuid.uuid4(),
            backup.id,
            part,
            record["key"],
            signature,
            expires_at,
            str(principal),
        )
        links.append(Link(backup.id, part, url, expires_at.replace(microsecond=0)))
    return links


def _signature_of(url: str) -> str | None:
    values = parse_qs(urlsplit(url).query).get(_SIGNATURE)
    return values[0] if values else None


def own_store_key(url: str, settings: Settings) -> str | None:
    """The object key when `url` points into our own bucket, else None.

    On the endpoint or on the public endpoint: links are signed for the public
    one, and a URL on the internal one reaches the same bucket.
    """
    given = urlsplit(url)
    for endpoint in {settings.s3_endpoint_url, settings.presign_endpoint_url}:
        if not endpoint:
            continue
        ours = urlsplit(endpoint)
        if (given.scheme.lower(), given.netloc.lower()) != (
            ours.scheme.lower(),
            ours.netloc.lower(),
        ):
            continue
        prefix = f"{ours.path.rstrip('/')}/{settings.s3_bucket}/"
        if given.path.startswith(prefix):
            return unquote(given.path[len(prefix) :])
    return None


async def check_link(pool: asyncpg.Pool, url: str, key: str) -> asyncpg.Record:
    """The recorded link `url` is, if it is one we issued for `key` and it has not expired."""
    signature = _signature_of(url)
    shown = url.split("?", 1)[0]
    if signature is None:
        raise UnsafeInput(
            f"the URL {shown} points into envrestore's own object store but is not a "
            "temporary link (it has no signature); make one with: envrestore backup link",
            problem="not_a_link",
        )
    row = await pool.fetchrow(sql("get_link_by_signature"), signature)
    if row is None or row["key"] != key:
        raise UnsafeInput(
            f"the temporary link {shown} is not one envrestore issued: its signature does "
            "not match any link (was it changed?); ask for a new link with: envrestore "
            "backup link",
            problem="link_tampered",
        )
    if row["expires_at"] <= datetime.now(UTC):
        raise Refused(
            f"the temporary link {shown} expired at {row['expires_at'].isoformat()}; ask for "
            "a new one with: envrestore backup link",
            problem="link_expired",
        )
    return row
