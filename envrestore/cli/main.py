"""The `envrestore` command: subcommands grouped by noun (db, site, env, backup, job, worker)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Annotated, Any

import asyncpg
import typer
from rich.table import Table
from rich.text import Text

from envrestore.cli.common import (
    CodeStrategyOpt,
    JsonOpt,
    KeyOpt,
    NoSearchReplaceOpt,
    SearchReplaceOpt,
    WaitOpt,
    err,
    load_cli_settings,
    out,
    print_json,
    report_final,
    run_command,
    shown,
    submit_command,
    with_ledger,
)
from envrestore.cli.exit_codes import ExitCode
from envrestore.cli.follow import follow_job
from envrestore.cli.imports import backup_link, clone_content, import_app
from envrestore.config.logging import configure_logging
from envrestore.pipelines import registry
from envrestore.pipelines.backup import service as backups
from envrestore.pipelines.catalog import job_kinds
from envrestore.pipelines.errors import BadInput
from envrestore.pipelines.jobs import views
from envrestore.pipelines.jobs.cancel import cancel_job
from envrestore.pipelines.jobs.submit import Submitted
from envrestore.pipelines.ledger.connection import connect
from envrestore.pipelines.ledger.migrate import migrate
from envrestore.pipelines.producer import Producer
from envrestore.pipelines.requests import (
    BackupRequest,
    RestoreRequest,
    RollbackRequest,
    parse_elements,
    parse_pairs,
)
from envrestore.workers.shutdown import THREADS_SHARE

app = typer.Typer(
    name="envrestore",
    help="Back up and restore website environments (database, files, git code) as queued jobs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="The ledger database.", no_args_is_help=True)
site_app = typer.Typer(help="Sites.", no_args_is_help=True)
env_app = typer.Typer(help="Environments of a site (dev, test, live, ...).", no_args_is_help=True)
backup_app = typer.Typer(help="Backups of an environment.", no_args_is_help=True)
job_app = typer.Typer(help="Jobs: show, list, follow.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(site_app, name="site")
app.add_typer(env_app, name="env")
app.add_typer(backup_app, name="backup")
app.add_typer(job_app, name="job")
app.add_typer(import_app, name="import")
backup_app.command("link")(backup_link)
env_app.command("clone-content")(clone_content)


@app.callback()
def _main(
    log_level: Annotated[
        str,
        typer.Option(help="Log level [env: ENVRESTORE_LOG_LEVEL].", envvar="ENVRESTORE_LOG_LEVEL"),
    ] = "WARNING",
) -> None:
    configure_logging(level=log_level)


# ------------------------------------------------------------------------ db


@db_app.command("migrate")
def db_migrate() -> None:
    """Create or upgrade the ledger's tables (safe to run again) [env: ENVRESTORE_DATABASE_URL]."""
    settings = load_cli_settings()

    async def body() -> list[str]:
        conn = await connect(settings.database_url)
        try:
            return [f"{m.version:03d}_{m.name}" for m in await migrate(conn)]
        finally:
            await conn.close()

    applied = run_command(body)
    out.print(f"applied: {', '.join(applied)}" if applied else "ledger is up to date")


# ---------------------------------------------------------------------- site


@site_app.command("add")
def site_add(name: Annotated[str, typer.Argument(help="Site name, e.g. mysite.")]) -> None:
    """Register a site."""
    settings = load_cli_settings()

    async def body() -> bool:
        return await with_ledger(settings, lambda pool: registry.add_site(pool, name))

    if not run_command(body):
        err.print(f"error: site {name!r} already exists", markup=False)
        raise typer.Exit(ExitCode.CONFLICT)
    out.print(f"site {name} added")


# ----------------------------------------------------------------------- env


