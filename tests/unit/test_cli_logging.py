"""Log format as the README promises: readable on a terminal, JSON lines elsewhere.
ENVRESTORE_LOG_FORMAT decides where the stream cannot tell (a worker process's pipe)."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from envrestore.config.logging import configure_logging


@pytest.fixture(autouse=True)
def restore_logging():
    handlers = logging.getLogger().handlers[:]
    yield
    structlog.reset_defaults()
    logging.getLogger().handlers[:] = handlers


def _logged(monkeypatch: pytest.MonkeyPatch, fmt: str | None) -> str:
    if fmt is None:
        monkeypatch.delenv("ENVRESTORE_LOG_FORMAT", raising=False)
    else:
        monkeypatch.setenv("ENVRESTORE_LOG_FORMAT", fmt)
    stream = io.StringIO()  # a pipe, as a worker process has
    configure_logging(level="INFO", stream=stream)
    structlog.get_logger("t").info("step.started", step="import_db")
    return stream.getvalue().strip()


def test_off_a_terminal_logs_are_json_lines(monkeypatch: pytest.MonkeyPatch):
    for fmt in (None, "auto", "json"):
        assert json.loads(_logged(monkeypatch, fmt))["event"] == "step.started"


def test_console_format_is_readable_text_even_into_a_pipe(monkeypatch: pytest.MonkeyPatch):
    line = _logged(monkeypatch, "console")
    assert not line.startswith("{")
    assert "step.started" in line and "step=import_db" in line
    assert "\x1b[" not in line  # no colour codes into a pipe
