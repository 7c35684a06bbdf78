"""The worker entry point for Dramatiq's CLI: `dramatiq envrestore.workers.app:setup`.

Settings are read here, when a worker process starts, never at import time
of the domain modules.
"""

from __future__ import annotations

from envrestore.config.logging import configure_logging
from envrestore.config.settings import load_settings
from envrestore.workers.actors import declare_actors
from envrestore.workers.broker import build_broker
from envrestore.workers.shutdown import install_term_guard


def setup() -> None:
    """Build the broker, its middleware and the actors (called by dramatiq in each process)."""
    settings = load_settings()
    configure_logging()
    broker = build_broker(settings)
    declare_actors(broker, settings.queue_name)
    install_term_guard(settings.shutdown_grace_seconds)
