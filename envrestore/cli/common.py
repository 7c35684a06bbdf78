"""What every `envrestore` command shares: consoles, settings, errors → exit codes, jobs.

A command that creates a job builds a typed request and hands it to a
`Producer` opened for the operator at the shell (`submit_command`); the same
producer serves the HTTP API and the scheduler.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar, cast
from urllib.parse import urlsplit

import typer

from envrestore.cli.errors import ERROR_KINDS, NOT_MIGRATED, LazyConsole, fail_for
from envrestore.cli.errors import err as err  # re-exported: every command module uses these
from envrestore.cli.errors import fail as fail
from envrestore.cli.errors import print_json as print_json
from envrestore.cli.exit_codes import ExitCode
from envrestore.pipelines.errors import EnvrestoreError, NotFound
from envrestore.pipelines.secrets import mask_url
from envrestore.pipelines.text import clean_text

# Only what every command needs is imported here: asyncpg, rich, pydantic and the
# pipelines are imported by the function that uses them, so `envrestore --help`
# or a command that never talks to the ledger starts in a fraction of the time
# (tests/unit/test_cli_imports.py, tests/bench/bench_client.py).
if TYPE_CHECKING:
    import asyncpg
    from rich.console import Console

    from envrestore.client import Envrestore
    from envrestore.config.settings import Settings
    from envrestore.pipelines.jobs.submit import Submitted
    from envrestore.pipelines.producer import Producer

T = TypeVar("T")


OFF_TERMINAL_WIDTH = 200


def _stdout_console() -> Console:
    """stdout: a terminal's width, or $COLUMNS if set; off a terminal (pipes, CI,
    the demo's capture) 200 columns instead of rich's 80. Decided at each print,
    so a test (or a resized terminal) sees its own width."""
    from rich.console import Console, ConsoleDimensions

    class _OutConsole(Console):
        @property  # type: ignore[misc]
        def size(self) -> ConsoleDimensions:
            dims = super().size
            if self._width is None and not self.is_terminal and "COLUMNS" not in os.environ:
                return ConsoleDimensions(OFF_TERMINAL_WIDTH, dims.height)
            return dims

    return _OutConsole(soft_wrap=True)


out = cast("Console", LazyConsole(_stdout_console))

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

#: Kept for callers that map an error family to its exit code.
EXIT_FOR: list[tuple[type[EnvrestoreError], ExitCode]] = [(t, c) for t, _, c in ERROR_KINDS]


def load_cli_settings() -> Settings:
    """The settings, or one line naming the bad variable (exit 2)."""
    from pydantic import ValidationError

    from envrestore.config.settings import describe_settings_error, load_settings

    try:
        settings = load_settings()
        check_urls(settings)
        return settings
    except ValidationError as exc:
        fail(describe_settings_error(exc), code="bad_input", exit_code=ExitCode.USAGE)
    except ValueError as exc:
        fail(f"bad configuration: {exc}", code="bad_input", exit_code=ExitCode.USAGE)


#: Setting → the URL schemes it may use; checked before any connection is tried.
_URL_SCHEMES = {
    "database_url": ("postgresql", "postgres"),
    "redis_url": ("redis", "rediss", "unix"),
    "s3_endpoint_url": ("http", "https"),
}


def check_urls(settings: Settings) -> None:
    """A malformed service URL is named in one line (ValueError), not a parser's traceback."""
    for field, schemes in _URL_SCHEMES.items():
        value = getattr(settings, field)
        if value is None:
            continue
        variable = f"ENVRESTORE_{field.upper()}"
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError as exc:
            raise ValueError(f"{variable} is not a valid URL ({exc}): {mask_url(value)}") from None
        if parts.scheme not in schemes:
            raise ValueError(
                f"{variable} must start with {' or '.join(s + '://' for s in schemes)}, "
                f"got {mask_url(value)!r}"
            )


