"""`envrestore rollback`: undo a restore, list the rollback points, drop one."""

from __future__ import annotations

from typing import Annotated

import typer

from envrestore.cli.common import (
    JsonOpt,
    KeyOpt,
    WaitOpt,
    load_cli_settings,
    submit_command,
)
from envrestore.pipelines.jobs import views
from envrestore.pipelines.jobs.submit import Submitted
from envrestore.pipelines.producer import Producer
from envrestore.pipelines.requests import RollbackRequest

rollback_app = typer.Typer(
    help="Rollback points: the content a restore replaced, kept to undo it.",
    no_args_is_help=True,
)


@rollback_app.command("run")
def rollback_run(
    job_id: Annotated[str, typer.Argument(help="The restore (or rollback) job to undo.")],
    idempotency_key: KeyOpt = None,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Swap back the content a restore replaced (kept ENVRESTORE_ROLLBACK_HOURS, default 24)."""
    settings = load_cli_settings()

    async def submit(producer: Producer) -> Submitted:
        request = RollbackRequest(str(views.parse_job_id(job_id)))
        return await producer.submit(request, idempotency_key=idempotency_key)

    submit_command(settings, submit, wait=wait, as_json=as_json)
