"""What a step function is given: its job, its attempt, and safe access to the world.

Its ledger calls ride out a ledger outage (`ledger_retry`): a step whose work
records an event while the ledger is away waits for it, so the work goes on
when the ledger returns instead of being retried from the start.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog

from envrestore.config.settings import Settings
from envrestore.pipelines.errors import LeaseLost
from envrestore.pipelines.jobs.ledger_retry import retry_ledger
from envrestore.pipelines.jobs.progress import Progress
from envrestore.pipelines.jobs.records import JobRecord
from envrestore.pipelines.jobs.runtime import Runtime
from envrestore.pipelines.ledger.queries import sql
from envrestore.pipelines.objectstore import ObjectStore
from envrestore.pipelines.registry import Environment, get_environment_by_id
from envrestore.pipelines.text import DEFAULT_LIMIT, clean_data, clean_text

T = TypeVar("T")


@dataclass
class StepContext:
    """One attempt of one step."""

    job: JobRecord
    step: str
    attempt: int
    max_attempts: int
    runtime: Runtime
    log: structlog.stdlib.BoundLogger
    progress: Progress = field(default_factory=Progress)

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    @property
    def store(self) -> ObjectStore:
        return self.runtime.store

    @property
    def job_id(self) -> uuid.UUID:
        return self.job.id

    async def _ledger(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        return await retry_ledger(
            call,
            what=what,
            give_up_after=self.settings.ledger_retry_seconds,
            max_delay=self.settings.reconnect_max_delay_seconds,
            stop=lambda: self.runtime.running.stopping,
        )

    async def environment(self) -> Environment:
        if self.job.environment_id is None:
            raise LeaseLost(f"job {self.job.id} has no environment")
        environment_id = self.job.environment_id
        return await self._ledger(
            "environment", lambda: get_environment_by_id(self.runtime.pool, environment_id)
        )

    async def outputs_of(self, step: str) -> dict[str, Any]:
        """Outputs recorded by an earlier (done) step of this job."""
        row = await self._ledger(
            "outputs", lambda: self.runtime.pool.fetchrow(sql("get_step"), self.job.id, step)
        )
        if row is None or row["status"] != "done":
            raise LookupError(f"step {step!r} of job {self.job.id} is not done")
        return dict(row["outputs"] or {})

    async def check_lease(self) -> None:
        """Fencing: raise LeaseLost unless this job still holds its environment's lease."""
        if self.job.environment_id is None:
            return
        row = await self._ledger(
            "check_lease",
            lambda: self.runtime.pool.fetchrow(
                sql("check_lease"), self.job.environment_id, self.job.id, self.job.lease_token
            ),
        )
        if row is None:
            raise LeaseLost(
                f"job {self.job.id} no longer holds the lease on {self.job.target}; "
                "it stops without touching the environment",
                job_id=str(self.job.id),
            )

    async def event(self, event: str, **data: Any) -> None:
        """Record an event in the job's history (and the log).

        Values may come from untrusted input: strings are cleaned (control
        characters escaped, lengths bounded) and anything else made JSON-able
        before they reach the ledger.
        """
        name = clean_text(event, 200, newlines=False)
        payload: dict[str, Any] = clean_data(data, DEFAULT_LIMIT)
        await self._ledger(
            "event",
            lambda: self.runtime.pool.execute(
                sql("insert_event"), self.job.id, self.step, name, payload
            ),
        )
        self.log.info(name, **payload)
