"""The backup job: dump_db ∥ archive_files ∥ archive_code → record_backup; discard on failure.

A backup of some elements only (`--element`) plans only their steps; the
delete_backup kind lives in `delete.py`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from envrestore.pipelines.backup import steps
from envrestore.pipelines.jobs.kinds import JobKind
from envrestore.pipelines.jobs.model import Plan, StepSpec
from envrestore.pipelines.requests import ELEMENTS, BackupRequest

PART_STEP = {"database": "dump_db", "files": "archive_files", "code": "archive_code"}


def backup_plan(elements: tuple[str, ...] = ELEMENTS) -> Plan:
    """One step per chosen element, in parallel, then the record."""
    chosen = tuple(PART_STEP[e] for e in ELEMENTS if e in elements)
    return Plan(
        (
            *(StepSpec(step) for step in chosen),
            StepSpec("record_backup", depends_on=chosen),
            StepSpec("discard_backup", on_failure=True),
        )
    )


def _planner(params: Mapping[str, Any]) -> Plan:
    return backup_plan(BackupRequest.from_params(params).elements)


BACKUP = JobKind(
    name="backup",
    plan=backup_plan(),
    steps={
        "dump_db": steps.dump_db,
        "archive_files": steps.archive_files,
        "archive_code": steps.archive_code,
        "record_backup": steps.record_backup,
        "discard_backup": steps.discard_backup,
    },
    planner=_planner,
)
