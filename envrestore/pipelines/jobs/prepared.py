"""What a producer-side check turns a request into: the job to record."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from envrestore.pipelines.jobs.kinds import JobKind
from envrestore.pipelines.registry import Environment

#: The idempotency scope of jobs the system asks for (expiry deletes, rollback
#: expiries): apart from every user's or token's keys.
SYSTEM_SCOPE = "envrestore-system"


@dataclass(frozen=True)
class Prepared:
    """A checked request: its kind, environment, stored parameters and fingerprint.

    `params` is the request as the job will run it (e.g. "latest" pinned to a
    backup id); `asked` is the request as given, which the idempotency
    fingerprint is made of (same key, same ask → same job).
    """

    kind: JobKind
    environment: Environment | None
    params: dict[str, Any]
    asked: dict[str, Any] = field(default_factory=dict)
    idempotency_scope: str | None = None
