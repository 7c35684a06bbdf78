"""The ledger side of schedules: each environment's effective schedule, slots taken, set/off."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from envrestore.config.settings import Settings
from envrestore.pipelines.errors import BadInput, NotFound
from envrestore.pipelines.ledger.queries import sql
from envrestore.pipelines.ledger.types import Row
from envrestore.pipelines.registry import check_name, get_environment, parse_target
from envrestore.pipelines.schedule.slots import (
    WEEKDAYS,
    Slot,
    due_slot,
    next_slot,
    parse_hour,
    parse_weekday,
)


@dataclass(frozen=True)
class Schedule:
    """An environment's schedule as in effect: its own values, else the defaults."""

    environment_id: int
    site: str
    env: str
    created_at: datetime
    enabled: bool
    hour: int
    weekly_day: int
    #: Which values are the environment's own (False: the setting's default).
    own_hour: bool
    own_weekly_day: bool
    last_slot: datetime | None
    last_weekly: bool | None
    last_job_id: uuid.UUID | None
    last_error: str | None

    @property
    def target(self) -> str:
        return f"{self.site}.{self.env}"

    @classmethod
    def from_row(cls, row: Row, settings: Settings) -> Schedule:
        return cls(
            environment_id=row["id"],
            site=row["site"],
            env=row["env"],
            created_at=row["created_at"],
            enabled=True if row["enabled"] is None else bool(row["enabled"]),
            hour=settings.schedule_default_hour if row["hour"] is None else int(row["hour"]),
            weekly_day=(
                settings.schedule_default_weekly_day
                if row["weekly_day"] is None
                else int(row["weekly_day"])
            ),
            own_hour=row["hour"] is not None,
            own_weekly_day=row["weekly_day"] is not None,
            last_slot=row["last_slot"],
            last_weekly=row["last_weekly"],
            last_job_id=row["last_job_id"],
            last_error=row["last_error"],
        )

    def due(self, now: datetime) -> Slot | None:
        """The slot to take at `now` (None: off, already taken, or before the environment)."""
        if not self.enabled:
            return None
        return due_slot(
            now,
            hour=self.hour,
            weekly_day=self.weekly_day,
            last_taken=self.last_slot,
            not_before=self.created_at,
        )

    def next(self, now: datetime) -> Slot | None:
        if not self.enabled:
            return None
        return next_slot(now, hour=self.hour, weekly_day=self.weekly_day)

    def public(self, now: datetime) -> dict[str, Any]:
        upcoming = self.next(now)
        return {
            "site": self.site,
            "env": self.env,
            "enabled": self.enabled,
            "hour_utc": self.hour,
            "hour_is_default": not self.own_hour,
            "weekly_day": self.weekly_day,
            "weekly_day_name": WEEKDAYS[self.weekly_day],
            "weekly_day_is_default": not self.own_weekly_day,
            "next_slot": upcoming.at.isoformat() if upcoming else None,
            "next_slot_kind": upcoming.kind if upcoming else None,
            "last_slot": self.last_slot.isoformat() if self.last_slot else None,
            "last_slot_kind": (
                None if self.last_weekly is None else ("weekly" if self.last_weekly else "daily")
            ),
            "last_job_id": str(self.last_job_id) if self.last_job_id else None,
            "last_error": self.last_error,
        }


def _split_filter(selector: str | None) -> tuple[str | None, str | None]:
    if not selector:
        return None, None
    if "." in selector:
        return parse_target(selector)
    return check_name("site", selector), None


async def list_schedules(
    pool: asyncpg.Pool | asyncpg.Connection, settings: Settings, selector: str | None = None
) -> list[Schedule]:
    """Effective schedules of every environment, of one site (`SITE`), or one (`SITE.ENV`)."""
    site, env = _split_filter(selector)
    rows = await pool.fetch(sql("schedule_targets"), site, env)
    if not rows and site is not None:
        if env is not None:
            await get_environment(pool, f"{site}.{env}")  # NotFound, with its message
        elif await pool.fetchrow(sql("get_site"), site) is None:
            raise NotFound(f"site {site!r} does not exist", site=site)
    return [Schedule.from_row(row, settings) for row in rows]


async def get_schedule(pool: asyncpg.Pool, settings: Settings, target: str) -> Schedule:
    """One environment's schedule; NotFound (with the usual message) if it does not exist."""
    environment = await get_environment(pool, target)
    found = await list_schedules(pool, settings, environment.target)
    return found[0]


async def set_schedule(
    pool: asyncpg.Pool,
    settings: Settings,
    target: str,
    *,
    hour: int | None = None,
    weekly_day: str | int | None = None,
    enabled: bool = True,
    by: str | None = None,
) -> Schedule:
    """Turn a schedule on (hour and weekly day: given, else stored, else the defaults), or off."""
    try:
        hour_value = None if hour is None else parse_hour(hour)
        day_value = None if weekly_day is None else parse_weekday(weekly_day)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    environment = await get_environment(pool, target)
    await pool.execute(sql("schedule_set"), environment.id, enabled, hour_value, day_value, by)
    return await get_schedule(pool, settings, target)


async def slots_of(pool: asyncpg.Pool, environment_id: int) -> list[Row]:
    """Every slot taken for an environment, oldest first (tests, audits)."""
    return list(await pool.fetch(sql("schedule_slots_of"), environment_id))
