"""`envrestore` starts quickly: building the command (for --help, --version or any
command's parsing) loads no heavy library; each command imports what it uses."""

from __future__ import annotations

import json
import subprocess
import sys

from envrestore.cli.common import SETTING_DEFAULTS
from envrestore.cli.tokens import SCOPES
from envrestore.config.settings import Settings
from envrestore.pipelines.auth import tokens

#: What would cost a command's start tenths of a second, and no parsing needs.
HEAVY = (
    "aioboto3",
    "botocore",
    "aiohttp",
    "fastapi",
    "uvicorn",
    "dramatiq",
    "redis",
    "prometheus_client",
    "asyncpg",
    "pydantic",
    "structlog",
    "rich",
)

_PROBE = """
import json, sys
import typer.main
import envrestore.cli.main as main
typer.main.get_command(main.app)  # every command and option, as --help lists them
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def loaded_after_building_the_cli() -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True
    )
    return set(json.loads(done.stdout))


def test_building_the_cli_loads_no_heavy_library() -> None:
    loaded = loaded_after_building_the_cli()
    assert "typer" in loaded  # the probe did build the command
    assert sorted(loaded & set(HEAVY)) == []


def test_help_lists_every_command_with_its_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "envrestore.cli.main", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    listed = done.stdout.split("Commands:")[1]
    for name, words in (
        ("backup", "Backups of an environment."),
        ("restore", "Restore an environment"),
        ("job", "Jobs: show, list, follow."),
        ("worker", "Start a worker"),
        ("token", "API bearer tokens"),
        ("db", "The ledger database."),
    ):
        assert any(line.split()[:1] == [name] and words in line for line in listed.splitlines())


def test_what_the_cli_states_without_importing_it_agrees_with_its_source() -> None:
    """Help texts name setting defaults and token scopes from copies kept light."""
    for setting, default in SETTING_DEFAULTS.items():
        assert Settings.model_fields[setting].get_default(call_default_factory=True) == default
    assert SCOPES == tokens.SCOPES


def test_a_run_builds_only_the_command_it_names() -> None:
    import typer.main

    from envrestore.cli.main import app, app_for

    def built(app: typer.Typer) -> list[str]:
        group = typer.main.get_command(app)
        assert isinstance(group, typer.main.TyperGroup)
        return sorted(group.commands)

    def names(argv: list[str]) -> list[str]:
        return built(app_for(argv))

    assert names(["job", "list", "--json"]) == ["job"]
    assert names(["--log-level", "DEBUG", "restore", "shop.dev"]) == ["restore"]
    assert names(["--log-level=INFO", "backup"]) == ["backup"]
    everything = built(app)
    assert len(everything) > 10
    for whole in (["--help"], ["--version"], [], ["jb", "list"], ["--json", "job"]):
        assert names(whole) == everything