@env_app.command("add")
def env_add(
    target: Annotated[str, typer.Argument(help="SITE.ENV, e.g. mysite.dev.")],
    db: Annotated[
        str,
        typer.Option(
            "--db",
            help="Database DSN: mariadb://, mysql:// or postgresql://; the password may be "
            "given as ?password_env=VAR or ?password_file=PATH.",
        ),
    ],
    files: Annotated[Path, typer.Option("--files", help="The uploaded-files directory.")],
    code: Annotated[Path, typer.Option("--code", help="The code directory (a git working tree).")],
    protected: Annotated[
        bool | None,
        typer.Option(
            "--protected/--unprotected",
            help="Refuse direct restores unless forced (default: only 'live').",
        ),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            help="The base URL visitors use (https://dev.example.com): when database content "
            "moves here from another environment, its URL is rewritten to this one.",
        ),
    ] = None,
) -> None:
    """Register an environment, or update its settings."""
    settings = load_cli_settings()

    async def body() -> tuple[registry.Environment, bool]:
        _check_env_paths(files, code)
        from envrestore.pipelines.archives.git import ensure_repo

        await ensure_repo(code)
        return await with_ledger(
            settings,
            lambda pool: registry.add_environment(
                pool, target, db=db, files=files, code=code, protected=protected, url=url
            ),
        )

    environment, created = run_command(body)
    verb = "added" if created else "updated"
    out.print(
        f"environment {environment.target} {verb} ({environment.engine}"
        f"{', protected' if environment.protected else ''})"
    )


def _check_env_paths(files: Path, code: Path) -> None:
    if not files.is_dir():
        raise BadInput(f"files directory {files} does not exist or is not a directory")
    if not code.is_dir():
        raise BadInput(f"code directory {code} does not exist or is not a directory")


