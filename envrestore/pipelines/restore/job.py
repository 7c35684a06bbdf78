"""The content-replacing job kinds (restore, import), rollback and rollback expiry.

Restore and import are one pipeline; they differ in their request, whose
sources say where each part comes from (`pipelines.sources`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from envrestore.pipelines.jobs.kinds import JobKind, StepFn
from envrestore.pipelines.jobs.model import Plan, StepSpec
from envrestore.pipelines.requests import (
    ELEMENTS,
    CloneRequest,
    ContentRequest,
    ImportRequest,
    RestoreRequest,
)
from envrestore.pipelines.restore import code, imports, prepare, rollback, switching, urls

IMPORT_STEP = {"database": "import_db", "files": "import_files", "code": "apply_code"}


def restore_plan(elements: tuple[str, ...], *, rewrite: bool = False) -> Plan:
    """resolve → fetch → verify → wipe → imports (parallel) [→ rewrite_urls after
    import_db] → switch → finalize; abandon on failure."""
    imports_ = tuple(IMPORT_STEP[e] for e in ("database", "files", "code") if e in elements)
    rewrite = rewrite and "database" in elements
    before_switch = (*imports_, "rewrite_urls") if rewrite else imports_
    return Plan(
        (
            StepSpec("resolve"),
            StepSpec("fetch", depends_on=("resolve",)),
            StepSpec("verify", depends_on=("fetch",)),
            StepSpec("wipe", depends_on=("verify",)),
            *(StepSpec(step, depends_on=("wipe",)) for step in imports_),
            *((StepSpec("rewrite_urls", depends_on=("import_db",)),) if rewrite else ()),
            StepSpec("switch", depends_on=before_switch),
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
    "rewrite_urls": urls.rewrite_urls,
    "switch": switching.switch,
    "finalize": switching.finalize,
    "abandon_restore": switching.abandon_restore,
}


def _content_kind(request_type: type[ContentRequest]) -> JobKind:
    """Restore, import and clone: the same steps, planned from their own request."""

    def planner(params: Mapping[str, Any]) -> Plan:
        request = request_type.from_params(params)
        return restore_plan(request.elements, rewrite=urls.moves_database(request))

    return JobKind(
        name=request_type.kind,
        plan=restore_plan(ELEMENTS, rewrite=True),
        steps=CONTENT_STEPS,
        irreversible_from="switch",
        planner=planner,
    )


RESTORE = _content_kind(RestoreRequest)
IMPORT = _content_kind(ImportRequest)
CLONE = _content_kind(CloneRequest)

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
