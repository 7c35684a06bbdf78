"""Slot arithmetic: when an environment's daily backup is due, and which one is weekly.

All in UTC, so there is no daylight-saving gap or repeat: a slot is
`hour:00:00Z` on each day. The daily taken on the weekly day is the weekly
backup and is kept longer, as Pantheon keeps them. Pure functions of a clock
value, so tests can walk through weeks in microseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

#: Pantheon's retention: dailies 8 days, the weekly one 32 days.
DAILY_KEEP_DAYS = 8
WEEKLY_KEEP_DAYS = 32

#: 0 = Sunday … 6 = Saturday, as cron and PostgreSQL's `dow` count.
WEEKDAYS = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")


def parse_weekday(value: str | int) -> int:
    """`0`-`6` (0 = Sunday, 7 is Sunday too), or a day's name or its first three letters."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        text = str(value).strip().lower()
        if not text.isdigit():
            for index, name in enumerate(WEEKDAYS):
                if len(text) >= 3 and name.startswith(text):
                    return index
            raise ValueError(
                f"weekly day {value!r} is not a day: use 0-6 (0 = Sunday) or a name such as "
                "sunday or sun"
            )
        number = int(text)
    if number == 7:
        return 0
    if not 0 <= number <= 6:
        raise ValueError(f"weekly day {value!r} is not 0-6 (0 = Sunday)")
    return number


def parse_hour(value: int) -> int:
    if not 0 <= value <= 23:
        raise ValueError(f"hour {value} is not 0-23 (UTC)")
    return value


def weekday_of(moment: datetime) -> int:
    """0 = Sunday … 6 = Saturday."""
    return (moment.weekday() + 1) % 7


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("slot times are aware datetimes (UTC)")
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class Slot:
    """One daily backup time of an environment; `weekly` when it falls on the weekly day."""

    at: datetime
    weekly: bool

    @property
    def keep_days(self) -> int:
        return WEEKLY_KEEP_DAYS if self.weekly else DAILY_KEEP_DAYS

    @property
    def kind(self) -> str:
        return "weekly" if self.weekly else "daily"


def _slot(at: datetime, weekly_day: int) -> Slot:
    return Slot(at, weekday_of(at) == weekly_day)


def latest_slot(now: datetime, *, hour: int, weekly_day: int) -> Slot:
    """The most recent slot at or before `now`: the one a scheduler takes now.

    Slots missed while no scheduler ran are never listed: only this one is due,
    so a week without a scheduler gives one backup, not seven.
    """
    now = _utc(now)
    today = now.replace(hour=hour, minute=0, second=0, microsecond=0)
    at = today if today <= now else today - timedelta(days=1)
    return _slot(at, weekly_day)


def next_slot(now: datetime, *, hour: int, weekly_day: int) -> Slot:
    """The first slot strictly after `now`."""
    return _slot(
        latest_slot(now, hour=hour, weekly_day=weekly_day).at + timedelta(days=1), weekly_day
    )


def due_slot(
    now: datetime,
    *,
    hour: int,
    weekly_day: int,
    last_taken: datetime | None,
    not_before: datetime | None = None,
) -> Slot | None:
    """The slot to take now, if any.

    The latest slot is due unless a slot was taken already on its UTC day or
    later: one scheduled backup per day, so a schedule moved to a later hour
    (02:00 taken, 09:00 now) gives no second backup that day; or
    it lies before `not_before` (an environment added after today's slot gets
    its first backup at the next one, not the moment it is registered). When
    the week's weekly slot was among those missed, the slot taken is weekly.
    """
    slot = latest_slot(now, hour=hour, weekly_day=weekly_day)
    if last_taken is not None and _utc(last_taken).date() >= slot.at.date():
        return None
    if not_before is not None and slot.at < _utc(not_before):
        return None
    if not slot.weekly and last_taken is not None:
        # The week's weekly slot went by untaken (no scheduler ran then): this
        # one stands in for it, so the week still has a backup kept 32 days.
        back = (weekday_of(slot.at) - weekly_day) % 7
        if slot.at - timedelta(days=back) > _utc(last_taken):
            return Slot(slot.at, True)
    return slot
