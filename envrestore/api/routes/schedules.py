"""An environment's backup schedule: read it (`read`), set it or turn it off (`backup`).

The same calls as `envrestore schedule show|set|off` (`pipelines/schedule/store.py`);
the answer is the schedule in effect, defaults included, with its next slot.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import Field

from envrestore.api.deps import Client, Grant, require_site
from envrestore.api.models import Body
from envrestore.pipelines.schedule.loop import utc_now
from envrestore.pipelines.schedule.store import get_schedule, set_schedule

router = APIRouter(tags=["schedules"])
SCHEDULE = "/sites/{site}/envs/{env}/schedule"


class ScheduleBody(Body):
    """Omitted fields keep the stored value, else the defaults (as `schedule set`)."""

    hour: int | None = Field(default=None, ge=0, le=23, description="Hour of the daily backup, UTC")
    weekly_day: int | str | None = Field(
        default=None,
        description="Day whose daily backup is the weekly one: 0-6 (0 = Sunday) or a name",
    )


@router.get(SCHEDULE, summary="The schedule in effect, its next and last slot")
async def show_schedule(site: str, env: str, client: Client, grant: Grant) -> dict[str, Any]:
    await require_site(client, grant, site, "read")
    schedule = await get_schedule(client.pool, client.settings, f"{site}.{env}")
    return schedule.public(utc_now())


@router.put(SCHEDULE, summary="Turn the daily backup on, at an hour (UTC) and weekly day")
async def set_env_schedule(
    site: str, env: str, client: Client, grant: Grant, body: ScheduleBody | None = None
) -> dict[str, Any]:
    await require_site(client, grant, site, "backup")
    body = body or ScheduleBody()
    schedule = await set_schedule(
        client.pool,
        client.settings,
        f"{site}.{env}",
        hour=body.hour,
        weekly_day=body.weekly_day,
        by=str(grant.principal),
    )
    return schedule.public(utc_now())


@router.delete(SCHEDULE, summary="Stop scheduled backups (existing backups keep their expiry)")
async def schedule_off(site: str, env: str, client: Client, grant: Grant) -> dict[str, Any]:
    await require_site(client, grant, site, "backup")
    schedule = await set_schedule(
        client.pool, client.settings, f"{site}.{env}", enabled=False, by=str(grant.principal)
    )
    return schedule.public(utc_now())
