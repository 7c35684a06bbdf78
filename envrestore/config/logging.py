"""structlog, configured once: JSON lines off a TTY, a readable console on one
(ENVRESTORE_LOG_FORMAT=json|console overrides the guess).

Every line carries the context bound for the work at hand (job_id, step,
site, env, attempt) through structlog's contextvars.

Values often come from untrusted backups (a member name, a dump line): every
string is escaped (`pipelines.text.clean_text`) before it is rendered, so no
log line can move a terminal's cursor, clear it, or fake another line.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO, cast

import structlog

from envrestore.pipelines.text import clean_text

_configured = False

#: Bound on one logged string value (a traceback gets more room).
LOG_VALUE_LIMIT = 4000
LOG_TRACEBACK_LIMIT = 20000
_MULTILINE_KEYS = frozenset({"exception", "stack"})


def _drop_secrets(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """Last line of defence: never print a value under a key that names a secret."""
    for key in list(event):
        lowered = key.lower()
        if "password" in lowered or "secret" in lowered or lowered.endswith("_key_id"):
            event[key] = "***"
    return event


def _clean_value(value: Any, limit: int, newlines: bool, depth: int = 0) -> Any:
    if isinstance(value, str):
        return clean_text(value, limit, newlines=newlines)
    if depth >= 8:
        return value
    if isinstance(value, dict):
        return {
            clean_text(str(k), 200, newlines=False): _clean_value(v, limit, newlines, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_clean_value(v, limit, newlines, depth + 1) for v in value]
    return value


def escape_controls(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Escape control characters in every string value, and bound long ones.

    Newlines are escaped too (one event, one line), except in a traceback.
    """
    cleaned: dict[str, Any] = {}
    for key, value in event.items():
        multiline = key in _MULTILINE_KEYS
        limit = LOG_TRACEBACK_LIMIT if multiline else LOG_VALUE_LIMIT
        clean_key = key if not isinstance(key, str) else clean_text(key, 200, newlines=False)
        cleaned[clean_key] = _clean_value(value, limit, multiline)
    return cleaned


#: auto (JSON off a terminal, readable on one), json, or console.
LOG_FORMAT_VARIABLE = "ENVRESTORE_LOG_FORMAT"


def _json_wanted(stream: TextIO) -> bool:
    """JSON unless ENVRESTORE_LOG_FORMAT says otherwise or the stream is a terminal.

    A Dramatiq worker process writes into a pipe its main process reads, never a
    terminal: `envrestore worker` looks at its own terminal and sets the variable
    for the processes it starts (cli/main.py).
    """
    chosen = os.environ.get(LOG_FORMAT_VARIABLE, "auto").strip().lower()
    if chosen == "json":
        return True
    if chosen == "console":
        return False
    return not stream.isatty()


class _CurrentStderr:
    """`sys.stderr` as it is at each write, not as it was when logging was set up.

    A caller that swaps stderr for a while (click's CliRunner, pytest's capture)
    and closes its stand-in afterwards must not leave every later log line
    writing into a closed file.
    """

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def configure_logging(
    *, level: str | None = None, stream: TextIO | None = None, json: bool | None = None
) -> None:
    """Set up structlog and the stdlib root logger (Dramatiq logs through it)."""
    global _configured
    stream = stream or cast(TextIO, _CurrentStderr())
    level_name = (level or os.environ.get("ENVRESTORE_LOG_LEVEL") or "INFO").upper()
    numeric = logging.getLevelName(level_name)
    if not isinstance(numeric, int):
        numeric = logging.INFO
    if json is None:
        json = _json_wanted(stream)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _drop_secrets,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, escape_controls, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                escape_controls,
                renderer,
            ],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    for noisy in ("botocore", "aiobotocore", "aioboto3", "urllib3", "asyncio"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))
    _configured = True
