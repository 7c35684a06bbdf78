"""What users ask for, as typed, frozen requests.

One request object is a job's stored parameters (`to_params`), the source of
its idempotency fingerprint (the request as asked, before the producer pins
"latest" to a backup id) and, next, the HTTP API's body. Steps read them back
with `from_params`, never `params["..."]`.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Protocol, TypeVar

from envrestore.pipelines.errors import BadInput

#: The parts of an environment's content, in the order steps and outputs list them.
ELEMENTS: tuple[str, ...] = ("database", "files", "code")
R = TypeVar("R", bound="Request")
#: Where uploads wait for the job that imports them.
UPLOADS_PREFIX = "staging/uploads/"


class Request(Protocol):
    """What every request has: the job kind it becomes and the environment it targets."""

    kind: ClassVar[str]

    @property
    def target(self) -> str | None: ...


def parse_elements(element: str) -> tuple[str, ...]:
    """`all`, one element, or a comma-separated list (CLI spelling)."""
    if element == "all":
        return ELEMENTS
    chosen = tuple(e.strip() for e in element.split(",") if e.strip())
    return check_elements(chosen, given=element)


def check_elements(chosen: tuple[str, ...], *, given: object = None) -> tuple[str, ...]:
    unknown = [e for e in chosen if e not in ELEMENTS]
    if not chosen or unknown:
        raise BadInput(
            f"--element {given if given is not None else ','.join(chosen)!r}: use all, "
            "database, files or code (or a comma-separated list)"
        )
    return tuple(e for e in ELEMENTS if e in chosen)


def to_params(request: object) -> dict[str, Any]:
    """The request as JSON-able data (tuples become lists)."""
    data: dict[str, Any] = dataclasses.asdict(request)  # type: ignore[call-overload]
    return data


def from_params(cls: type[R], data: Mapping[str, Any]) -> R:
    """Rebuild a request from stored parameters; unknown keys are ignored."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})


def parse_pairs(pairs: tuple[str, ...] | list[str]) -> tuple[tuple[str, str], ...]:
    """`OLD=NEW` strings (CLI `--search-replace`) as pairs; both sides non-empty."""
    parsed: list[tuple[str, str]] = []
    for pair in pairs:
        old, sep, new = str(pair).partition("=")
        if not sep or not old or not new:
            raise BadInput(f"--search-replace {pair!r}: give OLD=NEW, both non-empty")
        parsed.append((old, new))
    return tuple(parsed)


def _pairs(value: Iterable[Any] | None) -> tuple[tuple[str, str], ...]:
    """Pairs as stored (lists from JSON) or given (tuples)."""
    items: tuple[Any, ...] = tuple(value or ())
    if all(isinstance(i, str) for i in items):
        return parse_pairs(items)
    pairs = tuple((str(old), str(new)) for old, new in items)
    for old, new in pairs:
        if not old or not new:
            raise BadInput("a search-replace pair needs a non-empty OLD and NEW")
    return pairs


#: Code strategies: `replace` puts the archive's repository in place (a restore of
#: the same site); `revert` makes one commit whose tree is the backup's; for
#: another site's code, `overwrite` (one commit of its tree) or `merge` (histories).
CODE_STRATEGIES = ("replace", "revert", "overwrite", "merge")


def check_code_strategy(strategy: str | None) -> str | None:
    if strategy is not None and strategy not in CODE_STRATEGIES:
        raise BadInput(
            f"--code-strategy {strategy!r}: use {', '.join(CODE_STRATEGIES)}", strategy=strategy
        )
    return strategy


@dataclass(frozen=True)
class BackupRequest:
    """Back up an environment (database, files, code) into the object store."""

    kind: ClassVar[str] = "backup"

    target: str
    keep_days: int | None = None
    backup_kind: str = "manual"
    #: Fixed by the producer when it queues the job (not part of what was asked).
    backup_id: str | None = None
    created_at: str | None = None
    #: The parts to back up (`--element`); the manifest lists only these.
    elements: tuple[str, ...] = ELEMENTS

    def __post_init__(self) -> None:
        object.__setattr__(self, "elements", check_elements(tuple(self.elements)))

    @classmethod
    def from_params(cls, data: Mapping[str, Any]) -> BackupRequest:
        if "kind" in data and "backup_kind" not in data:  # jobs queued before requests
            data = {**data, "backup_kind": data["kind"], "target": data.get("target", "")}
        return from_params(cls, data)


