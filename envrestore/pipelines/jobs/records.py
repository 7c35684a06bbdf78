"""Typed views of ledger rows for jobs and steps."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from envrestore.pipelines.jobs.model import JobStatus, StepState, StepStatus
from envrestore.pipelines.ledger.types import Row


@dataclass(frozen=True)
class JobRecord:
    """A job row."""

    id: uuid.UUID
    kind: str
    status: JobStatus
    environment_id: int | None
    site: str | None
    env: str | None
    params: dict[str, Any]
    outputs: dict[str, Any]
    error: str | None
    error_step: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    lease_token: int | None
    #: Who asked for the job: `operator:alice`, `token:ci`, `scheduler`, `system:...`.
    requested_by: str | None = None

    @classmethod
    def from_row(cls, row: Row) -> JobRecord:
        return cls(
            id=row["id"],
            kind=row["kind"],
            status=JobStatus(row["status"]),
            environment_id=row["environment_id"],
            site=row["site"],
            env=row["env"],
            params=dict(row["params"] or {}),
            outputs=dict(row["outputs"] or {}),
            error=row["error"],
            error_step=row["error_step"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            lease_token=row["lease_token"],
            requested_by=row.get("requested_by"),
        )

    @property
    def target(self) -> str | None:
        return f"{self.site}.{self.env}" if self.site and self.env else None


@dataclass(frozen=True)
class StepRecord:
    """A job_steps row."""

    name: str
    position: int
    depends_on: tuple[str, ...]
    on_failure: bool
    status: StepStatus
    attempts: int
    max_attempts: int
    heartbeat_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    bytes_done: int
    bytes_total: int | None
    outputs: dict[str, Any]
    error: str | None
    enqueued_at: datetime | None

    @classmethod
    def from_row(cls, row: Row) -> StepRecord:
        return cls(
            name=row["name"],
            position=row["position"],
            depends_on=tuple(row["depends_on"]),
            on_failure=row["on_failure"],
            status=StepStatus(row["status"]),
            attempts=row["attempts"],
            max_attempts=row["max_attempts"],
            heartbeat_at=row["heartbeat_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            bytes_done=row["bytes_done"],
            bytes_total=row["bytes_total"],
            outputs=dict(row["outputs"] or {}),
            error=row["error"],
            enqueued_at=row["enqueued_at"],
        )

    def state(self) -> StepState:
        return StepState(self.name, self.status, self.depends_on, self.on_failure)
