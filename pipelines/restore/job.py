"""The content-replacing job kinds (restore, import), rollback and rollback expiry.

Restore and import are one pipeline; they differ in their request, whose
sources say where each part comes from (`pipelines.sources`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipelines.jobs.kinds import JobKind, StepFn
from pipelines.jobs.model import Plan, StepSpec
from pipelines.requests import ELEMENTS, CloneRequest, ImportRequest, RestoreRequest
from pipelines.restore import code, imports, prepare, rollback, switching

IMPORT_STEP = {"database": "import_db", "files": "import_files", "code": "apply_code"}


def restore_plan(elements: tuple[str, ...]) -> Plan:
    """resolve → fetch → verify → wipe → imports (parallel) → switch → finalize;
    abandon on failure."""
    imports_ = tuple(IMPORT_STEP[e] for e in ("database", "files", "code") if e in elements)
    return Plan(
        (
            StepSpec("resolve"),
            StepSpec("fetch", depends_on=("resolve",)),
            StepSpec("verify", depends_on=("fetch",)),
            StepSpec("wipe", depends_on=("verify",)),
            *(StepSpec(step, depends_on=("wipe",)) for step in imports_),
            StepSpec("switch", depends_on=imports_),
            StepSpec("finalize", depends_on=("switch",)),
            StepSpec("abandon_restore", on_failure=True),
        )
    )


CONTENT_STEPS: dict[str, StepFn] = {
    "resolve": prepare.resolve,
    "fetch": prepare.fetch,
    "verify": prepare.verify,
    "wipe": prepare.wipe,
    "import_db": imports.import_db,
    "import_files": imports.import_files,
    "apply_code": code.apply_code,
    "switch": switching.switch,
    "finalize": switching.finalize,
    "abandon_restore": switching.abandon_restore,
}


def _restore_plan(params: Mapping[str, Any]) -> Plan:
    return restore_plan(RestoreRequest.from_params(params).elements)


def _import_plan(params: Mapping[str, Any]) -> Plan:
    return restore_plan(ImportRequest.from_params(params).elements)


def _clone_plan(params: Mapping[str, Any]) -> Plan:
    return restore_plan(CloneRequest.from_params(params).elements)


RESTORE = JobKind(
    name=RestoreRequest.kind,
    plan=restore_plan(ELEMENTS),
    steps=CONTENT_STEPS,
    irreversible_from="switch",
    planner=_restore_plan,
)

IMPORT = JobKind(
    name=ImportRequest.kind,
    plan=restore_plan(ELEMENTS),
    steps=CONTENT_STEPS,
    irreversible_from="switch",
    planner=_import_plan,
)

CLONE = JobKind(
    name=CloneRequest.kind,
    plan=restore_plan(ELEMENTS),
    steps=CONTENT_STEPS,
    irreversible_from="switch",
    planner=_clone_plan,
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
