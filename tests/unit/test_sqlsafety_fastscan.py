"""The filter's fast scans (INSERT rows, COPY blocks): the C module and its Python twin
read every edge the same way, and the filter built on them is fooled by neither."""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator, Callable

import pytest

from envrestore.pipelines.errors import UnsafeInput
from envrestore.pipelines.sqlsafety import FilterReport, fastscan, filter_dump
from envrestore.pipelines.sqlsafety import mariadb as mariadb_filter
from envrestore.pipelines.sqlsafety import postgres as postgres_filter

try:
    from envrestore.pipelines.sqlsafety import _fastscan  # type: ignore[attr-defined]
except ImportError:  # the module is built at install; without it only the twin is tested
    _fastscan = None

#: Under CI the C scans must be there (the untrusted-input tests run with every fast
#: path on): their tests fail rather than skip when the build left them out.
_MISSING = _fastscan is None and os.environ.get("CI", "").lower() != "true"

NATIVE = pytest.param(
    "native",
    marks=pytest.mark.skipif(_MISSING, reason="_fastscan not built (build_native.py)"),
)


def _rows_tail(kind: str) -> Callable[[bytes, int], int]:
    return fastscan.rows_tail_py if kind == "python" else _fastscan.rows_tail


def _rows_span(kind: str) -> Callable[[bytes, int], tuple[int, int, int]]:
    return fastscan.rows_span_py if kind == "python" else _fastscan.rows_span


def _copy_end(kind: str) -> Callable[[bytes, int], tuple[int, int]]:
    return fastscan.copy_end_py if kind == "python" else _fastscan.copy_end


