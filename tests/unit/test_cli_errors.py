"""Whatever a command raises leaves as one line, or one JSON object under --json."""

from __future__ import annotations

import json
from typing import Annotated

import asyncpg
import pytest
import typer
from typer.testing import CliRunner

from envrestore.cli.errors import EnvrestoreGroup, describe
from envrestore.cli.exit_codes import ExitCode
from envrestore.pipelines.errors import BadInput, Conflict, NotFound, Refused, Unavailable

runner = CliRunner()


@pytest.mark.parametrize(
    ("exc", "code", "exit_code"),
    [
        (NotFound("no such site"), "not_found", ExitCode.NOT_FOUND),
        (Conflict("exists"), "conflict", ExitCode.CONFLICT),
        (Refused("protected"), "refused", ExitCode.CONFLICT),
        (BadInput("bad"), "bad_input", ExitCode.USAGE),
        (Unavailable("down"), "unavailable", ExitCode.UNAVAILABLE),
        (asyncpg.UndefinedTableError("relation jobs does not exist"), "not_migrated", 6),
        (asyncpg.UndefinedColumnError("column x does not exist"), "not_migrated", 6),
        (ConnectionRefusedError(111, "refused"), "unavailable", ExitCode.UNAVAILABLE),
        (FileNotFoundError(2, "No such file", "/x.sql"), "bad_input", ExitCode.USAGE),
        (RuntimeError("a bug"), "internal", ExitCode.ERROR),
    ],
)
def test_every_error_has_a_stable_code_and_exit_code(exc: Exception, code: str, exit_code: int):
    got_code, got_exit, message = describe(exc)
    assert (got_code, got_exit) == (code, exit_code)
    assert "\n" not in message and message


def _app() -> typer.Typer:
    app = typer.Typer(cls=EnvrestoreGroup, pretty_exceptions_enable=False)

    @app.command()
    def boom(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
        raise RuntimeError("something nobody expected")

    @app.command()
    def other(count: int) -> None:
        pass

    return app


def test_an_escaped_exception_is_one_line_not_a_traceback():
    result = runner.invoke(_app(), ["boom"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert result.stderr.strip() == (
        "error: unexpected RuntimeError: something nobody expected "
        "(ENVRESTORE_LOG_LEVEL=DEBUG shows the traceback)"
    )


def test_under_json_it_is_a_json_error_on_stdout_with_the_same_exit_code():
    result = runner.invoke(_app(), ["boom", "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {
        "error": {
            "code": "internal",
            "message": "unexpected RuntimeError: something nobody expected "
            "(ENVRESTORE_LOG_LEVEL=DEBUG shows the traceback)",
        }
    }


def test_a_usage_error_keeps_clicks_text_without_json_and_becomes_json_with_it():
    plain = runner.invoke(_app(), ["other", "many"])
    assert plain.exit_code == 2 and "Invalid value" in plain.output and plain.stdout == ""
    as_json = runner.invoke(_app(), ["other", "many", "--json"])
    assert as_json.exit_code == 2
    assert json.loads(as_json.stdout)["error"]["code"] == "usage"


def test_the_lazy_stderr_console_drives_a_progress_bar() -> None:
    """`backup get` and uploads draw a rich Progress on the lazy console: rich enters
    its console as a context manager, which the lazy stand-in must allow."""
    import io

    from rich.console import Console
    from rich.progress import Progress

    from envrestore.cli.errors import LazyConsole

    out = io.StringIO()
    console = LazyConsole(lambda: Console(file=out, force_terminal=True, width=60))
    with Progress(console=console) as bar:  # type: ignore[arg-type]
        task = bar.add_task("get code", total=10)
        bar.update(task, completed=10)
    assert "get code" in out.getvalue()
