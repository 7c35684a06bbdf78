"""No false success: empty and truncated dumps are refused at their end, both engines."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from envrestore.pipelines.errors import UnsafeInput
from envrestore.pipelines.sqlsafety import FilterReport, filter_dump

MARIADB = (
    b"-- MariaDB dump 10.19  Distrib 10.11.19-MariaDB\n"
    b"CREATE TABLE `t` (`id` int);\n"
    b"INSERT INTO `t` VALUES (1),(2);\n"
    b"/*!40111 SET SQL_NOTES=@OLD_SQL_NOTES */;\n\n"
    b"-- Dump completed on 2026-12-01 23:00:53\n"
)
POSTGRES = (
    b"--\n-- PostgreSQL database dump\n--\n\n"
    b"\\restrict abc123\n\n"
    b"CREATE TABLE public.t (\n    id integer\n);\n"
    b"COPY public.t (id) FROM stdin;\n1\n2\n\\.\n\n"
    b"--\n-- PostgreSQL database dump complete\n--\n\n"
    b"\\unrestrict abc123\n\n"
)
DUMPS = {"mariadb": MARIADB, "postgresql": POSTGRES}


async def _chunks(data: bytes, size: int = 7) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def _run(engine: str, data: bytes, **options: bool) -> FilterReport:
    report = FilterReport()
    async for _ in filter_dump(
        _chunks(data), engine=engine, report=report, require_complete=True, **options
    ):
        pass
    return report


@pytest.mark.parametrize("engine", ["mariadb", "postgresql"])
async def test_a_complete_dump_passes(engine):
    report = await _run(engine, DUMPS[engine])
    assert not any("closing" in note for note in report.normalised)


@pytest.mark.parametrize("engine", ["mariadb", "postgresql"])
@pytest.mark.parametrize("data", [b"", b"\n\n", b"-- nothing here\n-- Dump completed\n"])
async def test_an_empty_dump_is_refused(engine, data):
    with pytest.raises(UnsafeInput, match="creates no table") as caught:
        await _run(engine, data)
    assert caught.value.data["problem"] == "no_table"


@pytest.mark.parametrize("engine", ["mariadb", "postgresql"])
async def test_a_truncated_dump_is_refused_unless_allowed(engine):
    data = DUMPS[engine]
    cut = data[
        : data.index(b"2)") if engine == "mariadb" else data.index(b"\n2\n")
    ]  # the data half there, the trailer missing
    with pytest.raises(UnsafeInput, match="truncated") as caught:
        await _run(engine, cut)
    assert caught.value.data["problem"] == "truncated"
    assert "--allow-incomplete-dump" in str(caught.value)
    report = await _run(engine, cut, allow_incomplete=True)
    assert any("--allow-incomplete-dump" in note for note in report.normalised)


async def test_a_create_table_inside_a_comment_line_does_not_count():
    with pytest.raises(UnsafeInput, match="creates no table"):
        await _run("mariadb", b"-- CREATE TABLE t (i int);\n-- Dump completed\n")


async def test_the_other_engines_trailer_does_not_count():
    with pytest.raises(UnsafeInput, match="truncated"):
        await _run("postgresql", b"CREATE TABLE t (i int);\n-- Dump completed on 2026\n")
