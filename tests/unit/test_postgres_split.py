"""The parallel PostgreSQL import's splitter, on real pg_dump 15 output (no server).

`pg_dump_15_sample.sql` is pg_dump's plain output of a scratch database: a
function, a trigger, two serial tables with a FK, a partitioned table with a
PK and an index, a comment on an index, and pg_dump's `\\restrict` lines.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from envrestore.pipelines.engines import postgres_split
from envrestore.pipelines.engines.postgres_split import (
    import_stream,
    resolve_connections,
)
from envrestore.pipelines.engines.psql_lexer import copy_end, looks_like_pg_dump, scan_line
from envrestore.pipelines.errors import BadInput, UnsafeInput

SAMPLE = (Path(__file__).parent / "pg_dump_15_sample.sql").read_bytes()
#: Statements every session gets (replayed settings).
SETTING = re.compile(rb"^(?:SET |SELECT pg_catalog\.set_config|\\)")


class Recorder:
    """Stands in for psql: records what each session was sent, in start order."""

    def __init__(self, fail_on: bytes | None = None) -> None:
        self.inputs: list[bytearray] = []
        self.cancelled = 0
        self.fail_on = fail_on

    async def launch(self, chunks: AsyncIterator[bytes]) -> str:
        received = bytearray()
        self.inputs.append(received)
        try:
            async for chunk in chunks:
                received += chunk
                if self.fail_on is not None and self.fail_on in received:
                    raise RuntimeError("psql: ERROR: the session failed")
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return ""


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]
        await asyncio.sleep(0)


async def _split(data: bytes, connections: int, size: int = 1 << 16) -> tuple[Recorder, list]:
    recorder = Recorder()
    stages = await import_stream(_chunks(data, size), connections, recorder.launch)
    return recorder, stages


def _statements(session: bytes) -> list[bytes]:
    """A session's input as statements and COPY rows (comments and blank lines left out)."""
    items: list[bytes] = []
    current: list[bytes] = []
    in_copy = False
    for line in session.split(b"\n"):
        if in_copy:
            in_copy = line != b"\\."
            if in_copy:
                items.append(line)
            continue
        if not current and (not line.strip() or line.startswith(b"--")):
            continue
        current.append(line)
        if line.rstrip().endswith(b";") or line.startswith(b"\\"):
            statement = b"\n".join(current).strip()
            in_copy = statement.startswith(b"COPY ")
            items.append(statement)
            current = []
    return items


def _copy_rows(sessions: list[bytearray], table: bytes) -> list[bytes]:
    rows: list[bytes] = []
    header = b"COPY " + table + b" "
    for session in sessions:
        for block in re.findall(rb"(?ms)^" + re.escape(header) + rb".*?;\n(.*?)^\\\.\n", session):
            rows += block.splitlines()
    return rows


async def test_the_sample_runs_in_four_stages_and_every_statement_once():
    recorder, stages = await _split(SAMPLE, 2)
    assert stages == [("pre", 1), ("data", 2), ("post", 2), ("serial", 1)]
    pre, data_a, data_b, post_a, post_b, serial = (bytes(s) for s in recorder.inputs)
    assert b"CREATE TABLE public.child" in pre and b"COPY" not in pre
    # Tables spread over both data sessions, indexes and PK/unique over both post ones.
    assert b"COPY public.child" in data_a + data_b and b"COPY public.parent" in data_a + data_b
    assert b"COPY" in data_a and b"COPY" in data_b
    assert b"ADD CONSTRAINT child_pkey PRIMARY KEY" in post_a + post_b
    assert b"CREATE INDEX child_parent" in post_a + post_b
    assert b"ADD CONSTRAINT" in post_a and b"ADD CONSTRAINT" in post_b
    # After every index: the comment, the attaches, the trigger, the FK, in dump order.
    order = [
        b"COMMENT ON INDEX public.child_parent",
        b"ALTER INDEX public.p_a ATTACH PARTITION",
        b"CREATE TRIGGER child_touch",
        b"FOREIGN KEY (parent_id)",
    ]
    assert [serial.find(text) for text in order] == sorted(serial.find(t) for t in order)
    assert all(serial.find(text) >= 0 for text in order)
    # Nothing lost or doubled, settings aside.
    setting = SETTING
    ran = [
        statement
        for session in recorder.inputs
        for statement in _statements(bytes(session))
        if not setting.match(statement)
    ]
    expected = [s for s in _statements(SAMPLE) if not setting.match(s)]
    assert sorted(ran) == sorted(expected)


