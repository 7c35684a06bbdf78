"""`--help` as a new user reads it: -h, --version, defaults, variables, brackets kept."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from envrestore import __version__
from envrestore.cli.main import app

runner = CliRunner()
NARROW = {"COLUMNS": "80"}


def _help(*args: str) -> str:
    result = runner.invoke(app, [*args, "-h"], env=NARROW)
    assert result.exit_code == 0, result.output
    return " ".join(result.stdout.split())  # the words, whatever the wrapping


def _commands(group: typer.core.TyperGroup, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = [path]
    for name, command in group.commands.items():
        if isinstance(command, typer.core.TyperGroup):
            found += _commands(command, (*path, name))
        else:
            found.append((*path, name))
    return found


ROOT = typer.main.get_command(app)
ALL_COMMANDS = _commands(ROOT)  # type: ignore[arg-type]


def test_version_prints_the_installed_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"envrestore {__version__}"


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=lambda p: " ".join(p) or "envrestore")
def test_h_is_help_on_every_command_and_brackets_in_help_texts_survive(path: tuple[str, ...]):
    text = _help(*path)
    assert "Usage: envrestore" in text
    assert "-h, --help" in text
    # Every "[...]" written in an option's help is printed as written (rich markup
    # used to eat "[env: ENVRESTORE_BACKUP_KEEP_DAYS, default 30]").
    command = ROOT
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    for param in command.params:
        for bracketed in re.findall(r"\[[^\]]*\]", getattr(param, "help", None) or ""):
            assert " ".join(bracketed.split()) in text, (path, param.name, bracketed)


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=lambda p: " ".join(p) or "envrestore")
def test_every_option_with_a_value_shows_its_default(path: tuple[str, ...]):
    command = ROOT
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    text = _help(*path)
    for param in command.params:
        if param.param_type_name != "option" or param.name == "help":
            continue
        if getattr(param, "is_flag", False) or param.required:
            continue  # a flag is off unless given
        flag = max(param.opts, key=len)
        described = " ".join((param.help or "").split())
        if param.default is not None:
            shown = f"default: {param.default}" if not isinstance(param.default, list) else ""
            assert shown in text or "default: " in described, (path, flag)


def test_backup_create_at_80_columns_names_the_setting_behind_keep_for():
    text = _help("backup", "create")
    assert "--keep-for" in text
    assert "ENVRESTORE_BACKUP_KEEP_DAYS" in text
    assert "default 30" in text or "default: 30" in text


def test_settings_behind_options_are_named_with_their_defaults():
    root = _help()
    assert "[env var: ENVRESTORE_LOG_LEVEL; default: WARNING]" in root
    assert "--version" in root
    worker = _help("worker")
    assert "[env var: ENVRESTORE_QUEUE_NAME; default: envrestore]" in worker
    assert "[default: 4]" in worker
    link = _help("backup", "link")
    assert "[env var: ENVRESTORE_LINK_DEFAULT_TTL; default: 300]" in link
    jobs = _help("job", "list")
    assert "[default: 50]" in jobs


def test_risky_options_say_they_ask_on_a_terminal():
    restore = _help("restore")
    assert "-y, --yes" in restore
    assert "Asked to confirm on a terminal, unless --yes" in restore
    assert "off a terminal (scripts, CI) nothing is asked" in restore
    for kind in ("db", "files", "site", "code"):
        assert "asked to confirm on a terminal, unless --yes" in _help("import", kind)
