"""Every job kind this version of envrestore runs, by name."""

from __future__ import annotations

from envrestore.pipelines.backup.delete import DELETE_BACKUP
from envrestore.pipelines.backup.job import BACKUP
from envrestore.pipelines.jobs.kinds import JobKind, step_index
from envrestore.pipelines.probe import PROBE
from envrestore.pipelines.restore.job import CLONE, EXPIRE_ROLLBACK, IMPORT, RESTORE, ROLLBACK


def job_kinds() -> dict[str, JobKind]:
    every = (BACKUP, RESTORE, IMPORT, CLONE, ROLLBACK, EXPIRE_ROLLBACK, DELETE_BACKUP, PROBE)
    kinds = {kind.name: kind for kind in every}
    step_index(kinds)  # refuses a step name that means two things
    return kinds


def step_names() -> list[str]:
    """All step names: one Dramatiq actor each."""
    return sorted(step_index(job_kinds()))
