"""Asking before an operator's command destroys or forgets something."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from envrestore.cli.common import err, run_command
from envrestore.cli.exit_codes import ExitCode
from envrestore.pipelines.errors import BadInput

#: `--yes` of a command that asks before it destroys or forgets (see `confirm_or_exit`);
#: not common.YesOpt, which skips the question on risky options and never refuses.
ConfirmOpt = Annotated[
    bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (needed off a terminal).")
]


def confirm_or_exit(question: str, *, yes: bool, declined: str = "nothing done") -> None:
    """Go on when `--yes` was given or the operator answers yes on a terminal.

    Off a terminal (a script, CI) nobody can answer: the command is refused
    (exit 2) unless it says `--yes`, rather than going ahead unasked.
    """
    if yes:
        return
    if not sys.stdin.isatty():

        async def refuse() -> None:
            raise BadInput(f"{question.rstrip('?')}: not confirmed; add --yes to do it unasked")

        run_command(refuse)
    if not typer.confirm(question, default=False):
        err.print(declined, markup=False)
        raise typer.Exit(ExitCode.ERROR)
