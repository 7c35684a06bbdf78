"""Where one restore job builds and keeps things: shadow names, staging and rollback paths.

All derived from the environment and the job id, so any attempt of any step,
on any worker, finds what an earlier attempt made.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from envrestore.pipelines import trees
from envrestore.pipelines.engines.shadow import ShadowNames, shadow_names
from envrestore.pipelines.errors import IntegrityError, UnsafeInput
from envrestore.pipelines.registry import Environment

ELEMENTS = ("database", "files", "code")


def job_tag(job_id: uuid.UUID) -> str:
    """A short, name-safe tag of a job for databases and directories."""
    return job_id.hex[:12]


@dataclass(frozen=True)
class RestoreTargets:
    """The names of one restore of one environment."""

    environment: Environment
    tag: str

    @property
    def db_names(self) -> ShadowNames:
        return shadow_names(str(self.environment.dsn.database), self.tag)

    def staging(self, element: str) -> Path:
        return trees.staging_path(self.live(element), self.tag, check=False)

    def rollback(self, element: str) -> Path:
        return trees.rollback_path(self.live(element), self.tag)

    def aside(self, element: str, tag: str) -> Path:
        return trees.aside_path(self.live(element), tag)

    def live(self, element: str) -> Path:
        if element == "files":
            return self.environment.files_dir
        if element == "code":
            return self.environment.code_dir
        raise ValueError(f"{element!r} is not a directory element")


@contextlib.contextmanager
def naming_part(part: str) -> Iterator[None]:
    """Prefix errors about untrusted content with the part they were found in."""
    try:
        yield
    except (IntegrityError, UnsafeInput) as exc:
        if exc.message.startswith("verify failed"):
            raise
        raise type(exc)(
            f"verify failed for the {part} part: {exc.message}", part=part, **exc.data
        ) from exc
