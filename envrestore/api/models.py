"""Request bodies: each maps onto a typed request (`pipelines/requests.py`).

Unknown fields are refused (a typo is a 422, not a silently ignored option).
The request's own checks (elements, code strategy, pairs) run when it is
built, so the API refuses exactly what the CLI refuses.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Element = Literal["database", "files", "code"]
CodeStrategy = Literal["replace", "revert", "overwrite", "merge"]
_NAME = r"^[a-z0-9][a-z0-9-]{0,62}$"
_TARGET = r"^[a-z0-9][a-z0-9-]{0,62}\.[a-z0-9][a-z0-9-]{0,62}$"


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Pair(Body):
    """One `OLD=NEW` rewrite in the database (serialized-safe)."""

    old: str = Field(min_length=1, max_length=2000)
    new: str = Field(min_length=1, max_length=2000)


class BackupBody(Body):
    elements: list[Element] | None = Field(default=None, min_length=1)
    keep_days: int | None = Field(default=None, ge=1, le=36500)


class ContentOptions(Body):
    """Options every content replacement shares (restore, import, clone)."""

    force_live: bool = False
    allow_incomplete_dump: bool = False
    code_strategy: CodeStrategy | None = None
    replace_pairs: list[Pair] = Field(default_factory=list, max_length=100)
    search_replace: bool = True


class RestoreBody(ContentOptions):
    backup: str = Field(default="latest", min_length=1, max_length=200)
    source: str | None = Field(default=None, pattern=_TARGET)
    elements: list[Element] | None = Field(default=None, min_length=1)
    in_place: bool = False


class UrlPart(Body):
    element: Element
    url: str = Field(min_length=1, max_length=8000)


class ImportBody(ContentOptions):
    parts: list[UrlPart] = Field(min_length=1, max_length=3)


class CloneBody(Body):
    source: str = Field(pattern=_TARGET)
    elements: list[Literal["database", "files"]] | None = Field(default=None, min_length=1)
    keep_snapshot: bool = False
    replace_pairs: list[Pair] = Field(default_factory=list, max_length=100)
    search_replace: bool = True
    allow_incomplete_dump: bool = False


class RollbackBody(Body):
    job_id: str = Field(min_length=1, max_length=64, description="The restore or import job")


class LinkBody(Body):
    target: str = Field(pattern=_TARGET)
    backup: str = Field(default="latest", min_length=1, max_length=200)
    parts: list[Element] = Field(min_length=1)
    ttl_seconds: int | None = Field(default=None, ge=1, le=7 * 24 * 3600)


class UploadBody(Body):
    element: Element
    size: int = Field(gt=0, le=5 * 1024**4, description="The file's size in bytes")
    filename: str = Field(min_length=1, max_length=255)


class PartEtag(Body):
    number: int = Field(ge=1, le=10_000)
    etag: str = Field(min_length=1, max_length=200)


class ImportOptions(Body):
    force_live: bool = False
    allow_incomplete_dump: bool = False
    code_strategy: CodeStrategy | None = None
    replace_pairs: list[Pair] = Field(default_factory=list, max_length=100)
    search_replace: bool = True


class CompleteBody(Body):
    parts: list[PartEtag] = Field(min_length=1, max_length=10_000)
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$", description="SHA-256 of the whole file")
    options: ImportOptions = Field(default_factory=ImportOptions)


def pairs(items: list[Pair]) -> tuple[tuple[str, str], ...]:
    return tuple((p.old, p.new) for p in items)
