"""The `envrestore` command: subcommands grouped by noun (db, site, env, backup, job, worker)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import asyncpg
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cli.exit_codes import ExitCode
from cli.follow import follow_job
from config.logging import configure_logging
from config.settings import Settings, load_settings
from pipelines import registry
from pipelines.backup import service as backups
from pipelines.catalog import job_kinds
from pipelines.errors import (
    BadInput,
    Conflict,
    EnvrestoreError,
    NotFound,
    Refused,
    Unavailable,
)
from pipelines.jobs import views
from pipelines.jobs.cancel import cancel_job
from pipelines.jobs.submit import Submitted
from pipelines.ledger.connection import connect, create_pool
from pipelines.ledger.migrate import migrate
from pipelines.objectstore import open_object_store
from pipelines.restore import service as restores
from pipelines.text import clean_text

T = TypeVar("T")

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

# Off a terminal (pipes, CI, the demo's capture) tables get room instead of 80 columns.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
WaitOpt = Annotated[
    bool, typer.Option("--wait", help="Follow the job with a progress bar until it ends.")
]
KeyOpt = Annotated[
    str | None,
    typer.Option(
        "--idempotency-key",
        help="Same key and same request give the same job; another request with it is a "
        "conflict (exit 4).",
    ),
]

_EXIT_FOR: list[tuple[type[EnvrestoreError], ExitCode]] = [
    (NotFound, ExitCode.NOT_FOUND),
    (Conflict, ExitCode.CONFLICT),
    (Refused, ExitCode.CONFLICT),
    (BadInput, ExitCode.USAGE),
    (Unavailable, ExitCode.UNAVAILABLE),
]


def _settings() -> Settings:
    try:
        return load_settings()
    except (ValidationError, ValueError) as exc:
        err.print(f"error: bad configuration: {exc}", markup=False)
        raise typer.Exit(ExitCode.USAGE) from None


def _run(body: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run an async command body; turn envrestore errors into one line and an exit code."""
    try:
        return asyncio.run(body())
    except EnvrestoreError as exc:
        err.print(f"error: {clean_text(exc.message)}", markup=False)
        code = next((c for t, c in _EXIT_FOR if isinstance(exc, t)), ExitCode.ERROR)
        raise typer.Exit(code) from None
    except KeyboardInterrupt:
        err.print("interrupted", markup=False)
        raise typer.Exit(130) from None


async def _with_ledger(settings: Settings, use: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
    """A small pool on the ledger for the length of one command."""
    pool = await create_pool(settings.database_url, max_size=2)
    try:
        return await use(pool)
    finally:
        await pool.close()


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


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
    settings = _settings()

    async def body() -> list[str]:
        conn = await connect(settings.database_url)
        try:
            return [f"{m.version:03d}_{m.name}" for m in await migrate(conn)]
        finally:
            await conn.close()

    applied = _run(body)
    out.print(f"applied: {', '.join(applied)}" if applied else "ledger is up to date")


# ---------------------------------------------------------------------- site


@site_app.command("add")
def site_add(name: Annotated[str, typer.Argument(help="Site name, e.g. mysite.")]) -> None:
    """Register a site."""
    settings = _settings()

    async def body() -> bool:
        return await _with_ledger(settings, lambda pool: registry.add_site(pool, name))

    if not _run(body):
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
) -> None:
    """Register an environment, or update its settings."""
    settings = _settings()

    async def body() -> tuple[registry.Environment, bool]:
        _check_env_paths(files, code)
        from pipelines.archives.git import ensure_repo

        await ensure_repo(code)
        return await _with_ledger(
            settings,
            lambda pool: registry.add_environment(
                pool, target, db=db, files=files, code=code, protected=protected
            ),
        )

    environment, created = _run(body)
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
    settings = _settings()

    async def body() -> list[registry.Environment]:
        return await _with_ledger(settings, lambda pool: registry.list_environments(pool, site))

    environments = _run(body)
    if as_json:
        _print_json([e.public() for e in environments])
        return
    table = Table("target", "engine", "db", "files", "code", "protected")
    for e in environments:
        p = e.public()
        table.add_row(
            e.target, e.engine, p["db"], p["files"], p["code"], "yes" if e.protected else ""
        )
    out.print(table)


