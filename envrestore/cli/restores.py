"""`envrestore restore`: the destructive command (its undo is in cli/rollbacks.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from envrestore.cli.common import (
    CodeStrategyOpt,
    JsonOpt,
    KeyOpt,
    NoSearchReplaceOpt,
    SearchReplaceOpt,
    WaitOpt,
    YesOpt,
    confirm_risk,
    err,
    load_cli_settings,
    stdin_is_terminal,
    submit_command,
)
from envrestore.pipelines.requests import (
    RestoreRequest,
    parse_elements,
    parse_pairs,
)

if TYPE_CHECKING:  # imported where used, for a quick start (cli/common.py)
    from envrestore.pipelines.jobs.submit import Submitted
    from envrestore.pipelines.producer import Producer


def restore(
    target: Annotated[str, typer.Argument(help="SITE.ENV to restore.")],
    source: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="SITE.ENV whose backup to restore (any site's); default: the target's own.",
        ),
    ] = None,
    backup: Annotated[
        str, typer.Option("--backup", help="A backup id of the source environment, or 'latest'.")
    ] = "latest",
    element: Annotated[
        str,
        typer.Option("--element", help="all, database, files or code (or a comma list)."),
    ] = "all",
    in_place: Annotated[
        bool,
        typer.Option(
            "--in-place",
            help="Wipe the live targets first, then import into them (no room for a second "
            "copy). A failure then leaves the environment empty; there is no rollback point. "
            "Asked to confirm on a terminal, unless --yes.",
        ),
    ] = False,
    force_live: Annotated[
        bool,
        typer.Option(
            "--force-live",
            help="Allow restoring a protected environment (asked to confirm on a terminal, "
            "unless --yes).",
        ),
    ] = False,
    allow_incomplete_dump: Annotated[
        bool,
        typer.Option(
            "--allow-incomplete-dump",
            help="Import a dump that lacks its dump tool's closing line (otherwise refused "
            "as truncated); the job's outputs say so.",
        ),
    ] = False,
    code_strategy: CodeStrategyOpt = None,
    search_replace: SearchReplaceOpt = None,
    no_search_replace: NoSearchReplaceOpt = False,
    idempotency_key: KeyOpt = None,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
    yes: YesOpt = False,
) -> None:
    """Restore an environment from a backup (its own, or --from another environment's).

    Database, files and code are replaced. Everything is imported beside the live
    content and swapped in at the end; a job that fails before that leaves the
    environment as it was.
    """
    settings = load_cli_settings()
    if in_place:
        warning = (
            f"--in-place wipes {target}'s live database and directories BEFORE importing; "
            "if the restore fails the environment stays empty and there is no rollback point"
        )
        if not as_json and (yes or not stdin_is_terminal()):
            err.print(f"warning: {warning}", markup=False)
        confirm_risk(warning, yes=yes)
    if force_live:
        confirm_risk(f"--force-live replaces the content of {target} even if protected", yes=yes)

    async def submit(producer: Producer) -> Submitted:
        request = RestoreRequest(
            target,
            backup=backup,
            source=source,
            elements=parse_elements(element),
            in_place=in_place,
            force_live=force_live,
            allow_incomplete_dump=allow_incomplete_dump,
            code_strategy=code_strategy,
            replace_pairs=parse_pairs(search_replace or []),
            search_replace=not no_search_replace,
        )
        return await producer.submit(request, idempotency_key=idempotency_key)

    submit_command(settings, submit, wait=wait, as_json=as_json)
