"""One thin actor per step: parse the message, run the step protocol, nothing else.

Actors are declared by `declare_actors` after the broker exists (CONVENTIONS:
build the broker, add middleware, then the actors). They take no `max_retries`
or `time_limit`: the broker has neither middleware (see workers/broker.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import dramatiq

from envrestore.pipelines.catalog import step_names
from envrestore.pipelines.jobs.runner import run_step
from envrestore.workers.process_runtime import get_runtime


def _step_actor(step: str) -> Callable[[str], Awaitable[None]]:
    async def run(job_id: str) -> None:
        await run_step(await get_runtime(), job_id, step)

    run.__name__ = step
    run.__qualname__ = step
    return run


StepActor = dramatiq.Actor[[str], None]


def declare_actors(broker: dramatiq.Broker, queue_name: str) -> dict[str, StepActor]:
    """Declare an actor named after each step of every job kind."""
    return {
        step: dramatiq.actor(actor_name=step, queue_name=queue_name, broker=broker)(
            _step_actor(step)
        )
        for step in step_names()
    }
