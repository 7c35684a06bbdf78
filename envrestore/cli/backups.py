"""`envrestore backup`: create, list and link backups of an environment."""

from __future__ import annotations

from typing import Annotated

import typer

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
from envrestore.cli.tables import print_table
from envrestore.pipelines.backup import service as backups
from envrestore.pipelines.jobs.submit import Submitted
from envrestore.pipelines.producer import Producer
from envrestore.pipelines.requests import (
    BackupRequest,
)

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
    rows = [
        (
            r.id,
            r.created_at.isoformat(),
            r.kind,
            r.engine,
            (r.git_head or "")[:12],
            ", ".join(f"{p['part']} {p['size']:,}" for p in r.parts),
        )
        for r in records
    ]
    print_table(out, ["id", "created_at", "kind", "engine", "git HEAD", "parts (bytes)"], rows)
