"""Slot arithmetic: the daily slot in UTC, the weekly one, and missed slots taken once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from envrestore.config.settings import load_settings
from envrestore.pipelines.schedule.slots import (
    DAILY_KEEP_DAYS,
    WEEKLY_KEEP_DAYS,
    due_slot,
    latest_slot,
    next_slot,
    parse_weekday,
    weekday_of,
)

# 2027-01-03 is a Sunday.
SUNDAY = datetime(2027, 1, 3, tzinfo=UTC)


def at(day: int, hour: int, minute: int = 0) -> datetime:
    """Day `day` of January 2027, UTC."""
    return datetime(2027, 1, day, hour, minute, tzinfo=UTC)


def test_weekday_numbers_count_from_sunday() -> None:
    assert weekday_of(SUNDAY) == 0
    assert weekday_of(SUNDAY + timedelta(days=6)) == 6  # Saturday
    assert [parse_weekday(x) for x in ("sun", "Monday", "sat", "0", "6", "7", 3)] == [
        0,
        1,
        6,
        0,
        6,
        0,
        3,
    ]
    for bad in ("8", "-1", "funday", "s", ""):
        with pytest.raises(ValueError):
            parse_weekday(bad)


def test_latest_slot_is_today_at_the_hour_once_it_has_passed() -> None:
    assert latest_slot(at(5, 2), hour=2, weekly_day=0).at == at(5, 2)
    assert latest_slot(at(5, 1, 59), hour=2, weekly_day=0).at == at(4, 2)
    assert latest_slot(at(5, 23, 59), hour=2, weekly_day=0).at == at(5, 2)
    assert next_slot(at(5, 2), hour=2, weekly_day=0).at == at(6, 2)
    assert next_slot(at(5, 1), hour=2, weekly_day=0).at == at(5, 2)


def test_times_in_other_zones_are_the_same_instant() -> None:
    # 03:30 at UTC+2 is 01:30 UTC: the 02:00 UTC slot of that day has not come yet.
    plus_two = datetime(2027, 1, 5, 3, 30, tzinfo=timezone(timedelta(hours=2)))
    assert latest_slot(plus_two, hour=2, weekly_day=0).at == at(4, 2)
    with pytest.raises(ValueError):
        latest_slot(datetime(2027, 1, 5, 3), hour=2, weekly_day=0)


def test_the_daily_slot_on_the_weekly_day_is_weekly_and_kept_32_days() -> None:
    sunday = latest_slot(at(3, 5), hour=2, weekly_day=0)
    monday = latest_slot(at(4, 5), hour=2, weekly_day=0)
    assert (sunday.weekly, sunday.keep_days) == (True, WEEKLY_KEEP_DAYS) == (True, 32)
    assert (monday.weekly, monday.keep_days) == (False, DAILY_KEEP_DAYS) == (False, 8)
    wednesday = latest_slot(at(6, 5), hour=2, weekly_day=parse_weekday("wed"))
    assert wednesday.weekly


def test_a_week_without_a_scheduler_gives_one_slot_not_seven() -> None:
    taken = at(1, 2)
    now = at(8, 14)  # seven slots went by unseen
    slot = due_slot(now, hour=2, weekly_day=0, last_taken=taken)
    assert slot is not None and slot.at == at(8, 2)
    # Taken: nothing more is due that day, however often the scheduler ticks.
    for minutes in range(0, 12 * 60, 7):
        later = now + timedelta(minutes=minutes)
        assert due_slot(later, hour=2, weekly_day=0, last_taken=slot.at) is None
    assert due_slot(at(9, 2), hour=2, weekly_day=0, last_taken=slot.at) is not None


def test_moving_the_hour_later_gives_no_extra_backup_at_once() -> None:
    # Taken at 02:00 today; at 05:00 the hour becomes 10: yesterday's 10:00 is older.
    assert due_slot(at(5, 5), hour=10, weekly_day=0, last_taken=at(5, 2)) is None
    # Moved earlier (10 → 2) after yesterday's 10:00: today's 02:00 is due once.
    slot = due_slot(at(5, 5), hour=2, weekly_day=0, last_taken=at(4, 10))
    assert slot is not None and slot.at == at(5, 2)


def test_moving_the_hour_later_the_same_day_gives_no_second_backup_that_day() -> None:
    # 02:00 taken; at 10:00 the hour becomes 9: today's 09:00 has passed, but the
    # day has its backup already. The next one is tomorrow at 09:00.
    for now in (at(5, 10), at(5, 23, 59)):
        assert due_slot(now, hour=9, weekly_day=0, last_taken=at(5, 2)) is None
    slot = due_slot(at(6, 9), hour=9, weekly_day=0, last_taken=at(5, 2))
    assert slot is not None and slot.at == at(6, 9)


def test_an_environment_added_after_todays_slot_waits_for_the_next_one() -> None:
    assert due_slot(at(5, 9), hour=2, weekly_day=0, last_taken=None, not_before=at(5, 8)) is None
    slot = due_slot(at(6, 2), hour=2, weekly_day=0, last_taken=None, not_before=at(5, 8))
    assert slot is not None and slot.at == at(6, 2)


def test_settings_take_a_weekly_day_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVRESTORE_SCHEDULE_DEFAULT_WEEKLY_DAY", "friday")
    monkeypatch.setenv("ENVRESTORE_SCHEDULE_DEFAULT_HOUR", "23")
    settings = load_settings()
    assert (settings.schedule_default_weekly_day, settings.schedule_default_hour) == (5, 23)
    monkeypatch.setenv("ENVRESTORE_SCHEDULE_DEFAULT_HOUR", "24")
    with pytest.raises(ValueError, match="schedule_default_hour"):
        load_settings()


def test_a_missed_weekly_slot_makes_the_slot_taken_instead_weekly() -> None:
    # Last taken Saturday the 2nd; the scheduler was down over Sunday the 3rd (weekly).
    slot = due_slot(at(5, 9), hour=2, weekly_day=0, last_taken=at(2, 2))
    assert slot is not None and slot.at == at(5, 2) and slot.weekly and slot.keep_days == 32
    # Sunday's was taken: Monday's is a plain daily.
    slot = due_slot(at(4, 9), hour=2, weekly_day=0, last_taken=at(3, 2))
    assert slot is not None and not slot.weekly
    # A first slot ever is what its day makes it.
    assert not due_slot(at(5, 9), hour=2, weekly_day=0, last_taken=None).weekly  # type: ignore[union-attr]