@env_app.command("load")
def env_load(
    file: Annotated[Path, typer.Argument(help="A TOML file of [[env]] entries.")],
) -> None:
    """Register many environments from a TOML file, all checked before any is written."""
    settings = _settings()

    async def body() -> list[tuple[registry.Environment, bool]]:
        specs = registry.read_registry_file(file)
        from pipelines.archives.git import ensure_repo

        for spec in specs:
            _check_env_paths(spec.files, spec.code)
            await ensure_repo(spec.code)

        async def register(pool: asyncpg.Pool) -> list[tuple[registry.Environment, bool]]:
            for spec in specs:
                site, _env = registry.parse_target(spec.target)
                await registry.add_site(pool, site)
            return [
                await registry.add_environment(
                    pool, s.target, db=s.db, files=s.files, code=s.code, protected=s.protected
                )
                for s in specs
            ]

        return await _with_ledger(settings, register)

    for environment, created in _run(body):
        out.print(f"environment {environment.target} {'added' if created else 'updated'}")


# -------------------------------------------------------------------- backup


def _job_command(
    settings: Settings,
    submit: Callable[[asyncpg.Pool], Awaitable[Submitted]],
    *,
    wait: bool,
    as_json: bool,
) -> NoReturn:
    """Run a command that creates a job: submit it, then report or follow it."""

    async def submit_and_report(pool: asyncpg.Pool) -> int:
        return await _finish_job_command(pool, await submit(pool), wait=wait, as_json=as_json)

    raise typer.Exit(_run(lambda: _with_ledger(settings, submit_and_report)))


async def _finish_job_command(
    pool: asyncpg.Pool, submitted: Submitted, *, wait: bool, as_json: bool
) -> int:
    job_id = submitted.job_id
    if not wait:
        if as_json:
            _print_json({"id": str(job_id), "created": submitted.created})
        else:
            note = "" if submitted.created else " (existing job for this idempotency key)"
            out.print(f"job {job_id} queued{note}")
            out.print(f"follow it with: envrestore job show {job_id} --wait")
        return ExitCode.OK
    if not as_json:
        err.print(f"job {job_id} {'queued' if submitted.created else '(existing)'}; waiting")
    view = await follow_job(pool, job_id, quiet=as_json)
    return _report_final(view, as_json=as_json)


def _report_final(view: dict[str, Any], *, as_json: bool) -> int:
    if as_json:
        _print_json(view)
    elif view["status"] == "succeeded":
        out.print(f"job {view['id']} succeeded")
    else:
        err.print(f"job {view['id']} {view['status']}: {_shown(view['error'])}", markup=False)
    return ExitCode.OK if view["status"] == "succeeded" else ExitCode.JOB_FAILED


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
    settings = _settings()

    async def submit(pool: asyncpg.Pool) -> Submitted:
        async with open_object_store(settings) as store:
            return await backups.create_backup(
                pool,
                settings,
                store,
                target,
                keep_days=keep_for,
                idempotency_key=idempotency_key,
            )

    _job_command(settings, submit, wait=wait, as_json=as_json)


