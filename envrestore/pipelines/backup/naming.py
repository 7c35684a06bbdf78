"""Where a backup's parts live, named as Pantheon names them so real backups import unchanged.

`backups/<site>/<env>/<backup-id>/<site>_<env>_<YYYY-MM-DDTHH-MM-SS>_UTC_<part>`

With `backup_compression = "zstd"` the database and files parts end in `.zst`
instead of `.gz` (`database.sql.zst`, `files.tar.zst`): the name is the record of
the codec (`archives.formats.codec_for_key`), so restores read both.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime


class Part(enum.StrEnum):
    """The three parts of a backup."""

    CODE = "code"
    DATABASE = "database"
    FILES = "files"


SUFFIX = {
    Part.CODE: "code.tar.gz",
    Part.DATABASE: "database.sql.gz",
    Part.FILES: "files.tar.gz",
}
#: The parts written as `.zst` when backups use zstd (code stays a small tar.gz).
ZSTD_PARTS = frozenset({Part.DATABASE, Part.FILES})
MANIFEST = "manifest.json"


def pantheon_timestamp(moment: datetime) -> str:
    """`2026-11-26T10-33-00`, the form Pantheon puts in backup file names (UTC)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H-%M-%S")


def new_backup_id(moment: datetime, job_id: uuid.UUID) -> str:
    """Sortable by time, unique by job: `20261126T103300Z-1a2b3c`."""
    return f"{moment.astimezone(UTC).strftime('%Y%m%dT%H%M%SZ')}-{job_id.hex[:6]}"


@dataclass(frozen=True)
class BackupLayout:
    """The object keys of one backup."""

    site: str
    env: str
    backup_id: str
    created_at: datetime
    #: "gzip" or "zstd": how the database and files parts are compressed.
    compression: str = "gzip"

    @property
    def prefix(self) -> str:
        return f"backups/{self.site}/{self.env}/{self.backup_id}/"

    def file_name(self, part: Part) -> str:
        stamp = pantheon_timestamp(self.created_at)
        suffix = SUFFIX[part]
        if self.compression == "zstd" and part in ZSTD_PARTS:
            suffix = suffix.removesuffix(".gz") + ".zst"
        return f"{self.site}_{self.env}_{stamp}_UTC_{suffix}"

    def key(self, part: Part) -> str:
        return self.prefix + self.file_name(part)

    @property
    def manifest_key(self) -> str:
        return self.prefix + MANIFEST

    @property
    def files_top(self) -> str:
        return f"files_{self.env}"

    @property
    def code_top(self) -> str:
        return f"code_{self.env}"
