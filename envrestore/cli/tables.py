"""Tables whose ID columns are never cut, at any terminal width.

An operator copies IDs out of `job list`, `env list` or `backup list` into the
next command, so an ID shown as `70611463-683d-…` is worse than no table at
all. ID columns are `no_wrap` with their full width reserved; the other
columns fold (wrap, never an ellipsis) into what is left. When even that
leaves too little room (a very narrow terminal), each row is printed as a
record instead: its IDs first, whole, on their own lines, then the rest.

Cells are plain text, never rich markup: ledger values may hold `[...]`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from datetime import UTC, datetime

from rich.console import Console
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

#: Below this many columns for each other column, a table is unreadable: records instead.
MIN_OTHER_WIDTH = 8
#: What the default box adds per column (a border and one space of padding each side).
_PER_COLUMN = 3

Cell = str | Text | None


def when(value: datetime | str | None) -> str:
    """A time as tables show it, `2026-12-03 02:00` in UTC; "" for none.

    Takes a datetime or the ISO text a `--json` view holds (an aware one either way).
    """
    if not value:
        return ""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def _text(value: Cell) -> Text:
    if isinstance(value, Text):
        return value
    return Text("" if value is None else str(value))


def print_table(
    console: Console,
    headers: Sequence[str],
    rows: Iterable[Sequence[Cell]],
    *,
    ids: Collection[str] = ("id",),
) -> None:
    """Print rows under headers; the columns named in `ids` are always whole.

    Use it for every listing that shows an ID (jobs, environments, backups,
    rollback points), so all commands behave the same at 80 columns.
    """
    cells = [[_text(c) for c in row] for row in rows]
    id_index = [i for i, h in enumerate(headers) if h in ids]
    id_widths = {
        i: max([len(headers[i])] + [cells_row[i].cell_len for cells_row in cells]) for i in id_index
    }
    others = len(headers) - len(id_index)
    needed = sum(id_widths.values()) + others * MIN_OTHER_WIDTH + _PER_COLUMN * len(headers) + 1
    if needed > console.width:
        _print_records(console, headers, cells, id_index)
        return
    table = Table()
    for i, header in enumerate(headers):
        if i in id_widths:
            table.add_column(header, no_wrap=True, min_width=id_widths[i])
        else:
            table.add_column(header, overflow="fold")
    for row in cells:
        table.add_row(*row)
    console.print(table)


def _print_records(
    console: Console, headers: Sequence[str], cells: list[list[Text]], id_index: list[int]
) -> None:
    """One record per row: `header: ID` lines first (never wrapped), then the others indented."""
    for n, row in enumerate(cells):
        if n:
            console.print()
        for i in id_index:
            console.print(Text.assemble(f"{headers[i]}: ", row[i]), soft_wrap=True)
        for i, header in enumerate(headers):
            if i not in id_index and row[i].plain:
                line = Text.assemble(f"{header}: ", row[i], overflow="fold")
                console.print(Padding(line, (0, 0, 0, 2), expand=False))
