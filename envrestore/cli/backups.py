"""`envrestore backup`: create, list, show, get, delete and sweep backups of an environment."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from envrestore.cli.common import (
    JsonOpt,
    KeyOpt,
    WaitOpt,
    err,
    load_cli_settings,
    out,
    print_json,
    run_command,
    shown,
    submit_command,
    with_ledger,
)
from envrestore.cli.confirming import ConfirmOpt, confirm_or_exit
from envrestore.pipelines.errors import BadInput
from envrestore.pipelines.requests import (
    BackupRequest,
    DeleteBackupRequest,
    parse_elements,
)

if TYPE_CHECKING:  # imported where used, for a quick start (cli/common.py)
    import asyncpg

    from envrestore.pipelines.backup import inspect, lifecycle
    from envrestore.pipelines.backup import service as backups
    from envrestore.pipelines.jobs.submit import Submitted
    from envrestore.pipelines.producer import Producer

backup_app = typer.Typer(help="Backups of an environment.", no_args_is_help=True)


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
    element: Annotated[
        str,
        typer.Option(
            "--element",
            help="What to back up: all, database, files, code, or a comma-separated list; "
            "the manifest and 'backup show' list only the parts made.",
            show_default=True,
        ),
    ] = "all",
    idempotency_key: KeyOpt = None,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Back up an environment: database, files and code into S3, as a queued job."""
    settings = load_cli_settings()

    async def build() -> BackupRequest:
        return BackupRequest(target, keep_days=keep_for, elements=parse_elements(element))

    request = run_command(build)

    async def submit(producer: Producer) -> Submitted:
        return await producer.submit(request, idempotency_key=idempotency_key)

    submit_command(settings, submit, wait=wait, as_json=as_json)


@backup_app.command("list")
def backup_list(
    target: Annotated[str, typer.Argument(help="SITE.ENV.")],
    as_json: JsonOpt = False,
) -> None:
    """List an environment's backups, newest first."""
    from envrestore.cli.tables import print_table
    from envrestore.pipelines.backup import service as backups

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
    rows = [
        (
            r.id,
            r.created_at.isoformat(),
            r.expires_at.isoformat() if r.expires_at else "never",
            r.kind if r.status == "ready" else f"{r.kind} ({r.status})",
            r.engine,
            (r.git_head or "")[:12],
            ", ".join(f"{p['part']} {p['size']:,}" for p in r.parts),
        )
        for r in records
    ]
    headers = ["id", "created_at", "expires_at", "kind", "engine", "git HEAD", "parts (bytes)"]
    print_table(out, headers, rows)


BackupIdArg = Annotated[str, typer.Argument(help="The backup's id (see 'backup list').")]


@backup_app.command("show")
def backup_show(
    target: Annotated[str, typer.Argument(help="SITE.ENV the backup is of.")],
    backup_id: BackupIdArg,
    as_json: JsonOpt = False,
) -> None:
    """Show one backup: its parts with sizes and sha256, expiry, kind and the job that made it."""
    from rich.text import Text

    from envrestore.cli.tables import print_table
    from envrestore.pipelines.backup import inspect
    from envrestore.pipelines.objectstore import open_object_store

    settings = load_cli_settings()

    async def body() -> dict[str, Any]:
        async with open_object_store(settings) as store:
            return await with_ledger(
                settings, lambda pool: inspect.describe_backup(pool, store, target, backup_id)
            )

    shown_backup = run_command(body)
    if as_json:
        print_json(shown_backup)
        return
    job = shown_backup["job"]
    made_by = (
        f"{job['id']} ({job['kind']}, {job['status']}, by {shown(job['requested_by'])})"
        if job
        else shown(shown_backup["job_id"]) or "unknown"
    )
    lines = [
        ("backup", shown_backup["id"]),
        ("of", f"{shown_backup['site']}.{shown_backup['env']}"),
        ("status", shown_backup["status"]),
        ("kind", shown_backup["kind"]),
        ("created", shown_backup["created_at"]),
        ("expires", shown_backup["expires_at"] or "never"),
        ("engine", shown_backup["engine"]),
        ("git HEAD", shown(shown_backup["git_head"]) or "-"),
        ("elements", ", ".join(shown_backup["elements"]) or "none"),
        ("made by job", made_by),
        ("manifest", shown_backup["manifest_key"]),
    ]
    for label, value in lines:
        out.print(Text.assemble((f"{label:<12}", "bold"), str(value)), soft_wrap=True)
    rows = [(p["part"], f"{p['size']:,}", p["sha256"], p["key"]) for p in shown_backup["parts"]]
    print_table(out, ["part", "bytes", "sha256", "key"], rows, ids=("sha256", "key"))


