"""Request fingerprints for idempotency keys: same request, same fingerprint."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def request_fingerprint(kind: str, target: str | None, params: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of what was asked."""
    canonical = json.dumps(
        {"kind": kind, "target": target, "params": params},
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