async def test_every_session_starts_with_the_dumps_session_settings():
    recorder, _ = await _split(SAMPLE, 3)
    restrict = re.search(rb"^\\restrict \S+\n", SAMPLE, re.M)
    assert restrict is not None
    for session in recorder.inputs:
        head = bytes(session[:2000])
        assert head.startswith(restrict.group())
        for setting in (
            b"SET client_encoding = 'UTF8';",
            b"SET standard_conforming_strings = on;",
            b"SELECT pg_catalog.set_config('search_path', '', false);",
            b"SET check_function_bodies = false;",
        ):
            assert setting in head
    # Sessions started after `SET default_tablespace` (the CREATE TABLEs) get it too.
    assert all(b"SET default_tablespace = '';" in bytes(s) for s in recorder.inputs[1:])


async def test_a_big_table_is_cut_into_re_headed_copy_blocks_over_the_sessions(monkeypatch):
    monkeypatch.setattr(postgres_split, "PIECE_BYTES", 64)
    recorder, stages = await _split(SAMPLE, 3, size=37)
    assert stages[1] == ("data", 3)
    data = [bytes(s) for s in recorder.inputs[1:4]]
    heads = [s.count(b"COPY public.child (id, parent_id, body) FROM stdin;\n") for s in data]
    assert sum(heads) >= 4 and all(heads)  # several pieces, on every session
    for session in data:
        # Each piece ends with psql's end marker before anything else starts.
        assert session.count(b"FROM stdin;\n") == session.count(b"\n\\.\n")
    original = _copy_rows([bytearray(SAMPLE)], b"public.child")
    assert len(original) == 20
    assert sorted(_copy_rows(recorder.inputs, b"public.child")) == sorted(original)


@pytest.mark.parametrize("size", [1, 7, 4096])
async def test_any_chunking_gives_the_same_statements(size):
    one, _ = await _split(SAMPLE, 2)
    other, stages = await _split(SAMPLE, 2, size=size)
    assert stages == [("pre", 1), ("data", 2), ("post", 2), ("serial", 1)]
    assert sorted(s for x in other.inputs for s in _statements(bytes(x))) == sorted(
        s for x in one.inputs for s in _statements(bytes(x))
    )


async def test_one_connection_or_an_unknown_shape_is_fed_as_it_is():
    recorder, stages = await _split(SAMPLE, 1)
    assert stages == [("single", 1)] and bytes(recorder.inputs[0]) == SAMPLE
    other = b"CREATE TABLE t (a int);\nCOPY t (a) FROM stdin;\n1\n\\.\nCREATE INDEX i ON t (a);\n"
    recorder, stages = await _split(other, 3)
    assert stages == [("single", 1)] and bytes(recorder.inputs[0]) == other


async def test_copy_text_inside_a_function_body_is_not_a_copy():
    """The splitter reads quotes as psql does: a body holding COPY, `\\.` and SQL is one
    statement on the pre-data session, never data or statements for another session."""
    body = (
        b"CREATE FUNCTION public.f() RETURNS int LANGUAGE sql AS $x$\n"
        b"COPY public.child (id) FROM stdin;\n\\.\nSELECT 1; $y$ ' \" /*\n$x$;\n"
        b"CREATE FUNCTION public.g() RETURNS text LANGUAGE sql AS E'\n"
        b"x\\';\nCOPY public.child (id) FROM stdin;\n';\n"
    )
    dump = SAMPLE.replace(
        b"SET default_tablespace = '';\n", body + b"SET default_tablespace = '';\n"
    )
    recorder, stages = await _split(dump, 2)
    assert stages == [("pre", 1), ("data", 2), ("post", 2), ("serial", 1)]
    assert body in bytes(recorder.inputs[0])
    assert all(b"$x$" not in bytes(s) for s in recorder.inputs[1:])


async def test_a_session_failure_stops_every_session():
    recorder = Recorder(fail_on=b"CREATE INDEX")
    with pytest.raises(RuntimeError, match="the session failed"):
        await import_stream(_chunks(SAMPLE, 64), 2, recorder.launch)
    assert not any(b"CREATE TRIGGER" in bytes(s) for s in recorder.inputs)


async def test_a_refusal_mid_stream_stops_every_session():
    async def refused() -> AsyncIterator[bytes]:
        cut = SAMPLE.index(b"COPY public.parent")
        async for chunk in _chunks(SAMPLE[:cut], 512):
            yield chunk
        await asyncio.sleep(0.01)  # the data sessions are running
        raise UnsafeInput("line 200: a DO block", line=200)

    recorder = Recorder()
    with pytest.raises(UnsafeInput, match="DO block"):
        await import_stream(refused(), 2, recorder.launch)
    assert recorder.cancelled >= 1
    assert not any(b"ADD CONSTRAINT" in bytes(s) for s in recorder.inputs)


def test_auto_is_two_and_numbers_are_checked():
    assert resolve_connections("auto") == 2
    assert resolve_connections(3) == 3
    for wrong in (0, 9, "many", True):
        with pytest.raises(BadInput):
            resolve_connections(wrong)