def run_command(body: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run an async command body; turn its errors into one line and an exit code."""
    import asyncio

    from envrestore.cli.follow import StoppedFollowing

    try:
        return asyncio.run(body())
    except StoppedFollowing as exc:
        fail(str(exc), code="interrupted", exit_code=ExitCode.INTERRUPTED)
    except KeyboardInterrupt:
        fail("interrupted", code="interrupted", exit_code=ExitCode.INTERRUPTED)
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:  # noqa: BLE001 - every error leaves as one line (cli/errors.py)
        fail_for(exc)


async def check_schema(pool: asyncpg.Pool) -> None:
    """Refuse at once (one line, run `envrestore db migrate`) on a ledger not migrated,
    or migrated by an older envrestore, rather than failing on a missing table later."""
    import asyncpg

    from envrestore.pipelines.ledger.migrate import available_migrations

    try:
        applied = {r["version"] for r in await pool.fetch("SELECT version FROM schema_migrations")}
    except asyncpg.UndefinedTableError:
        applied = set()
    missing = [m for m in available_migrations() if m.version not in applied]
    if missing and not applied:
        fail(NOT_MIGRATED, code="not_migrated", exit_code=ExitCode.UNAVAILABLE)
    if missing:
        names = ", ".join(f"{m.version:03d}_{m.name}" for m in missing)
        fail(
            f"{NOT_MIGRATED} (not applied: {names})",
            code="not_migrated",
            exit_code=ExitCode.UNAVAILABLE,
        )


async def with_ledger(settings: Settings, use: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
    """A small pool on the ledger for the length of one command, its schema checked."""
    from envrestore.pipelines.ledger.connection import create_pool

    pool = await create_pool(settings.database_url, max_size=2)
    try:
        await check_schema(pool)
        return await use(pool)
    finally:
        await pool.close()


async def with_client(
    settings: Settings,
    use: Callable[[Envrestore], Awaitable[T]],
    *,
    object_store: bool = True,
) -> T:
    """The producer API (envrestore.client) for the operator at this shell, for one command.

    `object_store=False`: a command that only reads or changes the ledger (job list,
    show, cancel) does without the S3 client, whose set-up costs a quick command's start.
    """
    from envrestore.client import Envrestore
    from envrestore.pipelines.jobs.principal import Principal

    async def run(pool: asyncpg.Pool) -> T:
        if not object_store:
            return await use(Envrestore(settings, pool, None, Principal.operator()))
        from envrestore.pipelines.objectstore import open_object_store

        async with open_object_store(settings) as store:
            return await use(Envrestore(settings, pool, store, Principal.operator()))

    return await with_ledger(settings, run)


def shown(value: Any) -> str:
    """A ledger value as printed: never raw control characters (older rows may hold them)."""
    return clean_text("" if value is None else str(value))


def job_command(
    settings: Settings,
    submit: Callable[[asyncpg.Pool], Awaitable[Submitted]],
    *,
    wait: bool,
    as_json: bool,
) -> NoReturn:
    """Run a command that creates a job: submit it, then report or follow it."""

    async def submit_and_report(pool: asyncpg.Pool) -> int:
        return await finish_job_command(pool, await submit(pool), wait=wait, as_json=as_json)

    raise typer.Exit(run_command(lambda: with_ledger(settings, submit_and_report)))


async def finish_job_command(
    pool: asyncpg.Pool, submitted: Submitted, *, wait: bool, as_json: bool
) -> int:
    job_id = submitted.job_id
    if not wait:
        if as_json:
            print_json({"id": str(job_id), "created": submitted.created})
        else:
            note = "" if submitted.created else " (existing job for this idempotency key)"
            out.print(f"job {job_id} queued{note}")
            out.print(f"follow it with: envrestore job show {job_id} --wait")
        return ExitCode.OK
    if not as_json:
        err.print(f"job {job_id} {'queued' if submitted.created else '(existing)'}; waiting")
    from envrestore.cli.follow import follow_job

    view = await follow_job(pool, job_id, quiet=as_json)
    return report_final(view, as_json=as_json)


def report_final(view: dict[str, Any], *, as_json: bool) -> int:
    if as_json:
        print_json(view)
    elif view["status"] == "succeeded":
        out.print(f"job {view['id']} succeeded")
    else:
        err.print(f"job {view['id']} {view['status']}: {shown(view['error'])}", markup=False)
    return ExitCode.OK if view["status"] == "succeeded" else ExitCode.JOB_FAILED


def submit_command(
    settings: Settings,
    submit: Callable[[Producer], Awaitable[Submitted]],
    *,
    wait: bool,
    as_json: bool,
) -> NoReturn:
    """Submit through a producer for the operator at this shell, then report or follow."""

    from envrestore.client import Envrestore
    from envrestore.pipelines.jobs.principal import Principal
    from envrestore.pipelines.objectstore import open_object_store

    async def with_producer(pool: asyncpg.Pool) -> Submitted:
        async with open_object_store(settings) as store:
            return await submit(Envrestore(settings, pool, store, Principal.operator()).producer)

    job_command(settings, with_producer, wait=wait, as_json=as_json)


SearchReplaceOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--search-replace",
        help="OLD=NEW rewritten in the database (serialized-safe, like wp search-replace); "
        "repeatable, added to the automatic URL rewrite.",
    ),
]
NoSearchReplaceOpt = Annotated[
    bool,
    typer.Option(
        "--no-search-replace",
        help="Do not rewrite the source's URL to the target's in the database.",
    ),
]
CodeStrategyOpt = Annotated[
    str | None,
    typer.Option(
        "--code-strategy",
        help="replace (the backup's repository, same site), revert (one new commit with the "
        "backup's tree), overwrite (another site's tree as one commit) or merge (histories).",
    ),
]


#: The built-in defaults of the settings an option's help names: written here so that
#: building the command's help does not import pydantic (tests/unit/test_cli_imports.py
#: checks each against config/settings.py).
SETTING_DEFAULTS: dict[str, object] = {
    "queue_name": "envrestore",
    "api_host": "127.0.0.1",
    "api_port": 8080,
    "link_default_ttl": 300,
}


def from_setting(text: str, setting: str) -> str:
    """Help text for an option that, when not given, takes a setting's value: it names
    the variable and the built-in default, as click shows them for other options."""
    default = SETTING_DEFAULTS[setting]
    return f"{text}  [env var: ENVRESTORE_{setting.upper()}; default: {default}]"


async def require_known(pool: asyncpg.Pool, target: str) -> None:
    """`SITE` or `SITE.ENV` named on the command line must exist: NotFound (exit 3)
    rather than an empty listing that reads as "nothing there"."""
    from envrestore.pipelines import registry
    from envrestore.pipelines.ledger.queries import sql

    site, _, env = target.partition(".")
    if env:
        await registry.get_environment(pool, target)
    elif await pool.fetchrow(sql("get_site"), site) is None:
        raise NotFound(f"site {site!r} is not registered (envrestore site add {site})", site=site)


YesOpt = Annotated[
    bool,
    typer.Option(
        "--yes",
        "-y",
        help="Do not ask before a risky option (--force-live, --in-place, live content) takes "
        "effect. Only a terminal is asked; off a terminal (scripts, CI) nothing is asked and "
        "the command goes on.",
    ),
]


def stdin_is_terminal() -> bool:
    """Whether someone can answer a question (tests replace this)."""
    return sys.stdin.isatty()


def confirm_risk(warning: str, *, yes: bool) -> None:
    """On a terminal, ask before a risky option takes effect (no: exit 1, nothing done).

    Off a terminal the command goes on as it always did, so scripts that already
    pass --force-live or --in-place keep working; --yes skips the question.
    """
    if yes or not stdin_is_terminal():
        return
    err.print(f"warning: {warning}", markup=False)
    if not typer.confirm("Go on?", default=False, err=True):
        fail("not confirmed; nothing done", code="not_confirmed", exit_code=ExitCode.ERROR)
