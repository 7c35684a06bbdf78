"""Named points where tests make a step pause, to kill a worker at an exact moment.

Set with ENVRESTORE_FAILPOINTS as JSON, e.g. `{"switch.after_database": "sleep:5"}`.
Empty in production; a failpoint that is not set costs one dict lookup.
"""

from __future__ import annotations

import asyncio

import structlog

from envrestore.config.settings import Settings

log = structlog.get_logger(__name__)


async def failpoint(settings: Settings, name: str) -> None:
    """Pause here if the settings ask for it (`sleep:SECONDS`)."""
    action = settings.failpoints.get(name)
    if not action:
        return
    verb, _, argument = action.partition(":")
    if verb == "sleep":
        log.warning("failpoint.sleep", failpoint=name, seconds=float(argument))
        await asyncio.sleep(float(argument))
    else:
        raise ValueError(f"failpoint {name}: unknown action {action!r} (use sleep:SECONDS)")