@env_app.command("list")
def env_list(
    site: Annotated[str | None, typer.Argument(help="Only this site's environments.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List environments (database DSNs shown with passwords masked)."""
    settings = load_cli_settings()

    async def body() -> list[registry.Environment]:
        return await with_ledger(settings, lambda pool: registry.list_environments(pool, site))

    environments = run_command(body)
    if as_json:
        print_json([e.public() for e in environments])
        return
    table = Table("target", "engine", "url", "db", "files", "code", "protected")
    for e in environments:
        p = e.public()
        table.add_row(
            e.target,
            e.engine,
            e.url or "",
            p["db"],
            p["files"],
            p["code"],
            "yes" if e.protected else "",
        )
    out.print(table)


@env_app.command("load")
def env_load(
    file: Annotated[Path, typer.Argument(help="A TOML file of [[env]] entries.")],
) -> None:
    """Register many environments from a TOML file, all checked before any is written."""
    settings = load_cli_settings()

    async def body() -> list[tuple[registry.Environment, bool]]:
        specs = registry.read_registry_file(file)
        from envrestore.pipelines.archives.git import ensure_repo

        for spec in specs:
            _check_env_paths(spec.files, spec.code)
            await ensure_repo(spec.code)

        async def register(pool: asyncpg.Pool) -> list[tuple[registry.Environment, bool]]:
            for spec in specs:
                site, _env = registry.parse_target(spec.target)
                await registry.add_site(pool, site)
            return [
                await registry.add_environment(
                    pool,
                    s.target,
                    db=s.db,
                    files=s.files,
                    code=s.code,
                    protected=s.protected,
                    url=s.url,
                )
                for s in specs
            ]

        return await with_ledger(settings, register)

    for environment, created in run_command(body):
        out.print(f"environment {environment.target} {'added' if created else 'updated'}")


# -------------------------------------------------------------------- backup


@backup_app.command("create")
def backup_create(
    target: Annotated[str, typer.Argument(help="SITE.ENV to back up.")],
    keep_for: Annotated[
        int | None,
        typer.Option(
            "--keep-for",
            help="Days to keep the backup [env: ENVRESTORE_BACKUP_KEEP_DAYS, default 30].",
        ),
    ] = None,
    idempotency_key: KeyOpt = None,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Back up an environment: database, files and code into S3, as a queued job."""
    settings = load_cli_settings()
    request = BackupRequest(target, keep_days=keep_for)

    async def submit(producer: Producer) -> Submitted:
        return await producer.submit(request, idempotency_key=idempotency_key)

    submit_command(settings, submit, wait=wait, as_json=as_json)


@backup_app.command("list")
def backup_list(
    target: Annotated[str, typer.Argument(help="SITE.ENV.")],
    as_json: JsonOpt = False,
) -> None:
    """List an environment's backups, newest first."""
    settings = load_cli_settings()

    async def body() -> list[backups.BackupRecord]:
        return await with_ledger(settings, lambda pool: backups.list_backups(pool, target))

    records = run_command(body)
    if as_json:
        print_json([r.public() for r in records])
        return
    if not records:
        out.print(f"no backups of {target} yet (envrestore backup create {target})")
        return
    table = Table("id", "created_at", "kind", "engine", "git HEAD", "parts (bytes)")
    for r in records:
        sizes = ", ".join(f"{p['part']} {p['size']:,}" for p in r.parts)
        table.add_row(
            r.id, r.created_at.isoformat(), r.kind, r.engine, (r.git_head or "")[:12], sizes
        )
    out.print(table)


# ------------------------------------------------------------------- restore


@app.command("restore")
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
            "copy). A failure then leaves the environment empty; there is no rollback point.",
        ),
    ] = False,
    force_live: Annotated[
        bool, typer.Option("--force-live", help="Allow restoring a protected environment.")
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
) -> None:
    """Restore an environment from a backup (its own, or --from another environment's).

    Database, files and code are replaced. Everything is imported beside the live
    content and swapped in at the end; a job that fails before that leaves the
    environment as it was.
    """
    settings = load_cli_settings()
    if in_place and not as_json:
        err.print(
            "warning: --in-place wipes the live database and directories BEFORE importing; "
            "if the restore fails the environment stays empty and there is no rollback point",
            markup=False,
        )

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


@app.command("rollback")
def rollback(
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


# ----------------------------------------------------------------------- job


@job_app.command("show")
def job_show(
    job_id: Annotated[str, typer.Argument(help="The job id.")],
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Show a job: status, error, steps with attempts and progress."""
    settings = load_cli_settings()

    async def body() -> int:
        uid = views.parse_job_id(job_id)
        if wait:
            view = await with_ledger(settings, lambda pool: follow_job(pool, uid, quiet=as_json))
            return report_final(view, as_json=as_json)
        view = await with_ledger(settings, lambda pool: views.show_job(pool, uid))
        if as_json:
            print_json(view)
        else:
            _print_job(view)
        return ExitCode.OK

    raise typer.Exit(run_command(body))


def _cell(value: Any) -> Text:
    """A table cell: cleaned, and never read as rich markup."""
    return Text(shown(value))


def _print_job(view: dict[str, Any]) -> None:
    out.print(
        Text.assemble(
            f"job {shown(view['id'])}  {shown(view['kind'])}  {shown(view['target'])}  ",
            (shown(view["status"]), "bold"),
        )
    )
    if view["error"]:
        out.print(f"error: {shown(view['error'])}", markup=False)
    table = Table("step", "status", "attempts", "progress", "error")
    for s in view["steps"]:
        total = s["bytes_total"]
        progress = f"{s['bytes_done']:,}" + (f" / {total:,}" if total else "")
        table.add_row(
            _cell(s["name"]), _cell(s["status"]), str(s["attempts"]), progress, _cell(s["error"])
        )
    out.print(table)


@job_app.command("cancel")
def job_cancel(job_id: Annotated[str, typer.Argument(help="The job id.")]) -> None:
    """Cancel a job; a restore can be cancelled until its switch begins (then: rollback)."""
    settings = load_cli_settings()

    async def body() -> None:
        uid = views.parse_job_id(job_id)
        await with_ledger(settings, lambda pool: cancel_job(pool, uid, job_kinds()))

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
        return await with_ledger(
            settings, lambda pool: views.list_jobs(pool, site=site, env=env, limit=limit)
        )

    jobs = run_command(body)
    if as_json:
        print_json(jobs)
        return
    table = Table("id", "kind", "target", "status", "created_at", "error")
    for j in jobs:
        table.add_row(
            j["id"],
            _cell(j["kind"]),
            _cell(j["target"]),
            _cell(j["status"]),
            j["created_at"],
            _cell(j["error"]),
        )
    out.print(table)


# -------------------------------------------------------------------- worker


@app.command("worker")
def worker(
    processes: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    threads: Annotated[int, typer.Option(help="Worker threads per process.")] = 4,
    queues: Annotated[
        list[str] | None,
        typer.Option(help="Queues to consume [env: ENVRESTORE_QUEUE_NAME, default envrestore]."),
    ] = None,
) -> None:
    """Start a worker: Dramatiq's CLI with envrestore's broker and actors."""
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
    os.execvp(argv[0], argv)  # noqa: S606 - replaces this process with the worker


def main() -> None:
    app()


if __name__ == "__main__":
    main()