@dataclass(frozen=True)
class RestoreRequest:
    """Replace an environment's content with a backup's: its own, or another environment's.

    `source` is the `SITE.ENV` whose backup is read (None: the target's own);
    `backup` a backup id or "latest" (the producer pins it to an id).
    """

    kind: ClassVar[str] = "restore"

    target: str
    backup: str = "latest"
    source: str | None = None
    elements: tuple[str, ...] = ELEMENTS
    in_place: bool = False
    force_live: bool = False
    allow_incomplete_dump: bool = False
    code_strategy: str | None = None
    #: Extra `(old, new)` pairs rewritten in the database; `search_replace=False`
    #: turns the rewrite of the source's URL to the target's off.
    replace_pairs: tuple[tuple[str, str], ...] = ()
    search_replace: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "elements", check_elements(tuple(self.elements)))
        object.__setattr__(self, "replace_pairs", _pairs(self.replace_pairs))
        check_code_strategy(self.code_strategy)

    @classmethod
    def from_params(cls, data: Mapping[str, Any]) -> RestoreRequest:
        if "backup_id" in data and "target" not in data:  # jobs queued before requests
            data = {**data, "target": "", "backup": data["backup_id"]}
        return from_params(cls, data)


@dataclass(frozen=True)
class PartInput:
    """Where one imported part comes from: a URL, or an upload already in `staging/`.

    An upload carries the size and sha256 the uploader measured, so the worker
    checks that what it reads is what was sent.
    """

    element: str
    url: str | None = None
    upload_key: str | None = None
    size: int | None = None
    sha256: str | None = None

    def __post_init__(self) -> None:
        if self.element not in ELEMENTS:
            raise BadInput(f"{self.element!r} is not database, files or code")
        if (self.url is None) == (self.upload_key is None):
            raise BadInput(f"the {self.element} part needs exactly one of a URL or an upload")
        if self.upload_key is not None:
            if self.size is None or self.sha256 is None:
                raise BadInput(f"the uploaded {self.element} part needs its size and sha256")
            # An upload is only ever read from the uploads area: a request naming
            # another key (another site's backup) must not reach it.
            if not self.upload_key.startswith(UPLOADS_PREFIX) or ".." in self.upload_key.split("/"):
                raise BadInput(
                    f"the uploaded {self.element} part must be under {UPLOADS_PREFIX}",
                    key=self.upload_key,
                )

    @property
    def shown(self) -> str:
        """For messages: the URL without its query (no link signatures in logs)."""
        if self.url is not None:
            return self.url.split("?", 1)[0].split("#", 1)[0]
        return f"upload {self.upload_key}"


@dataclass(frozen=True)
class ImportRequest:
    """Replace parts of an environment's content with archives from URLs or uploads."""

    kind: ClassVar[str] = "import"

    target: str
    parts: tuple[PartInput, ...]
    force_live: bool = False
    allow_incomplete_dump: bool = False
    #: Imports always build beside the live content (kept for the pipeline's shape).
    in_place: bool = False
    code_strategy: str | None = None
    replace_pairs: tuple[tuple[str, str], ...] = ()
    search_replace: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "replace_pairs", _pairs(self.replace_pairs))
        check_code_strategy(self.code_strategy)
        parts = tuple(p if isinstance(p, PartInput) else PartInput(**p) for p in self.parts)
        if not parts:
            raise BadInput("an import needs at least one part (--code, --database or --files)")
        seen = [p.element for p in parts]
        if len(set(seen)) != len(seen):
            raise BadInput("each part may be given once")
        object.__setattr__(
            self, "parts", tuple(sorted(parts, key=lambda p: ELEMENTS.index(p.element)))
        )

    @property
    def elements(self) -> tuple[str, ...]:
        return tuple(p.element for p in self.parts)

    def part(self, element: str) -> PartInput:
        return next(p for p in self.parts if p.element == element)

    @classmethod
    def from_params(cls, data: Mapping[str, Any]) -> ImportRequest:
        return from_params(cls, data)


