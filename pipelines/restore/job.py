"""The restore, rollback and rollback-expiry job kinds."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipelines.jobs.kinds import JobKind
from pipelines.jobs.model import Plan, StepSpec
from pipelines.restore import imports, prepare, rollback, switching

IMPORT_STEP = {"database": "import_db", "files": "import_files", "code": "apply_code"}


def restore_plan(elements: tuple[str, ...]) -> Plan:
    """resolve → verify → wipe → imports (parallel) → switch → finalize; abandon on failure."""
    imports_ = tuple(IMPORT_STEP[e] for e in ("database", "files", "code") if e in elements)
    return Plan(
        (
            StepSpec("resolve"),
            StepSpec("verify", depends_on=("resolve",)),
            StepSpec("wipe", depends_on=("verify",)),
            *(StepSpec(step, depends_on=("wipe",)) for step in imports_),
            StepSpec("switch", depends_on=imports_),
            StepSpec("finalize", depends_on=("switch",)),
            StepSpec("abandon_restore", on_failure=True),
        )
    )


def _plan_for(params: Mapping[str, Any]) -> Plan:
    return restore_plan(tuple(params["elements"]))


RESTORE = JobKind(
    name="restore",
    plan=restore_plan(("database", "files", "code")),
    steps={
        "resolve": prepare.resolve,
        "verify": prepare.verify,
        "wipe": prepare.wipe,
        "import_db": imports.import_db,
        "import_files": imports.import_files,
        "apply_code": imports.apply_code,
        "switch": switching.switch,
        "finalize": switching.finalize,
        "abandon_restore": switching.abandon_restore,
    },
    irreversible_from="switch",
    planner=_plan_for,
)

ROLLBACK = JobKind(
    name="rollback",
    plan=Plan((StepSpec("swap_back"),)),
    steps={"swap_back": rollback.swap_back},
    irreversible_from="swap_back",
)

EXPIRE_ROLLBACK = JobKind(
    name="expire_rollback",
    plan=Plan((StepSpec("drop_rollback_point"),)),
    steps={"drop_rollback_point": rollback.drop_rollback_point},
)