@backup_app.command("get")
def backup_get(
    target: Annotated[str, typer.Argument(help="SITE.ENV the backup is of.")],
    backup_id: BackupIdArg,
    part: Annotated[
        str, typer.Option("--part", help="The part to download: database, files or code.")
    ],
    to: Annotated[
        Path | None,
        typer.Option(
            "--to",
            help="File to write, or a directory to write it in [default: the part's own name "
            "in the current directory].",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite the file if it exists.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Download one part of a backup, streamed, its sha256 checked against the manifest."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from envrestore.pipelines.backup import inspect
    from envrestore.pipelines.objectstore import open_object_store

    settings = load_cli_settings()

    async def body() -> inspect.Downloaded:
        async with open_object_store(settings) as store:

            async def download(pool: asyncpg.Pool) -> inspect.Downloaded:
                backup = await inspect.backup_of(pool, target, backup_id)
                manifest = await inspect.read_manifest(store, backup)
                record = next((p for p in backup.parts if p["part"] == part), None)
                dest = inspect.destination(record["key"] if record else part, to)
                with Progress(
                    TextColumn(f"get {part}"),
                    BarColumn(),
                    DownloadColumn(),
                    TransferSpeedColumn(),
                    TimeRemainingColumn(),
                    console=err,
                    disable=as_json,
                    transient=False,
                ) as bar:
                    task = bar.add_task("get", total=record["size"] if record else None)

                    def show(done: int, total: int) -> None:
                        bar.update(task, completed=done, total=total)

                    return await inspect.download_part(
                        store, backup, manifest, part, dest, force=force, on_progress=show
                    )

            return await with_ledger(settings, download)

    got = run_command(body)
    if as_json:
        print_json({"path": str(got.path), "size": got.size, "sha256": got.sha256})
        return
    out.print(f"{got.path} ({got.size:,} bytes, sha256 {got.sha256} checked)", markup=False)


@backup_app.command("delete")
def backup_delete(
    target: Annotated[str, typer.Argument(help="SITE.ENV the backup is of.")],
    backup_id: BackupIdArg,
    yes: ConfirmOpt = False,
    idempotency_key: KeyOpt = None,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete a backup from S3 and the ledger, as a job; kept while a job still reads it."""
    from envrestore.pipelines.backup import inspect

    settings = load_cli_settings()

    async def build() -> DeleteBackupRequest:
        request = DeleteBackupRequest(target, backup_id)  # a malformed id: one line, exit 2
        # A missing backup is named before anyone is asked to confirm its deletion.
        await with_ledger(settings, lambda pool: inspect.backup_of(pool, target, backup_id))
        return request

    request = run_command(build)
    confirm_or_exit(
        f"Delete backup {backup_id} of {target} (every part, for good)?",
        yes=yes,
        declined="nothing deleted",
    )

    async def submit(producer: Producer) -> Submitted:
        return await producer.submit(request, idempotency_key=idempotency_key)

    submit_command(settings, submit, wait=wait, as_json=as_json)


@backup_app.command("sweep")
def backup_sweep(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would be removed; remove nothing.")
    ] = False,
    min_age_hours: Annotated[
        float | None,
        typer.Option(
            "--min-age-hours",
            help="Only what is this old (a prefix by its newest object) [env: "
            "ENVRESTORE_BACKUP_ORPHAN_MIN_AGE_HOURS, default 24].",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Remove what killed, cancelled or abandoned work left in S3, once older than the minimum
    age: prefixes under backups/ with no ledger row, unfinished multipart uploads of backups no
    job is writing, and import uploads under staging/uploads/ no unfinished job reads."""
    from envrestore.pipelines.backup import lifecycle
    from envrestore.pipelines.objectstore import open_object_store

    settings = load_cli_settings()
    hours = settings.backup_orphan_min_age_hours if min_age_hours is None else min_age_hours

    async def body() -> lifecycle.Swept:
        if hours < 0:
            raise BadInput(f"--min-age-hours must be 0 or more, not {hours}")
        now = datetime.now(UTC)
        age = timedelta(hours=hours)
        async with open_object_store(settings) as store:

            async def sweep(pool: asyncpg.Pool) -> lifecycle.Swept:
                return await lifecycle.sweep_leftovers(
                    pool, store, now=now, min_age=age, dry_run=dry_run
                )

            return await with_ledger(settings, sweep)

    swept = run_command(body)
    if as_json:
        print_json(
            {
                "dry_run": dry_run,
                "prefixes": [
                    {"prefix": p, "objects": len(k)} for p, k in sorted(swept.prefixes.items())
                ],
                "multipart_uploads": [
                    {"key": u.key, "upload_id": u.upload_id, "initiated": u.initiated}
                    for u in [*swept.backup_uploads, *swept.upload_pending]
                ],
                "uploads": swept.upload_keys,
            }
        )
        return
    verb = "would remove" if dry_run else "removed"
    abort = "would abort" if dry_run else "aborted"
    for prefix, keys in sorted(swept.prefixes.items()):
        out.print(f"{verb} {prefix} ({len(keys)} objects)", markup=False)
    for upload in [*swept.backup_uploads, *swept.upload_pending]:
        out.print(f"{abort} unfinished upload of {upload.key}", markup=False)
    for key in swept.upload_keys:
        out.print(f"{verb} unused import upload {key}", markup=False)
    out.print(
        f"{'would sweep' if dry_run else 'swept'}: {len(swept.prefixes)} orphaned backup "
        f"prefixes, {len(swept.backup_uploads) + len(swept.upload_pending)} unfinished "
        f"uploads, {len(swept.upload_keys)} unused import uploads",
        markup=False,
    )