@dataclass(frozen=True)
class CloneRequest:
    """Copy an environment's live database and files into another, through the pipeline.

    Allowed into protected environments: it is how content reaches `live`
    (a rollback point is kept there as for a restore).
    """

    kind: ClassVar[str] = "clone"

    source: str
    target: str
    elements: tuple[str, ...] = ("database", "files")
    keep_snapshot: bool = False
    replace_pairs: tuple[tuple[str, str], ...] = ()
    search_replace: bool = True
    in_place: bool = False
    allow_incomplete_dump: bool = False
    code_strategy: str | None = None
    force_live: bool = True
    #: With keep_snapshot: the backup the snapshot becomes (pinned by the producer).
    snapshot_backup_id: str | None = None
    snapshot_created_at: str | None = None

    def __post_init__(self) -> None:
        elements = check_elements(tuple(self.elements))
        if "code" in elements:
            raise BadInput(
                "clone-content copies the database and files; bring code with restore "
                "--element code or import code"
            )
        object.__setattr__(self, "elements", elements)
        object.__setattr__(self, "replace_pairs", _pairs(self.replace_pairs))

    @classmethod
    def from_params(cls, data: Mapping[str, Any]) -> CloneRequest:
        return from_params(cls, data)


@dataclass(frozen=True)
class RollbackRequest:
    """Swap back what a restore (or import) replaced."""

    kind: ClassVar[str] = "rollback"

    restore_job_id: str

    @classmethod
    def from_params(cls, data: Mapping[str, Any]) -> RollbackRequest:
        return from_params(cls, data)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "restore_job_id", str(uuid.UUID(str(self.restore_job_id))))
        except ValueError:
            raise BadInput(f"{self.restore_job_id!r} is not a job id") from None

    @property
    def target(self) -> str | None:
        return None


@dataclass(frozen=True)
class ExpireRollbackRequest:
    """Drop a rollback point past its time (the system asks, not a user)."""

    kind: ClassVar[str] = "expire_rollback"

    restore_job_id: str

    @classmethod
    def from_params(cls, data: Mapping[str, Any]) -> ExpireRollbackRequest:
        return from_params(cls, data)

    @property
    def target(self) -> str | None:
        return None


#: Why a backup is deleted: an operator asked, or its time ran out.
DELETE_REASONS = ("manual", "expired")


@dataclass(frozen=True)
class DeleteBackupRequest:
    """Delete a backup's objects and then its ledger rows, once no job reads it."""

    kind: ClassVar[str] = "delete_backup"

    target: str
    backup_id: str
    reason: str = "manual"

    def __post_init__(self) -> None:
        if self.reason not in DELETE_REASONS:
            raise BadInput(f"delete reason {self.reason!r}: use {', '.join(DELETE_REASONS)}")
        if not self.backup_id or "/" in self.backup_id or self.backup_id in (".", ".."):
            raise BadInput(f"{self.backup_id!r} is not a backup id")

    @classmethod
    def from_params(cls, data: Mapping[str, Any]) -> DeleteBackupRequest:
        return from_params(cls, data)


@dataclass(frozen=True)
class LinkRequest:
    """Temporary links (presigned GETs) to parts of a backup; not a job, but recorded."""

    kind: ClassVar[str] = "link"

    target: str
    backup: str
    parts: tuple[str, ...]
    ttl_seconds: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "parts", check_elements(tuple(self.parts)))


#: The requests that are content replacements: one pipeline, fed by a source.
ContentRequest = RestoreRequest | ImportRequest | CloneRequest
#: job kind → its request type, for the steps the three share.
CONTENT_REQUESTS: dict[str, type[ContentRequest]] = {
    cls.kind: cls for cls in (RestoreRequest, ImportRequest, CloneRequest)
}