@backup_app.command("list")
def backup_list(
    target: Annotated[str, typer.Argument(help="SITE.ENV.")],
    as_json: JsonOpt = False,
) -> None:
    """List an environment's backups, newest first."""
    settings = _settings()

    async def body() -> list[backups.BackupRecord]:
        return await _with_ledger(settings, lambda pool: backups.list_backups(pool, target))

    records = _run(body)
    if as_json:
        _print_json([r.public() for r in records])
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
    backup: Annotated[
        str, typer.Option("--backup", help="A backup id of this environment, or 'latest'.")
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
    idempotency_key: KeyOpt = None,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Restore an environment from one of its backups: database, files and code replaced.

    Everything is imported beside the live content and swapped in at the end;
    a job that fails before that leaves the environment as it was.
    """
    settings = _settings()
    if in_place and not as_json:
        err.print(
            "warning: --in-place wipes the live database and directories BEFORE importing; "
            "if the restore fails the environment stays empty and there is no rollback point",
            markup=False,
        )

    async def submit(pool: asyncpg.Pool) -> Submitted:
        return await restores.create_restore(
            pool,
            settings,
            target,
            backup=backup,
            element=element,
            in_place=in_place,
            force_live=force_live,
            allow_incomplete_dump=allow_incomplete_dump,
            idempotency_key=idempotency_key,
        )

    _job_command(settings, submit, wait=wait, as_json=as_json)


@app.command("rollback")
def rollback(
    job_id: Annotated[str, typer.Argument(help="The restore (or rollback) job to undo.")],
    idempotency_key: KeyOpt = None,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Swap back the content a restore replaced (kept ENVRESTORE_ROLLBACK_HOURS, default 24)."""
    settings = _settings()

    async def submit(pool: asyncpg.Pool) -> Submitted:
        return await restores.create_rollback(
            pool, settings, views.parse_job_id(job_id), idempotency_key=idempotency_key
        )

    _job_command(settings, submit, wait=wait, as_json=as_json)


# ----------------------------------------------------------------------- job


@job_app.command("show")
def job_show(
    job_id: Annotated[str, typer.Argument(help="The job id.")],
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Show a job: status, error, steps with attempts and progress."""
    settings = _settings()

    async def body() -> int:
        uid = views.parse_job_id(job_id)
        if wait:
            view = await _with_ledger(settings, lambda pool: follow_job(pool, uid, quiet=as_json))
            return _report_final(view, as_json=as_json)
        view = await _with_ledger(settings, lambda pool: views.show_job(pool, uid))
        if as_json:
            _print_json(view)
        else:
            _print_job(view)
        return ExitCode.OK

    raise typer.Exit(_run(body))


def _shown(value: Any) -> str:
    """A ledger value as printed: never raw control characters (older rows may hold them)."""
    return clean_text("" if value is None else str(value))


def _cell(value: Any) -> Text:
    """A table cell: cleaned, and never read as rich markup."""
    return Text(_shown(value))


def _print_job(view: dict[str, Any]) -> None:
    out.print(
        Text.assemble(
            f"job {_shown(view['id'])}  {_shown(view['kind'])}  {_shown(view['target'])}  ",
            (_shown(view["status"]), "bold"),
        )
    )
    if view["error"]:
        out.print(f"error: {_shown(view['error'])}", markup=False)
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
    settings = _settings()

    async def body() -> None:
        uid = views.parse_job_id(job_id)
        await _with_ledger(settings, lambda pool: cancel_job(pool, uid, job_kinds()))

    _run(body)
    out.print(f"job {job_id} cancelled; its cleanup runs on the workers")


@job_app.command("list")
def job_list(
    target: Annotated[str | None, typer.Argument(help="Only jobs of SITE or SITE.ENV.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """List recent jobs."""
    settings = _settings()

    async def body() -> list[dict[str, Any]]:
        site, env = None, None
        if target:
            site, _, env_part = target.partition(".")
            env = env_part or None
        return await _with_ledger(
            settings, lambda pool: views.list_jobs(pool, site=site, env=env, limit=limit)
        )

    jobs = _run(body)
    if as_json:
        _print_json(jobs)
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
    settings = _settings()
    dramatiq = shutil.which("dramatiq", path=str(Path(sys.executable).parent)) or "dramatiq"
    argv = [
        dramatiq,
        "workers.app:setup",
        "--processes",
        str(processes),
        "--threads",
        str(threads),
        "--queues",
        *(queues or [settings.queue_name]),
    ]
    os.execvp(argv[0], argv)  # noqa: S606 - replaces this process with the worker


def main() -> None:
    app()


if __name__ == "__main__":
    main()
