"""Tables at any terminal width: an ID is printed whole, on one line, or the table gives way."""

from __future__ import annotations

import uuid

import pytest
from rich.console import Console

from envrestore.cli.tables import print_table, when

HEADERS = ["id", "kind", "target", "status", "created_at", "error"]


def _rows(n: int = 3) -> list[tuple[str, ...]]:
    return [
        (
            str(uuid.uuid4()),
            "restore",
            "a-rather-long-site-name.live",
            "failed",
            "2026-12-02T06:01:04.123456+00:00",
            "import_db failed: a [bold]long[/bold] error that goes on " * 3,
        )
        for _ in range(n)
    ]


def _render(width: int, rows: list[tuple[str, ...]], **kwargs: object) -> str:
    console = Console(width=width, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    print_table(console, HEADERS, rows, **kwargs)  # type: ignore[arg-type]
    return console.export_text()


@pytest.mark.parametrize("width", [30, 50, 80, 100, 200])
def test_every_id_is_whole_on_one_line_at_any_width(width: int):
    rows = _rows()
    text = _render(width, rows)
    lines = text.splitlines()
    for row in rows:
        assert any(row[0] in line for line in lines), (width, row[0], text)
    # Values are never read as markup (it would swallow "[bold]"), nor cut with an ellipsis.
    assert "bold" in text
    assert "…" not in text


def test_at_80_columns_the_other_columns_give_way_not_the_id():
    rows = _rows(1)
    text = _render(80, rows)
    assert rows[0][0] in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_several_id_columns_are_all_kept():
    headers = ["id", "job_id", "note"]
    rows = [(str(uuid.uuid4()), str(uuid.uuid4()), "x" * 50)]
    console = Console(width=80, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    print_table(console, headers, rows, ids=("id", "job_id"))
    text = console.export_text()
    assert rows[0][0] in text and rows[0][1] in text


def test_times_show_in_utc_to_the_minute_whether_given_as_datetime_or_iso_text():
    from datetime import UTC, datetime, timedelta, timezone

    moment = datetime(2026, 12, 3, 2, 0, 41, tzinfo=UTC)
    paris = moment.astimezone(timezone(timedelta(hours=1)))
    assert when(moment) == when(paris) == when(paris.isoformat()) == "2026-12-03 02:00"
    assert when(None) == when("") == ""
