"""The `envrestore` command: subcommands grouped by noun (db, site, env, backup, job, worker).

Building the app imports only typer and the command modules, which import what a
command needs when it runs (cli/common.py): `envrestore --help` and `--version`
never load asyncpg, rich, pydantic or the S3 client (tests/unit/test_cli_imports.py).
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer

from envrestore.cli.api_cmd import api
from envrestore.cli.backups import backup_app
from envrestore.cli.common import (
    from_setting,
    load_cli_settings,
    out,
    run_command,
)
from envrestore.cli.errors import EnvrestoreGroup
from envrestore.cli.health import health
from envrestore.cli.imports import backup_link, clone_content, import_app
from envrestore.cli.jobs import job_app
from envrestore.cli.registry_cmds import env_app, site_app
from envrestore.cli.restores import restore
from envrestore.cli.rollbacks import rollback_app
from envrestore.cli.schedule import schedule_app, scheduler
from envrestore.cli.tokens import token_app

app = typer.Typer(
    name="envrestore",
    help="Back up and restore website environments (database, files, git code) as queued jobs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # App-wide, inherited by every subcommand (cli/errors.py, README "The CLI"):
    # -h as --help, defaults shown, help texts printed as written (rich markup
    # would eat "[env var: ...]"), and errors as one line or JSON.
    cls=EnvrestoreGroup,
    context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
    rich_markup_mode=None,
)
db_app = typer.Typer(help="The ledger database.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(site_app, name="site")
app.add_typer(env_app, name="env")
app.add_typer(backup_app, name="backup")
app.add_typer(job_app, name="job")
app.add_typer(import_app, name="import")
app.add_typer(schedule_app, name="schedule")
app.command("scheduler")(scheduler)
backup_app.command("link")(backup_link)
env_app.command("clone-content")(clone_content)
app.command("restore")(restore)
app.add_typer(rollback_app, name="rollback")
app.command("health")(health)
app.add_typer(token_app, name="token")
app.command("api")(api)


def _print_version(value: bool) -> None:
    if value:
        from envrestore import __version__

        typer.echo(f"envrestore {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    log_level: Annotated[
        str,
        typer.Option(
            help="Log level: DEBUG, INFO, WARNING, ERROR.",
            envvar="ENVRESTORE_LOG_LEVEL",
            show_envvar=True,
        ),
    ] = "WARNING",
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", callback=_print_version, is_eager=True
        ),
    ] = False,
) -> None:
    from envrestore.config.logging import configure_logging

    configure_logging(level=log_level)


# ------------------------------------------------------------------------ db


@db_app.command("migrate")
def db_migrate() -> None:
    """Create or upgrade the ledger's tables (safe to run again).

    The ledger is ENVRESTORE_DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/envrestore).
    """
    from envrestore.pipelines.ledger.connection import connect
    from envrestore.pipelines.ledger.migrate import migrate

    settings = load_cli_settings()

    async def body() -> list[str]:
        conn = await connect(settings.database_url)
        try:
            return [f"{m.version:03d}_{m.name}" for m in await migrate(conn)]
        finally:
            await conn.close()

    applied = run_command(body)
    out.print(f"applied: {', '.join(applied)}" if applied else "ledger is up to date")


# -------------------------------------------------------------------- worker


@app.command("worker")
def worker(
    processes: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    threads: Annotated[int, typer.Option(help="Worker threads per process.")] = 4,
    queues: Annotated[
        list[str] | None,
        typer.Option(help=from_setting("Queues to consume.", "queue_name")),
    ] = None,
) -> None:
    """Start a worker: Dramatiq's CLI with envrestore's broker and actors."""
    from envrestore.config.logging import LOG_FORMAT_VARIABLE
    from envrestore.observability.worker_exposition import prepare_worker_metrics
    from envrestore.workers.shutdown import THREADS_SHARE

    settings = load_cli_settings()
    dramatiq = shutil.which("dramatiq", path=str(Path(sys.executable).parent)) or "dramatiq"
    argv = [
        dramatiq,
        "envrestore.workers.app:setup",
        "--processes",
        str(processes),
        "--threads",
        str(threads),
        # Dramatiq waits this long for its threads (10 minutes by default); the
        # worker process ends itself when the whole grace is over (workers/shutdown.py).
        "--worker-shutdown-timeout",
        str(int(settings.shutdown_grace_seconds * THREADS_SHARE * 1000)),
        "--queues",
        *(queues or [settings.queue_name]),
    ]
    # Dramatiq's worker processes log into a pipe, not this terminal: tell them
    # which format the operator's stderr wants (README "Configuration").
    env = dict(os.environ)
    env.setdefault(LOG_FORMAT_VARIABLE, "console" if sys.stderr.isatty() else "json")
    argv[2:2] = prepare_worker_metrics(settings, env)  # observability/worker_exposition.py
    os.execvpe(argv[0], argv, env)  # noqa: S606 - replaces this process with the worker


def app_for(argv: list[str]) -> typer.Typer:
    """The app with only the command `argv` names, else the whole app.

    typer builds every command's options at each call (about a fifth of a quick
    command's start with ~50 commands); the one named is all a run needs. Help,
    --version, no command or an unknown one: the whole app, as `--help` lists it.
    """
    name = _command_named(argv)
    groups = [g for g in app.registered_groups if g.name == name]
    commands = [c for c in app.registered_commands if c.name == name]
    if name is None or not (groups or commands):
        return app
    trimmed = copy.copy(app)  # same settings and root callback (--log-level, --version)
    trimmed.registered_groups = groups
    trimmed.registered_commands = commands
    return trimmed


def _command_named(argv: list[str]) -> str | None:
    """The first word of `argv` that is not a root option or its value."""
    args = iter(argv)
    for arg in args:
        if arg == "--log-level":
            next(args, None)
        elif arg.startswith("--log-level="):
            continue
        elif arg.startswith("-"):
            return None  # --help, --version, or a mistake: the whole app answers
        else:
            return arg
    return None


def main() -> None:
    app_for(sys.argv[1:])()


if __name__ == "__main__":
    main()
