"""How every `envrestore` command fails: one line (or one JSON object), a named exit code.

An operator's mistake (a bad DSN, a service down, a ledger not migrated, an
unknown site) is never a traceback. With `--json` the error goes to stdout as
`{"error": {"code": ..., "message": ...}}` with the same exit code, so a
script reads one stream. The codes are stable: not_found, conflict, refused,
bad_input, usage, unavailable, not_migrated, internal, error.

`EnvrestoreGroup` is the root command's class: it catches what a command let
escape, so commands added anywhere inherit the same behaviour.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, cast

import typer
from typer._click import Context  # typer vendors click; its exception types live here
from typer._click.exceptions import ClickException
from typer.core import TyperGroup

from envrestore.cli.exit_codes import ExitCode
from envrestore.pipelines.errors import (
    BadInput,
    Conflict,
    EnvrestoreError,
    NotFound,
    Refused,
    Unavailable,
)
from envrestore.pipelines.text import clean_text

if TYPE_CHECKING:
    from rich.console import Console


class LazyConsole:
    """A rich Console made on first use: importing rich costs a command that prints
    plain JSON (or nothing) about 40 ms of its start (README "The CLI")."""

    def __init__(self, make: Callable[[], Console]) -> None:
        self._make = make
        self._console: Console | None = None

    @property
    def console(self) -> Console:
        if self._console is None:
            self._console = self._make()
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.console, name)

    # Special methods are looked up on the type, never through __getattr__: rich's
    # Live (under every Progress) enters its console as a context manager.
    def __enter__(self) -> Console:
        return self.console.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self.console.__exit__(*exc)


def _stderr_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)


#: Typed as the Console it stands for (it forwards every attribute to one).
err = cast("Console", LazyConsole(_stderr_console))

#: Error family → (stable code, exit code); the first match wins.
ERROR_KINDS: list[tuple[type[EnvrestoreError], str, ExitCode]] = [
    (NotFound, "not_found", ExitCode.NOT_FOUND),
    (Conflict, "conflict", ExitCode.CONFLICT),
    (Refused, "refused", ExitCode.CONFLICT),
    (BadInput, "bad_input", ExitCode.USAGE),
    (Unavailable, "unavailable", ExitCode.UNAVAILABLE),
]

NOT_MIGRATED = (
    "the ledger has no tables yet, or older ones than this envrestore needs: "
    "run `envrestore db migrate`"
)


class _Mode:
    """Whether the running command was given --json (set by the root group)."""

    json = False


def errors_as_json() -> bool:
    return _Mode.json


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def fail(message: str, *, code: str, exit_code: int) -> NoReturn:
    """Report an error the way this command reports errors, and exit with `exit_code`."""
    text = clean_text(message)
    if errors_as_json():
        print_json({"error": {"code": code, "message": text}})
    else:
        err.print(f"error: {text}", markup=False)
    raise typer.Exit(exit_code)


def describe(exc: BaseException) -> tuple[str, ExitCode, str]:
    """(code, exit code, one-line message) for anything a command may raise."""
    if isinstance(exc, EnvrestoreError):
        for family, code, exit_code in ERROR_KINDS:
            if isinstance(exc, family):
                return code, exit_code, exc.message
        return "error", ExitCode.ERROR, exc.message
    # Only an asyncpg error can come from asyncpg: when no command loaded it, none did.
    asyncpg = sys.modules.get("asyncpg")
    if asyncpg is not None:
        found = _describe_asyncpg(asyncpg, exc)
        if found is not None:
            return found
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return "unavailable", ExitCode.UNAVAILABLE, f"a service cannot be reached: {exc}"
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return "bad_input", ExitCode.USAGE, str(exc)
    if isinstance(exc, OSError):
        return "error", ExitCode.ERROR, str(exc)
    name = type(exc).__name__
    return (
        "internal",
        ExitCode.ERROR,
        f"unexpected {name}: {exc} (ENVRESTORE_LOG_LEVEL=DEBUG shows the traceback)",
    )


def _describe_asyncpg(asyncpg: Any, exc: BaseException) -> tuple[str, ExitCode, str] | None:
    if isinstance(
        exc,
        (
            asyncpg.UndefinedTableError,
            asyncpg.UndefinedColumnError,
            asyncpg.UndefinedFunctionError,
            asyncpg.InvalidSchemaNameError,
        ),
    ):
        return "not_migrated", ExitCode.UNAVAILABLE, NOT_MIGRATED
    if isinstance(exc, asyncpg.ClientConfigurationError):
        return "bad_input", ExitCode.USAGE, f"bad ENVRESTORE_DATABASE_URL: {exc}"
    if isinstance(exc, asyncpg.InterfaceError):
        return "unavailable", ExitCode.UNAVAILABLE, f"a service cannot be reached: {exc}"
    if isinstance(exc, asyncpg.PostgresError) and not isinstance(exc, OSError):
        return "unavailable", ExitCode.UNAVAILABLE, f"the ledger refused a query: {exc}"
    return None


def fail_for(exc: BaseException) -> NoReturn:
    code, exit_code, message = describe(exc)
    if code == "internal" and logging.getLogger().isEnabledFor(logging.DEBUG):
        import structlog  # --log-level DEBUG: the traceback

        structlog.get_logger(__name__).debug("cli.unexpected_error", exc_info=exc)
    fail(message, code=code, exit_code=exit_code)


class EnvrestoreGroup(TyperGroup):
    """The root command: knows whether --json was asked, and catches what escapes.

    Usage errors (a missing argument, a bad option value) become JSON too
    under --json; anything else a command raises becomes one line.
    """

    def invoke(self, ctx: Context) -> Any:
        args = [*ctx._protected_args, *ctx.args]
        _Mode.json = "--json" in args[: args.index("--")] if "--" in args else "--json" in args
        try:
            return super().invoke(ctx)
        except ClickException as exc:
            if not errors_as_json():
                raise
            fail(exc.format_message(), code="usage", exit_code=exc.exit_code)
        except (typer.Exit, typer.Abort, KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - the one place a command's escape is caught
            fail_for(exc)