@pytest.mark.parametrize(
    "odd",
    [
        b"CREATE TABLE t (a int)\n\\! sh\n;\n",  # a meta-command where the filter saw none
        b"COPY (SELECT 1 FROM stdin) TO STDOUT;\n1\n",  # a COPY naming STDIN of another shape
        b"COPY public . child FROM stdin;\n1\t1\tx\n\\.\n",
        b"\\set x 1\n",
    ],
)
async def test_what_it_does_not_understand_goes_unread_to_one_session(odd):
    """From there on the dump reaches one psql byte for byte, as without the split."""
    at = SAMPLE.index(b"-- Name: child child_pkey")
    dump = SAMPLE[:at] + odd + SAMPLE[at:]
    recorder, stages = await _split(dump, 2, size=100)
    assert stages == [("pre", 1), ("data", 2), ("serial", 1)]
    assert bytes(recorder.inputs[-1]).endswith(odd + SAMPLE[at:])


@pytest.mark.parametrize(
    ("line", "code", "state"),
    [
        (b"SELECT 'a;b' ;", b"SELECT 's' ;", None),
        (b"SELECT E'it\\'s;' , 'x''y';", b"SELECT 's' , 's''s';", None),
        # psql: '' is a quote inside E'…' too, so the COPY is code, not a literal.
        (b"DEFAULT E'a''\\' ' ); COPY x; -- ' );", b"DEFAULT 's' ); COPY x; ", None),
        (b"SELECT E'ab''", b"SELECT 's'", b"E"),
        (b'CREATE TABLE "a;b" (x int);', b'CREATE TABLE "q" (x int);', None),
        (b"AS $body$ begin;", b"AS 's'", b"$body$"),
        (b"SELECT a$b$c; -- x;", b"SELECT a$b$c; ", None),
        (b"SELECT 1$a$ ; x", b"SELECT 1's'", b"$a$"),  # psql: a number, then a dollar quote
        (b"SELECT /* a /* b */ ; */ 1;", b"SELECT   1;", None),
        (b"SELECT /* open", b"SELECT  ", b"/*"),
    ],
)
def test_the_lexer_reads_quotes_as_psql_does(line, code, state):
    out, quote, _ = scan_line(line, None, 0)
    assert out == code
    assert quote == state


def test_the_lexer_carries_state_across_lines():
    _, quote, depth = scan_line(b"x /* a /* b", None, 0)
    assert (quote, depth) == (b"/*", 2)
    code, quote, depth = scan_line(b"*/ */ ; y", quote, depth)
    assert (code.strip(), quote) == (b"; y", None)
    code, quote, _ = scan_line(b"still in $q$ ; $q$ ;", b"$q$", 0)
    assert (code, quote) == (b" ; $q$ ;"[0:0] + b" ; 's'", b"$q$")


def test_copy_end_is_a_line_that_is_exactly_the_marker():
    assert copy_end(b"1\ta\n\\.x\n\\.\nSELECT", 0) == (8, 11)
    assert copy_end(b"\\.\r\n", 0) == (0, 4)
    assert copy_end(b"1\n\\", 0) == (-1, -1)


def test_the_dump_header_is_recognised():
    assert looks_like_pg_dump(SAMPLE[:4096])
    assert not looks_like_pg_dump(b"CREATE TABLE t (a int);\n-- PostgreSQL database dump\n")


@pytest.mark.parametrize(
    ("extra", "before", "stages"),
    [
        # Two statements on one line: a setting no new session would get.
        (
            b"SET search_path = public; SET xmloption = content;\n",
            b"-- Name: touch()",
            [("pre", 1)],
        ),
        # A transaction after the data: everything after it on one session, in order.
        (b"BEGIN;\n", b"-- Name: child child_pkey", [("pre", 1), ("data", 2), ("serial", 1)]),
        (b"CREATE TEMP TABLE t (a int);\n", b"-- Name: child; Type: TABLE;", [("pre", 1)]),
    ],
)
async def test_what_a_new_session_could_not_inherit_keeps_one_session(extra, before, stages):
    at = SAMPLE.index(before)
    dump = SAMPLE[:at] + extra + SAMPLE[at:]
    recorder, ran = await _split(dump, 2)
    assert ran == stages
    last = bytes(recorder.inputs[-1])
    assert extra in last
    assert last.index(extra) < last.index(b"FOREIGN KEY (parent_id)")
    ran = [s for x in recorder.inputs for s in _statements(bytes(x)) if not SETTING.match(s)]
    assert sorted(ran) == sorted(s for s in _statements(dump) if not SETTING.match(s))


async def test_a_last_statement_without_a_newline_still_ends_its_line():
    dump = re.sub(rb"\\unrestrict \S+\s*\Z", b"COMMENT ON TABLE public.p IS 'last'; -- end", SAMPLE)
    recorder, _ = await _split(dump, 2)
    serial = bytes(recorder.inputs[-1])
    assert serial.endswith(b"COMMENT ON TABLE public.p IS 'last'; -- end\n")
