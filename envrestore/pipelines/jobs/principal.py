"""Who asked for a job: recorded with it, for audit and for "who restored live?"."""

from __future__ import annotations

import getpass
import re
from dataclasses import dataclass
from typing import Literal

from envrestore.pipelines.errors import BadInput

PrincipalKind = Literal["operator", "token", "scheduler", "system"]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,99}$")


@dataclass(frozen=True)
class Principal:
    """An operator at a shell, an API token, the scheduler, or envrestore itself."""

    kind: PrincipalKind
    name: str

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise BadInput(
                f"principal name {self.name!r} is not valid: letters, digits and ._@+- only",
                name=self.name,
            )

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"

    @classmethod
    def operator(cls, name: str | None = None) -> Principal:
        """The person running the CLI (their login name, unless told otherwise)."""
        if name is None:
            try:
                name = getpass.getuser()
            except (KeyError, OSError):
                name = "unknown"
        cleaned = re.sub(r"[^A-Za-z0-9._@+-]", "_", name)[:100].lstrip("._@+-") or "unknown"
        return cls("operator", cleaned)

    @classmethod
    def system(cls, name: str) -> Principal:
        return cls("system", name)
