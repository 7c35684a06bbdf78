"""`envrestore import ...` and `envrestore backup link`: content from anywhere.

A `--file` is uploaded to `staging/uploads/` first (multipart, resumable: run
the same command again after an interruption and it continues), then the
import job reads it like any part; a `--url` is fetched by a worker, which
checks it (see `pipelines.sources.urlsafety`).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path
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
    fail,
    from_setting,
    load_cli_settings,
    print_json,
    run_command,
    stdin_is_terminal,
    submit_command,
    with_ledger,
)
from envrestore.cli.exit_codes import ExitCode
from envrestore.pipelines.errors import BadInput
from envrestore.pipelines.jobs.principal import Principal
from envrestore.pipelines.requests import (
    ELEMENTS,
    CloneRequest,
    ImportRequest,
    LinkRequest,
    PartInput,
    parse_pairs,
)

if TYPE_CHECKING:  # imported where used, for a quick start (cli/common.py)
    from envrestore.pipelines.jobs.submit import Submitted
    from envrestore.pipelines.producer import Producer
    from envrestore.pipelines.sources.links import Link

import_app = typer.Typer(
    help="Import a database, a files archive or a whole site from a URL or a file.",
    no_args_is_help=True,
)

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_ELEMENT_OF = {"db": "database", "files": "files"}

UrlOpt = Annotated[
    str | None, typer.Option("--url", help="Fetch from this URL (or an envrestore link).")
]
FileOpt = Annotated[
    Path | None, typer.Option("--file", help="Upload this file (resumes if interrupted).")
]
ForceOpt = Annotated[
    bool,
    typer.Option(
        "--force-live",
        help="Allow importing into a protected environment (asked to confirm on a terminal, "
        "unless --yes).",
    ),
]
IncompleteOpt = Annotated[
    bool,
    typer.Option(
        "--allow-incomplete-dump",
        help="Import a dump that lacks its dump tool's closing line (otherwise refused).",
    ),
]


def _looks_like_url(value: str) -> bool:
    """`https://…` is a URL; `./x.sql.gz`, `/tmp/x` and `C:…`-less paths are files."""
    return bool(_URL.match(value)) and "://" in value


async def _part_input(
    producer: Producer, element: str, value: str, *, quiet: bool, is_url: bool | None = None
) -> PartInput:
    """A URL as given, or a local file uploaded to staging first."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from envrestore.pipelines.objectstore.resumable import (
        file_identity,
        staging_upload_key,
        upload_file,
    )
    from envrestore.pipelines.objectstore.s3 import S3ObjectStore

    if is_url if is_url is not None else _looks_like_url(value):
        return PartInput(element, url=value)
    path = Path(value).expanduser()  # noqa: ASYNC240 - one stat before a long upload
    if not path.is_file():
        raise BadInput(f"{value} is not a file (give a path to the {element} archive or a URL)")
    store = producer.store
    if not isinstance(store, S3ObjectStore):
        raise BadInput("uploads need the S3 object store")
    key = staging_upload_key(path.name, file_identity(path))
    with Progress(
        TextColumn(f"upload {element}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=quiet,
        transient=False,
    ) as bar:
        task = bar.add_task("upload", total=path.stat().st_size)

        def show(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        put = await upload_file(store, path, key, on_progress=show)
    return PartInput(element, upload_key=put.key, size=put.size, sha256=put.sha256)


def _import(
    target: str,
    parts: Sequence[tuple[str, str, bool | None]],
    *,
    force_live: bool,
    allow_incomplete_dump: bool,
    idempotency_key: str | None,
    wait: bool,
    as_json: bool,
    code_strategy: str | None = None,
    search_replace: list[str] | None = None,
    no_search_replace: bool = False,
    yes: bool = False,
) -> None:
    settings = load_cli_settings()
    pairs = parse_pairs(search_replace or [])  # refused before anything is uploaded
    if force_live:
        confirm_risk(f"--force-live replaces content of {target} even if protected", yes=yes)

    async def submit(producer: Producer) -> Submitted:
        inputs = [
            await _part_input(producer, element, value, quiet=as_json, is_url=is_url)
            for element, value, is_url in parts
        ]
        request = ImportRequest(
            target,
            tuple(inputs),
            force_live=force_live,
            allow_incomplete_dump=allow_incomplete_dump,
            code_strategy=code_strategy,
            replace_pairs=pairs,
            search_replace=not no_search_replace,
        )
        return await producer.submit(request, idempotency_key=idempotency_key)

    submit_command(settings, submit, wait=wait, as_json=as_json)


def _one_part(kind: str, url: str | None, file: Path | None) -> tuple[str, str, bool]:
    if (url is None) == (file is None):
        fail(
            f"import {kind} needs exactly one of --url or --file",
            code="usage",
            exit_code=ExitCode.USAGE,
        )
    return (_ELEMENT_OF[kind], url or str(file), url is not None)


@import_app.command("db")
def import_db(
    target: Annotated[str, typer.Argument(help="SITE.ENV to import into.")],
    url: UrlOpt = None,
    file: FileOpt = None,
    force_live: ForceOpt = False,
    allow_incomplete_dump: IncompleteOpt = False,
    search_replace: SearchReplaceOpt = None,
    no_search_replace: NoSearchReplaceOpt = False,
    idempotency_key: KeyOpt = None,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
    yes: YesOpt = False,
) -> None:
    """Replace the database with a dump: .sql, .sql.gz, .sql.zst, .sql.bz2 or a .zip of one
    .sql (recognised by content). Imported beside the live one, swapped in at the end."""
    part = _one_part("db", url, file)
    _import(
        target,
        [part],
        force_live=force_live,
        allow_incomplete_dump=allow_incomplete_dump,
        idempotency_key=idempotency_key,
        wait=wait,
        as_json=as_json,
        yes=yes,
        search_replace=search_replace,
        no_search_replace=no_search_replace,
    )


@import_app.command("files")
def import_files(
    target: Annotated[str, typer.Argument(help="SITE.ENV to import into.")],
    url: UrlOpt = None,
    file: FileOpt = None,
    force_live: ForceOpt = False,
    idempotency_key: KeyOpt = None,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
    yes: YesOpt = False,
) -> None:
    """Replace the files (uploads) directory with an archive: .tar, .tar.gz/.tgz, .tar.zst,
    .tar.bz2 or .zip. A single top folder files/ or files_<env>/ is unwrapped."""
    part = _one_part("files", url, file)
    _import(
        target,
        [part],
        force_live=force_live,
        allow_incomplete_dump=False,
        idempotency_key=idempotency_key,
        wait=wait,
        as_json=as_json,
        yes=yes,
    )


@import_app.command("site")
def import_site(
    target: Annotated[str, typer.Argument(help="SITE.ENV to import into.")],
    code: Annotated[str | None, typer.Option("--code", help="Code archive (path or URL).")] = None,
    database: Annotated[
        str | None, typer.Option("--database", help="Database dump (path or URL).")
    ] = None,
    files: Annotated[
        str | None, typer.Option("--files", help="Files archive (path or URL).")
    ] = None,
    force_live: ForceOpt = False,
    allow_incomplete_dump: IncompleteOpt = False,
    code_strategy: CodeStrategyOpt = None,
    search_replace: SearchReplaceOpt = None,
    no_search_replace: NoSearchReplaceOpt = False,
    idempotency_key: KeyOpt = None,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
    yes: YesOpt = False,
) -> None:
    """Import a whole site (e.g. the three files of a Pantheon backup) as one job."""
    given = {"code": code, "database": database, "files": files}
    parts = [(element, value, None) for element, value in given.items() if value is not None]
    if not parts:
        fail(
            "give at least one of --code, --database, --files",
            code="usage",
            exit_code=ExitCode.USAGE,
        )
    _import(
        target,
        parts,
        force_live=force_live,
        allow_incomplete_dump=allow_incomplete_dump,
        idempotency_key=idempotency_key,
        wait=wait,
        as_json=as_json,
        yes=yes,
        code_strategy=code_strategy,
        search_replace=search_replace,
        no_search_replace=no_search_replace,
    )


@import_app.command("code")
def import_code(
    target: Annotated[str, typer.Argument(help="SITE.ENV to import into.")],
    code_strategy: Annotated[
        str,
        typer.Option(
            "--code-strategy",
            help="overwrite: the archive's tree (without its .git) as one commit; merge: its "
            "history merged into the current branch (a conflict fails, code untouched).",
        ),
    ],
    url: UrlOpt = None,
    file: FileOpt = None,
    force_live: ForceOpt = False,
    idempotency_key: KeyOpt = None,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
    yes: YesOpt = False,
) -> None:
    """Bring another site's code (a code archive: a repository with its .git)."""
    if code_strategy not in ("overwrite", "merge"):
        fail("--code-strategy must be overwrite or merge", code="usage", exit_code=ExitCode.USAGE)
    if (url is None) == (file is None):
        fail(
            "import code needs exactly one of --url or --file",
            code="usage",
            exit_code=ExitCode.USAGE,
        )
    _import(
        target,
        [("code", url or str(file), url is not None)],
        force_live=force_live,
        allow_incomplete_dump=False,
        idempotency_key=idempotency_key,
        wait=wait,
        as_json=as_json,
        yes=yes,
        code_strategy=code_strategy,
    )


def clone_content(
    source: Annotated[str, typer.Argument(help="SITE.ENV to copy from.")],
    target: Annotated[str, typer.Argument(help="SITE.ENV to copy into (live too).")],
    db_only: Annotated[bool, typer.Option("--db-only", help="Only the database.")] = False,
    files_only: Annotated[bool, typer.Option("--files-only", help="Only the files.")] = False,
    keep_snapshot: Annotated[
        bool,
        typer.Option("--keep-snapshot", help="Keep the snapshot as a backup of the source."),
    ] = False,
    search_replace: SearchReplaceOpt = None,
    no_search_replace: NoSearchReplaceOpt = False,
    idempotency_key: KeyOpt = None,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
    yes: YesOpt = False,
) -> None:
    """Copy an environment's database and files into another, through shadow and switch.

    The way to bring checked content to live: allowed into a protected
    environment, with a rollback point (asked to confirm on a terminal, unless
    --yes). URLs are rewritten from the source's to the target's (env add --url).
    """
    from envrestore.pipelines import registry

    if db_only and files_only:
        fail("give --db-only or --files-only, not both", code="usage", exit_code=ExitCode.USAGE)
    elements = ("database",) if db_only else ("files",) if files_only else ("database", "files")
    settings = load_cli_settings()

    async def submit(producer: Producer) -> Submitted:
        if not yes and stdin_is_terminal():
            environment = await registry.get_environment(producer.pool, target)
            if environment.protected:
                confirm_risk(f"{target} is protected: its live content will be replaced", yes=yes)
        request = CloneRequest(
            source,
            target,
            elements=elements,
            keep_snapshot=keep_snapshot,
            replace_pairs=parse_pairs(search_replace or []),
            search_replace=not no_search_replace,
        )
        return await producer.submit(request, idempotency_key=idempotency_key)

    submit_command(settings, submit, wait=wait, as_json=as_json)


def backup_link(
    target: Annotated[str, typer.Argument(help="SITE.ENV the backup belongs to.")],
    backup: Annotated[str, typer.Argument(help="A backup id, or 'latest'.")],
    part: Annotated[str | None, typer.Option("--part", help="code, database or files.")] = None,
    all_parts: Annotated[bool, typer.Option("--all", help="A link for each part.")] = False,
    ttl: Annotated[
        int | None,
        typer.Option(
            "--ttl",
            help=from_setting(
                "Seconds the link works (at most ENVRESTORE_LINK_MAX_TTL).", "link_default_ttl"
            ),
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Print temporary links (presigned GETs) to a backup's parts; curl and wget can use
    them until they expire. Each link is recorded: part, expiry, who asked."""
    from envrestore.pipelines.objectstore import open_object_store
    from envrestore.pipelines.producer import Producer

    if all_parts == (part is not None):
        fail("give --part code|database|files, or --all", code="usage", exit_code=ExitCode.USAGE)
    parts = ELEMENTS if all_parts else (part or "",)
    settings = load_cli_settings()

    async def body() -> list[Link]:
        async def make(pool: object) -> list[Link]:
            async with open_object_store(settings) as store:
                producer = Producer(pool, settings, store, Principal.operator())  # type: ignore[arg-type]
                return await producer.link(LinkRequest(target, backup, tuple(parts), ttl))

        return await with_ledger(settings, make)

    links = run_command(body)
    if as_json:
        print_json([link.public() for link in links])
        return
    # Plain writes: scripts read these lines (a TAB between part and URL, URLs whole).
    for link in links:
        sys.stdout.write(f"{link.part}\t{link.url}\n" if all_parts else f"{link.url}\n")
    err.print(f"expires at {links[0].expires_at.isoformat()}", markup=False)