@pytest.fixture(params=["python", NATIVE])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["python", NATIVE])
def both_paths(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a filter test once with the Python scans and once with the C ones."""
    kind = str(request.param)
    monkeypatch.setattr(mariadb_filter, "rows_tail", _rows_tail(kind))
    monkeypatch.setattr(mariadb_filter, "rows_span", _rows_span(kind))
    monkeypatch.setattr(postgres_filter, "copy_end", _copy_end(kind))
    return kind


def test_the_installed_filter_uses_the_c_scans_when_built():
    assert fastscan.NATIVE is (_fastscan is not None)
    if _fastscan is not None:
        assert mariadb_filter.rows_tail is _fastscan.rows_tail
        assert mariadb_filter.rows_span is _fastscan.rows_span
        assert postgres_filter.copy_end is _fastscan.copy_end


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        (b"(1,'a'),(2,'b');\n", 1),
        (b"(1,'a'),(2,'b');", 1),
        (b"(1,'a'),(2,'b'); \t\r\n", 1),
        (b"(1,'a'),\n", 0),
        (b"", 0),
        (b"(1,NULL,0x00FF,-1.5e+3,'x')", 0),
        (b"(1,'it\\'s; GRANT ALL ON *.* TO x');\n", 1),  # an escaped quote stays data
        (b"(1,'it''s; GRANT');\n", 1),  # a doubled quote too
        (b"(1,'a''\\' '),(2,'b');\n", 1),  # '' and \' both: `a'' ` is one literal
        (b"(1,'a''\\'');DROP TABLE x;\n", -1),  # and the DROP after it is code
        (b"(1,'a\\\\');\n", 1),  # an escaped backslash, then the closing quote
        (b"(1,'a\\\\\\');\n", -1),  # escaped backslash, escaped quote: still inside
        (b"(1,'a\\", -1),  # a backslash at the very end: inside the literal
        (b"(1,'a\\\n", -1),  # a backslash escaping the line break
        (b"(1,'unterminated\n", -1),
        (b"(1,'a\0b\x1b');\n", 1),  # raw bytes inside literals are data
        (b"(1);DROP TABLE x;\n", -1),  # a second statement after the `;`
        (b"(1);'x';\n", -1),
        (b"(1);;\n", -1),
        (b"(1)-- x\n", -1),  # a comment could hide the statement's end
        (b"(1,- -1)\n", 0),
        (b"(1,'a')-'b'-(2)\n", 0),
        (b"(1)# x\n", -1),
        (b"(1)/*x*/\n", -1),
        (b'(1,"a");\n', -1),  # double quotes are for the full check
        (b"(1,`a`);\n", -1),
        (b"(1,\\N);\n", -1),  # a backslash outside literals
        (b"(1,SLEEP(5));\n", -1),
        (b"(1,\0);\n", -1),
        (b"(1,'a'),(2,'b'\\');\n", -1),
        # Words: only NULL, 0x hex, numbers and b/x before a quote; never a name.
        (b"(1,NULL,0x00FF,1.5e-05,1E20,-0.25,b'101',X'0A');\n", 1),
        (b"(dead.beef(1));\n", -1),  # a routine in another database
        (b"(fade.cab (1));\n", -1),
        (b"(abc)\n", -1),
        (b"(0xfe.ed)\n", -1),
        (b"(1.5.5)\n", -1),
        (b"(1.)\n", -1),
        (b"(.5)\n", -1),
        (b"(1e)\n", -1),
        (b"(1e+)\n", -1),
        (b"(0x)\n", -1),
        (b"(NULLNULL)\n", -1),
        (b"(null)\n", -1),
        (b"(b 'a')\n", -1),
        (b"(1_a)\n", -1),
    ],
)
def test_rows_tail_reads_literals_like_the_client(kind: str, rows: bytes, expected: int):
    prefix = b"INSERT INTO `t` VALUES "
    assert _rows_tail(kind)(prefix + rows, len(prefix)) == expected


def test_rows_tail_survives_long_runs_of_escapes(kind: str):
    body = b"(1,'" + b"\\'" * 200_000 + b"\\\\" * 200_000 + b"');\n"
    assert _rows_tail(kind)(body, 0) == 1
    assert _rows_tail(kind)(body[:-4], 0) == -1


@pytest.mark.parametrize(
    ("data", "start", "expected"),
    [
        (b"1\ta\n2\tb\n\\.\nSELECT 1;\n", 0, (11, 3)),
        (b"1\ta\n\\.\r\nX\n", 0, (8, 2)),
        (b"1\ta\n\\.", 0, (6, 1)),  # the end line as the stream's unterminated last line
        (b"1\ta\\.\n\\.x\n \\.\n\\.\r", 0, (-1, 3)),  # none of these is the end line
        (b"", 0, (-1, 0)),
        (b"x\n\\.\n1\n\\.\n", 5, (10, 2)),
        (b"\\.\n", 0, (3, 1)),
    ],
)
def test_copy_end_finds_psqls_end_of_data_line(
    kind: str, data: bytes, start: int, expected: tuple[int, int]
):
    assert _copy_end(kind)(data, start) == expected


async def _chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]


async def _run(data: bytes, engine: str, size: int) -> bytes:
    report = FilterReport()
    out = filter_dump(_chunked(data, size), engine=engine, report=report)  # type: ignore[arg-type]
    return b"".join([chunk async for chunk in out])


# ~1.3 MB of rows with escaped quotes and backslashes: the line spans chunks.
LONG_ROWS = b",".join(b"(%d,'%s')" % (i, b"x\\'y\\\\" * 40) for i in range(3_500))
SIZES = [7, 4096, 1 << 20]


@pytest.mark.parametrize("size", SIZES)
async def test_a_statement_after_a_long_insert_is_still_checked(both_paths: str, size: int):
    dump = b"INSERT INTO `t` VALUES " + LONG_ROWS + b";GRANT ALL ON *.* TO x;\n"
    with pytest.raises(UnsafeInput) as info:
        await _run(dump, "mariadb", size)
    assert info.value.data["problem"] == "grant"


@pytest.mark.parametrize("size", SIZES)
async def test_a_literal_across_lines_hides_nothing_after_it_closes(both_paths: str, size: int):
    # The literal holds a line break after an escaped backslash: the client reads on
    # inside the literal, so the next line's GRANT is data, but the one after the
    # literal closes is a statement.
    data = b"INSERT INTO `t` VALUES " + LONG_ROWS + b",(1,'a\\\\\nGRANT ALL ON *.* TO y;');\n"
    assert await _run(data, "mariadb", size) == data
    attack = data.replace(b"');\n", b"'); GRANT ALL ON *.* TO z;\n")
    with pytest.raises(UnsafeInput) as info:
        await _run(attack, "mariadb", size)
    assert info.value.data["problem"] == "grant"


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
@pytest.mark.parametrize("quote", [b"'", b'"'])
async def test_a_backslash_escaping_a_line_end_in_a_literal_is_refused(
    both_paths: str, size: int, eol: bytes, quote: bytes
):
    # mariadb --binary-mode joins the lines: the backslash then escapes the next
    # line's quote, and the DELETE after it runs (found by the parallel-import work).
    data = (
        b"INSERT INTO `t` VALUES "
        + LONG_ROWS
        + b",(1,"
        + quote
        + b"ab\\\\\\"
        + eol
        + quote
        + b" , "
        + quote
        + b" ); DELETE FROM `live`.`wp_options`; -- "
        + quote
        + b" );\n"
    )
    with pytest.raises(UnsafeInput) as info:
        await _run(data, "mariadb", size)
    assert info.value.data["problem"] == "backslash_line_end"
    assert info.value.data["line"] == 1


@pytest.mark.parametrize("size", SIZES)
async def test_an_escaped_backslash_at_a_chunk_end_closes_the_literal(both_paths: str, size: int):
    head = b"INSERT INTO `t` VALUES " + LONG_ROWS + b",(2,'"
    pad = b"p" * (-(len(head) + 2) % 4096)  # puts `\\` right at a 4096-byte chunk end
    dump = head + pad + b"\\\\');\nGRANT ALL ON *.* TO x;\n"
    with pytest.raises(UnsafeInput) as info:
        await _run(dump, "mariadb", size)
    assert info.value.data["problem"] == "grant"


@pytest.mark.parametrize("size", SIZES)
async def test_copy_data_ends_only_at_psqls_end_line(both_paths: str, size: int):
    rows = b"".join(b"%d\tx\\.y \\\\. \\.\n" % i for i in range(30_000))
    dump = b"COPY public.t (id, s) FROM stdin;\n" + rows + b"\\.\n\\! id\n"
    with pytest.raises(UnsafeInput) as info:
        await _run(dump, "postgresql", size)
    assert info.value.data["problem"] == "psql_meta"
    assert info.value.data["line"] == 30_003
    clean = dump.replace(b"\\! id\n", b"SELECT pg_catalog.setval('public.s', 1, true);\n")
    assert await _run(clean, "postgresql", size) == clean


def _one_row_per_line(rows: int) -> bytes:
    """mariadb-dump 10.11's layout: the INSERT head alone, then one row per line."""
    lines = [b"(%d,'r\\'%d\\\\',NULL,0x0F)," % (i, i) for i in range(rows)]
    return b"INSERT INTO `t` VALUES\n" + b"\n".join(lines)[:-1] + b";\n"


@pytest.mark.parametrize("size", SIZES)
async def test_rows_one_per_line_pass_and_what_follows_them_is_checked(both_paths: str, size: int):
    rows = _one_row_per_line(10_000)
    clean = rows + b"UNLOCK TABLES;\n" + rows
    assert await _run(clean, "mariadb", size) == clean
    for tail, line in [
        (b"GRANT ALL ON *.* TO x;\n", 10_002),  # the line after the statement's end
        (b"", 10_001),  # on the line of the `;` itself
    ]:
        attack = rows[:-1] + (b" " if tail else b"; GRANT ALL ON *.* TO x;") + b"\n" + tail
        with pytest.raises(UnsafeInput) as info:
            await _run(attack, "mariadb", size)
        assert (info.value.data["problem"], info.value.data["line"]) == ("grant", line)


@pytest.mark.parametrize("size", SIZES)
async def test_a_literal_over_rows_lines_is_read_to_its_end(both_paths: str, size: int):
    rows = _one_row_per_line(20_000)
    data = rows.replace(b"(777,", b"(777,'x\n\\\\\nGRANT ALL ON *.* TO y;\n',", 1)
    assert await _run(data, "mariadb", size) == data
    attack = rows.replace(
        b"(777,", b"(777,'x\n'); GRANT ALL ON *.* TO y; INSERT INTO t VALUES (777,", 1
    )
    with pytest.raises(UnsafeInput) as info:
        await _run(attack, "mariadb", size)
    assert (info.value.data["problem"], info.value.data["line"]) == ("grant", 780)


def test_rows_span_stops_where_the_line_check_must_go_on(kind: str):
    span = fastscan.rows_span_py if kind == "python" else _fastscan.rows_span
    data = b"(1,'a'),\n(2,'b'),\n(3,\"c\"),\n(4,'d');\nGRANT x;\n"
    assert span(data, 0) == (-1, 18, 2)  # the double-quoted literal: line by line from there
    assert span(data, 27) == (1, 36, 1)  # the row that ends the statement, and no further
    assert span(data, 36) == (-1, 36, 0)
    assert span(b"(1,'a\n'),\n", 0) == (-1, 0, 0)  # a literal across lines: the slow path
    assert span(b"(1,'a'),\n(2,", 0) == (0, 12, 1)


@pytest.mark.skipif(_MISSING, reason="_fastscan not built (build_native.py)")
def test_the_c_scans_and_their_twins_agree_on_random_words():
    """The same over what rows words are made of (numbers, NULL, hex, b'', names)."""
    rng = random.Random(12)
    alphabet = b"''\\;\n -+(),0123xXbBeENUL.a_$\xc3"
    for _ in range(50_000):
        data = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 16)))
        start = rng.randrange(0, len(data) + 1)
        assert _fastscan.rows_tail(data, start) == fastscan.rows_tail_py(data, start), data
        assert _fastscan.rows_span(data, start) == fastscan.rows_span_py(data, start), data


@pytest.mark.skipif(_MISSING, reason="_fastscan not built (build_native.py)")
def test_the_c_scans_and_their_twins_agree_on_random_input():
    """Differential check over the characters that matter (quotes, escapes, `;`,
    line breaks, comment starts): any disagreement is a way to fool one of them."""
    rng = random.Random(11)
    alphabet = b"''''\\\\\\;;\n\n\r -(),1aNx\"#/.\\."
    for _ in range(20_000):
        data = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 24)))
        start = rng.randrange(0, len(data) + 1)
        assert _fastscan.rows_tail(data, start) == fastscan.rows_tail_py(data, start), data
        assert _fastscan.rows_span(data, start) == fastscan.rows_span_py(data, start), data
        line = data.rfind(b"\n", 0, start) + 1  # copy_end starts at a line start
        assert _fastscan.copy_end(data, line) == fastscan.copy_end_py(data, line), data
