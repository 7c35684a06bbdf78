"""The probe: a job of one step that does nothing but travel the queue and the ledger.

An operator submits one to check that workers are consuming (it ends
`succeeded` within a moment, naming the worker that ran it), and the queue
benchmark (tests/bench/bench_queue.py) measures enqueue→done with it: the
cost of the job machinery alone, no environment, no lease, no object store.
Running it twice is harmless: it changes nothing.
"""

from __future__ import annotations

from typing import Any

from envrestore.pipelines.jobs.context import StepContext
from envrestore.pipelines.jobs.kinds import JobKind
from envrestore.pipelines.jobs.model import Plan, StepSpec
from envrestore.pipelines.jobs.prepared import Prepared

#: The kind's name, as stored in the ledger and shown by `job list`.
PROBE_KIND = "probe"


async def probe(ctx: StepContext) -> dict[str, Any]:
    """Nothing to do: the answer is who ran it and on which attempt."""
    return {"worker": ctx.runtime.worker_id, "attempt": ctx.attempt}


PROBE = JobKind(name=PROBE_KIND, plan=Plan((StepSpec("probe"),)), steps={"probe": probe})


def prepare_probe() -> Prepared:
    """A probe job to record: no environment, no parameters (for a producer's `prepare`)."""
    return Prepared(kind=PROBE, environment=None, params={})
