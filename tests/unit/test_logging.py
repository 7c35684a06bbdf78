"""Logs: JSON lines off a terminal, bound context on every line, no secrets."""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest
import structlog

from envrestore.config.logging import configure_logging
from envrestore.pipelines.registry import Environment


@pytest.fixture(autouse=True)
def restore_logging():
    handlers = logging.getLogger().handlers[:]
    yield
    structlog.reset_defaults()
    logging.getLogger().handlers[:] = handlers


def test_json_lines_off_a_terminal_carry_the_bound_context():
    stream = io.StringIO()
    configure_logging(level="INFO", stream=stream)
    log = structlog.get_logger("test")
    with structlog.contextvars.bound_contextvars(job_id="j1", step="dump_db", site="s", env="dev"):
        log.info("step.started", attempt=1)
    line = json.loads(stream.getvalue().strip().splitlines()[-1])
    assert line["event"] == "step.started"
    assert (line["job_id"], line["step"], line["site"], line["env"]) == (
        "j1",
        "dump_db",
        "s",
        "dev",
    )
    assert line["level"] == "info"


def test_values_under_secret_names_are_never_printed():
    stream = io.StringIO()
    configure_logging(level="INFO", stream=stream)
    structlog.get_logger("test").info("s3.connect", secret_access_key="hunter2", password="pw")
    text = stream.getvalue()
    assert "hunter2" not in text
    assert '"pw"' not in text


def test_an_environment_shows_its_dsn_with_the_password_masked():
    env = Environment(
        id=1,
        site="shop",
        env="dev",
        engine="mariadb",
        db_dsn="mariadb://app:s3cret@db1:3306/shop",
        files_dir=Path("/srv/f"),
        code_dir=Path("/srv/c"),
        protected=False,
        created_at=datetime.now(UTC),
    )
    shown = json.dumps(env.public())
    assert "s3cret" not in shown
    assert "app:***@db1" in shown


def test_logging_set_up_while_stderr_was_swapped_keeps_working_after(monkeypatch):
    """A CLI run under click's CliRunner sets logging up on a stand-in stderr and closes
    it: later log lines go to the stderr of their time, not into the closed file."""
    stand_in = io.StringIO()
    monkeypatch.setattr("sys.stderr", stand_in)
    configure_logging(level="INFO", json=True)
    structlog.get_logger("test").info("during.run")
    stand_in.close()
    later = io.StringIO()
    monkeypatch.setattr("sys.stderr", later)
    structlog.get_logger("test").info("after.run")
    logging.getLogger("dramatiq").warning("stdlib after the run")
    assert '"after.run"' in later.getvalue()
    assert "stdlib after the run" in later.getvalue()
