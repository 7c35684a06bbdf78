"""`envrestore rollback`: undo a restore, list the rollback points, drop one."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Annotated

import typer
from typer._click import Context
from typer.core import TyperGroup

from envrestore.cli.common import (
    JsonOpt,
    KeyOpt,
    WaitOpt,
    load_cli_settings,
    out,
    print_json,
    run_command,
    submit_command,
    with_ledger,
)
from envrestore.cli.confirming import confirm_or_exit
from envrestore.pipelines.requests import RollbackRequest

if TYPE_CHECKING:  # imported where used, for a quick start (cli/common.py)
    from envrestore.pipelines.jobs.submit import Submitted
    from envrestore.pipelines.producer import Producer
    from envrestore.pipelines.restore import points


class _RollbackGroup(TyperGroup):
    """`envrestore rollback JOB` (the spelling before the group) means `rollback run JOB`;
    anything else that is not a command is still "No such command"."""

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and _is_job_id(args[0]):
            args = ["run", *args]
        return super().parse_args(ctx, args)


def _is_job_id(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


rollback_app = typer.Typer(
    cls=_RollbackGroup,
    help="Rollback points: the content a restore replaced, kept to undo it "
    "(`rollback JOB` is `rollback run JOB`).",
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
    from envrestore.pipelines.jobs import views

    settings = load_cli_settings()

    async def submit(producer: Producer) -> Submitted:
        request = RollbackRequest(str(views.parse_job_id(job_id)))
        return await producer.submit(request, idempotency_key=idempotency_key)

    submit_command(settings, submit, wait=wait, as_json=as_json)


def human_bytes(size: int | None) -> str:
    """1536 → '1.5 KiB'; None (not measured) → '?'."""
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


@rollback_app.command("list")
def rollback_list(
    scope: Annotated[
        str | None, typer.Argument(help="Only points of SITE or SITE.ENV.", show_default=False)
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """List kept rollback points: size on disk (files and code trees), database size, expiry."""
    from envrestore.cli.tables import print_table, when
    from envrestore.pipelines.restore import points

    settings = load_cli_settings()

    async def body() -> list[points.RollbackPoint]:
        return await with_ledger(
            settings, lambda pool: points.list_points(pool, scope, settings=settings)
        )

    found = run_command(body)
    if as_json:
        print_json([p.public() for p in found])
        return
    if not found:
        out.print("no rollback points kept" + (f" for {scope}" if scope else ""), markup=False)
        return
    print_table(
        out,
        ["job", "target", "elements", "disk", "database", "created (UTC)", "expires (UTC)"],
        [
            (
                str(p.job_id),
                p.target,
                ",".join(p.elements),
                human_bytes(p.disk_bytes) if "files" in p.elements or "code" in p.elements else "",
                human_bytes(p.db_bytes) if "database" in p.elements else "",
                when(p.created_at),
                when(p.expires_at),
            )
            for p in found
        ],
        ids=("job",),
    )


@rollback_app.command("drop")
def rollback_drop(
    job_id: Annotated[
        str, typer.Argument(help="The restore (or rollback) job whose point to drop.")
    ],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    wait: Annotated[
        bool,
        typer.Option("--wait/--no-wait", help="Follow the drop job until it ends."),
    ] = True,
    as_json: JsonOpt = False,
) -> None:
    """Free a rollback point now (its restore can no longer be undone).

    Refused while another job holds the environment's lease or is queued for it
    (the error names it). The drop is an expire_rollback job run by the workers.
    """
    from envrestore.pipelines.jobs import views
    from envrestore.pipelines.restore import points

    settings = load_cli_settings()

    async def check() -> tuple[uuid.UUID, str]:
        uid = views.parse_job_id(job_id)
        environment = await with_ledger(settings, lambda pool: points.check_droppable(pool, uid))
        return uid, environment.target

    uid, target = run_command(check)
    confirm_or_exit(
        f"drop the rollback point of job {uid} ({target})? That restore can no longer be undone",
        yes=yes,
    )

    async def submit(producer: Producer) -> Submitted:
        await points.check_droppable(producer.pool, uid)
        return await points.submit_drop(producer, uid, key=None)

    submit_command(settings, submit, wait=wait, as_json=as_json)
