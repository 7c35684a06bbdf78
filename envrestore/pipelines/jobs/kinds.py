"""Job kinds: a plan plus the function behind each step.

Each step name becomes one Dramatiq actor; a message `(job_id, step)` finds
its code through the job's kind. Kinds may share a step, with one function.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from envrestore.pipelines.jobs.model import Plan

if TYPE_CHECKING:
    from envrestore.pipelines.jobs.context import StepContext

StepFn = Callable[["StepContext"], Coroutine[Any, Any, dict[str, Any]]]


@dataclass(frozen=True)
class JobKind:
    """What a kind of job does."""

    name: str
    plan: Plan
    steps: Mapping[str, StepFn]
    #: Once this step has started, cancelling is refused (the environment is changing).
    irreversible_from: str | None = None
    #: A job's own plan from its parameters (a subset of `plan`), e.g. one element only.
    planner: Callable[[Mapping[str, Any]], Plan] | None = None

    def __post_init__(self) -> None:
        missing = set(self.plan.names) - set(self.steps)
        if missing:
            raise ValueError(f"job kind {self.name!r} has no function for steps {sorted(missing)}")

    def plan_for(self, params: Mapping[str, Any]) -> Plan:
        """The steps this job will run; always drawn from the kind's full plan."""
        plan = self.plan if self.planner is None else self.planner(params)
        unknown = set(plan.names) - set(self.plan.names)
        if unknown:
            raise ValueError(f"plan of {self.name!r} names unknown steps {sorted(unknown)}")
        return plan


def step_index(kinds: Mapping[str, JobKind]) -> dict[str, StepFn]:
    """step name → its function, across kinds.

    A step runs as the Dramatiq actor of its name, and the runner finds its
    function through the job's own kind; two kinds may share a step (restore and
    import share the content pipeline), but only with the same function.
    """
    index: dict[str, StepFn] = {}
    owner: dict[str, str] = {}
    for kind in kinds.values():
        for name in kind.plan.names:
            fn = kind.steps[name]
            if name in index and index[name] is not fn:
                raise ValueError(
                    f"step {name!r} means different things in {owner[name]!r} and {kind.name!r}"
                )
            index[name] = fn
            owner.setdefault(name, kind.name)
    return index
