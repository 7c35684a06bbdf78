"""Values of the job system: statuses, step specs, plans.

A job is a plan: a small graph of named steps stored with the job. Steps with
`on_failure=True` run only when the job failed or was cancelled (cleanup), after
every other step has stopped.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class JobStatus(enum.StrEnum):
    """Where a job is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def active(self) -> bool:
        return self in (JobStatus.QUEUED, JobStatus.RUNNING)


class StepStatus(enum.StrEnum):
    """Where a step is in its life."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"

    @property
    def settled(self) -> bool:
        return self in (StepStatus.DONE, StepStatus.FAILED, StepStatus.SKIPPED)


@dataclass(frozen=True)
class StepSpec:
    """One node of a plan."""

    name: str
    depends_on: tuple[str, ...] = ()
    on_failure: bool = False


@dataclass(frozen=True)
class Plan:
    """The steps of a job, in a valid order (every dependency named earlier)."""

    steps: tuple[StepSpec, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for step in self.steps:
            if step.name in seen:
                raise ValueError(f"step {step.name!r} appears twice in the plan")
            missing = [dep for dep in step.depends_on if dep not in seen]
            if missing:
                raise ValueError(
                    f"step {step.name!r} depends on {missing}, not earlier in the plan"
                )
            seen.add(step.name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(step.name for step in self.steps)


@dataclass(frozen=True)
class StepState:
    """A step as the ledger holds it, reduced to what scheduling needs."""

    name: str
    status: StepStatus
    depends_on: tuple[str, ...]
    on_failure: bool


def ready_steps(job_status: JobStatus, steps: list[StepState]) -> list[str]:
    """Pending steps that may start now, given the job's status and its steps."""
    status = {step.name: step.status for step in steps}
    if job_status.active:
        candidates = [s for s in steps if not s.on_failure]
    else:
        # Cleanup waits until no regular step is still running.
        if any(not s.on_failure and s.status == StepStatus.RUNNING for s in steps):
            return []
        candidates = [s for s in steps if s.on_failure]
    return [
        s.name
        for s in candidates
        if s.status == StepStatus.PENDING
        and all(status.get(dep) == StepStatus.DONE for dep in s.depends_on)
    ]
