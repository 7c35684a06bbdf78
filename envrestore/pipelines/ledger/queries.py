"""Named SQL blocks (`-- name: x`) from `sql/queries.sql`, loaded once.

SQL lives in .sql files, never assembled from strings: a query is looked up
by name, and a typo in a name fails loudly at the call.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def parse_named_blocks(text: str) -> dict[str, str]:
    """Split SQL text into {name: statement} on `-- name:` markers."""
    blocks: dict[str, str] = {}
    matches = list(_NAME.finditer(text))
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        body = text[match.end() : end].strip()
        name = match.group(1)
        if name in blocks:
            raise ValueError(f"SQL block {name!r} is defined twice")
        blocks[name] = body
    return blocks


@cache
def _all() -> dict[str, str]:
    text = (
        resources.files("envrestore.pipelines.ledger")
        .joinpath("sql/queries.sql")
        .read_text("utf-8")
    )
    return parse_named_blocks(text)


def sql(name: str) -> str:
    """The statement named `name`."""
    try:
        return _all()[name]
    except KeyError:
        raise KeyError(f"no SQL block named {name!r} in queries.sql") from None
