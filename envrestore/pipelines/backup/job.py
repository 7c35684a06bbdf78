"""The backup job: dump_db ∥ archive_files ∥ archive_code → record_backup; discard on failure."""

from __future__ import annotations

from envrestore.pipelines.backup import steps
from envrestore.pipelines.jobs.kinds import JobKind
from envrestore.pipelines.jobs.model import Plan, StepSpec

BACKUP = JobKind(
    name="backup",
    plan=Plan(
        (
            StepSpec("dump_db"),
            StepSpec("archive_files"),
            StepSpec("archive_code"),
            StepSpec("record_backup", depends_on=("dump_db", "archive_files", "archive_code")),
            StepSpec("discard_backup", on_failure=True),
        )
    ),
    steps={
        "dump_db": steps.dump_db,
        "archive_files": steps.archive_files,
        "archive_code": steps.archive_code,
        "record_backup": steps.record_backup,
        "discard_backup": steps.discard_backup,
    },
)
