"""`envrestore job`: show, follow, cancel and list jobs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from envrestore.cli.common import (
    JsonOpt,
    WaitOpt,
    load_cli_settings,
    out,
    print_json,
    report_final,
    require_known,
    run_command,
    shown,
    with_client,
    with_ledger,
)
from envrestore.cli.exit_codes import ExitCode

if TYPE_CHECKING:  # the rest is imported where used: a quick start (cli/common.py)
    from rich.text import Text

    from envrestore.client import Envrestore

job_app = typer.Typer(help="Jobs: show, list, follow.", no_args_is_help=True)


@job_app.command("show")
def job_show(
    job_id: Annotated[str, typer.Argument(help="The job id.")],
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Show a job: status, error, steps with attempts and progress."""
    settings = load_cli_settings()

    async def body() -> int:
        from envrestore.cli.follow import follow_job
        from envrestore.pipelines.jobs import views

        uid = views.parse_job_id(job_id)
        if wait:
            view = await with_ledger(settings, lambda pool: follow_job(pool, uid, quiet=as_json))
            return report_final(view, as_json=as_json)
        view = (
            await with_client(settings, lambda client: client.job(uid), object_store=False)
        ).view
        if as_json:
            print_json(view)
        else:
            _print_job(view)
        return ExitCode.OK

    raise typer.Exit(run_command(body))


def _cell(value: Any) -> Text:
    """A table cell: cleaned, and never read as rich markup."""
    from rich.text import Text

    return Text(shown(value))


def _print_job(view: dict[str, Any]) -> None:
    from rich.text import Text

    from envrestore.cli.follow import amount_text
    from envrestore.cli.tables import print_table

    out.print(
        Text.assemble(
            f"job {shown(view['id'])}  {shown(view['kind'])}  {shown(view['target'])}  ",
            (shown(view["status"]), "bold"),
        )
    )
    if view["error"]:
        out.print(f"error: {shown(view['error'])}", markup=False)
    rows = [
        (
            _cell(s["name"]),
            _cell(s["status"]),
            str(s["attempts"]),
            amount_text(s),
            _cell(s["error"]),
        )
        for s in view["steps"]
    ]
    print_table(out, ["step", "status", "attempts", "progress", "error"], rows, ids=("step",))


@job_app.command("cancel")
def job_cancel(job_id: Annotated[str, typer.Argument(help="The job id.")]) -> None:
    """Cancel a job; a restore can be cancelled until its switch begins (then: rollback)."""
    settings = load_cli_settings()

    async def body() -> None:
        from envrestore.pipelines.jobs import views

        uid = views.parse_job_id(job_id)
        await with_client(settings, lambda client: client.cancel(uid), object_store=False)

    run_command(body)
    out.print(f"job {job_id} cancelled; its cleanup runs on the workers")


@job_app.command("list")
def job_list(
    target: Annotated[str | None, typer.Argument(help="Only jobs of SITE or SITE.ENV.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """List recent jobs."""
    settings = load_cli_settings()

    async def body() -> list[dict[str, Any]]:
        site, env = None, None
        if target:
            site, _, env_part = target.partition(".")
            env = env_part or None

        async def listing(client: Envrestore) -> list[dict[str, Any]]:
            if target:
                await require_known(client.pool, target)
            return await client.jobs(site=site, env=env, limit=limit)

        return await with_client(settings, listing, object_store=False)

    jobs = run_command(body)
    if as_json:
        print_json(jobs)
        return
    from envrestore.cli.tables import print_table

    print_table(
        out,
        ["id", "kind", "target", "status", "created_at", "error"],
        [
            (
                j["id"],
                _cell(j["kind"]),
                _cell(j["target"]),
                _cell(j["status"]),
                j["created_at"],
                _cell(j["error"]),
            )
            for j in jobs
        ],
    )
