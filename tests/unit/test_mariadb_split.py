"""The parallel MariaDB import's routing: whole statements only, cut where the client would.

The client's behaviour these follow was checked against `mariadb --binary-mode`
10.11 (a statement `delimiter //` changes the delimiter; a line ending in a
backslash inside a literal is joined to the next).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import pytest

from envrestore.pipelines.engines import mariadb_split
from envrestore.pipelines.engines.mariadb_lexer import ClientLexer
from envrestore.pipelines.errors import PermanentError


def _after(*lines: bytes) -> ClientLexer:
    lexer = ClientLexer()
    for line in lines:
        lexer.line(line)
    return lexer


@pytest.mark.parametrize(
    ("lines", "boundary"),
    [
        ((b"CREATE TABLE a (i INT);\n",), True),
        ((b"INSERT INTO `a` VALUES ('x;\n",), False),  # ends inside a literal
        ((b"INSERT INTO `a` VALUES ('x;\n", b"y');\n"), True),
        ((b"INSERT INTO `a` VALUES (1) # ';\n",), False),  # the `;` is in a comment
        ((b"INSERT INTO `a` VALUES (1) /* x\n",), False),
        ((b"INSERT INTO `a` VALUES (1) /* x\n", b"*/;\n"), True),
        ((b"/*!40101 SET NAMES utf8mb4 */;\n",), True),  # executed comments are code
        ((b"SELECT 5--1;\n",), True),  # `--` without a space is code
        ((b"SELECT 5 -- ;\n",), False),
        ((b"-- Dumping data\n",), True),
        (
            (b"DELIMITER ;;\n", b"CREATE TRIGGER t BEFORE INSERT ON a FOR EACH ROW SET @x = 1;\n"),
            False,
        ),
        (
            (b"DELIMITER ;;\n", b"CREATE TRIGGER t BEFORE INSERT ON a FOR EACH ROW SET @x = 1;;\n"),
            True,
        ),
        ((b"SELECT `a;` FROM t;\n",), True),
        ((b'SELECT "a\\";" FROM t;\n',), True),
    ],
)
def test_the_lexer_finds_the_clients_statement_ends(lines, boundary):
    lexer = _after(*lines)
    assert lexer.lost is None
    assert lexer.at_boundary is boundary


@pytest.mark.parametrize(
    "lines",
    [
        (b"SELECT 1; delimiter //;\n",),  # a statement that is a DELIMITER command
        (b"delimiterX //\n",),
        (b"INSERT INTO `a` VALUES ('ab\\\n",),  # the client joins this line to the next
        (b"SELECT 1 \\g\n",),
    ],
)
def test_what_the_lexer_cannot_follow_makes_it_lost(lines):
    lexer = _after(*lines)
    assert lexer.lost is not None
    assert not lexer.at_boundary


def test_plain_rows_take_the_fast_path_and_agree_with_the_exact_one():
    rows = b"(1,'it\\'s',NULL),\n(2,'a;b',0x1F);\n"
    fast = ClientLexer()
    fast.empty = False
    assert fast.rows(rows)
    exact = _after(b"INSERT INTO `t` VALUES\n", *rows.splitlines(keepends=True))
    assert fast.at_boundary and exact.at_boundary
    assert not ClientLexer().rows(b"('x;\n")  # ends inside a literal: not plain


async def _chunks(data: bytes, size: int = 4096) -> AsyncIterator[bytes]:
    for at in range(0, len(data), size):
        yield data[at : at + size]


async def _split(dump: bytes, sessions: int) -> list[bytes]:
    splitter = mariadb_split.Splitter("shop", sessions)

    async def collect(dest: int) -> bytes:
        return b"".join([piece async for piece in splitter.stream(dest)])

    results = await asyncio.gather(
        splitter.run(_chunks(dump)), *(collect(dest) for dest in range(sessions))
    )
    return list(results[1:])


def _statements(stream: bytes) -> list[bytes]:
    """The statements a client would send, our own sync statements left out."""
    lexer, out, current = ClientLexer(), [], b""
    for line in stream.splitlines(keepends=True):
        lexer.line(line)
        current += line
        assert lexer.lost is None
        if lexer.at_boundary:
            if current.strip() and b"__envrestore_import_sync" not in current:
                out.append(current)
            current = b""
    assert lexer.at_boundary  # every session's input ends between statements
    return out


def _table(name: bytes, rows: int, width: int = 200) -> bytes:
    head = b"CREATE TABLE `%s` (i INT, s TEXT);\nLOCK TABLES `%s` WRITE;\n" % (name, name)
    inserts = b"".join(
        b"INSERT INTO `%s` VALUES\n(%d,'%s'),\n(%d,'x');\n" % (name, n, b"v" * width, n)
        for n in range(rows)
    )
    return head + inserts + b"UNLOCK TABLES;\n"


@pytest.mark.parametrize("sessions", [2, 3, 4])
async def test_big_tables_are_split_by_statement_over_every_session(sessions, monkeypatch):
    monkeypatch.setattr(mariadb_split, "SPLIT_AFTER_BYTES", 4096)
    dump = (
        b"/*!40101 SET NAMES utf8mb4 */;\n"
        + _table(b"posts", 600)
        + b"DELIMITER ;;\nCREATE TRIGGER tr AFTER INSERT ON posts FOR EACH ROW SET @x = 1;;\n"
        + b"DELIMITER ;\n"
        + _table(b"meta", 600)
    )
    streams = await _split(dump, sessions)
    per_session = [_statements(stream) for stream in streams]
    inserts = sorted(s for session in per_session for s in session if s.startswith(b"INSERT"))
    expected = sorted(re.findall(rb"INSERT INTO [^;]*;\n", dump))
    assert inserts == expected  # every INSERT exactly once, whole
    total = sum(len(stream) for stream in streams)
    assert all(len(stream) > total // (sessions * 3) for stream in streams)  # a real share
    first = streams[0]
    # A's order: the table, its first INSERT, the signal; the trigger after waiting for all.
    assert first.index(b"CREATE TABLE `posts`") < first.index(b"INSERT INTO `posts`")
    assert first.index(b"INSERT INTO `posts`") < first.index(b"__envrestore_import_sync")
    assert first.index(b"CREATE TRIGGER") > first.rindex(
        b"WHILE NOT EXISTS", 0, first.index(b"CREATE TRIGGER")
    )
    for stream in streams[1:]:
        assert stream.index(b"WHILE NOT EXISTS") < stream.index(b"INSERT INTO `posts`")
        assert b"CREATE" not in stream and b"LOCK TABLES" not in stream
        assert b"SET NAMES utf8mb4" in stream  # session settings go to every session


async def test_a_literal_spanning_lines_is_never_cut_between_sessions(monkeypatch):
    """mysqldump never writes a raw newline in a literal, a hostile dump may: the filter
    reads the three lines as one INSERT, so the DELETE in them must not run alone."""
    monkeypatch.setattr(mariadb_split, "SPLIT_AFTER_BYTES", 0)
    smuggled = (
        b"INSERT INTO `posts` VALUES ('x;\n"
        b"INSERT INTO `posts` VALUES (1);DELETE FROM `live`.`wp_options`;\n"
        b"INSERT INTO `posts` VALUES (1)');\n"
    )
    dump = _table(b"posts", 50) + smuggled * 3 + _table(b"meta", 20)
    streams = await _split(dump, 3)
    for stream in streams:
        for statement in _statements(stream):
            if b"DELETE" in statement:
                assert statement == smuggled  # only ever inside the whole INSERT


async def test_an_insert_the_lexer_loses_on_another_session_stops_the_import(monkeypatch):
    monkeypatch.setattr(mariadb_split, "SPLIT_AFTER_BYTES", 0)
    rows = _table(b"posts", 50).replace(b"UNLOCK TABLES;\n", b"")  # the block goes on
    dump = rows + b"INSERT INTO `posts` VALUES ('ab\\\n" + b"'), (1);\n" * 40
    with pytest.raises(PermanentError, match="cannot be split safely"):
        await _split(dump, 2)


async def test_what_the_lexer_cannot_follow_outside_a_split_goes_to_one_session():
    dump = b"SELECT 1; delimiter //;\nSELECT 2 // SELECT 3 //\n" + _table(b"posts", 50)
    streams = await _split(dump, 2)
    assert b"INSERT" not in streams[1]
    assert streams[0].count(b"INSERT INTO `posts`") == 50


#: The SET lines of a mariadb-dump 10.11 dump (header, a trigger, a view, the
#: footer): every session must run them, or the split would stop at the first.
DUMP_SETTINGS = [
    b"/*!40101 SET @OLD_CHARACTER_SET_CLIENT=@@CHARACTER_SET_CLIENT */;\n",
    b"/*!40101 SET NAMES utf8mb4 */;\n",
    b"/*!40103 SET TIME_ZONE='+00:00' */;\n",
    b"/*!40014 SET @OLD_UNIQUE_CHECKS=@@UNIQUE_CHECKS, UNIQUE_CHECKS=0 */;\n",
    b"/*!40101 SET @OLD_SQL_MODE=@@SQL_MODE, SQL_MODE='NO_AUTO_VALUE_ON_ZERO' */;\n",
    b"/*!40111 SET @OLD_SQL_NOTES=@@SQL_NOTES, SQL_NOTES=0 */;\n",
    b"/*!40101 SET @saved_cs_client     = @@character_set_client */;\n",
    b"/*!50003 SET collation_connection  = utf8mb3_general_ci */ ;\n",
    b"/*!50003 SET sql_mode              = 'STRICT_TRANS_TABLES,NO_ENGINE_SUBSTITUTION' */ ;\n",
    b"SET character_set_client = @saved_cs_client;\n",
    b"/*!40014 SET FOREIGN_KEY_CHECKS=@OLD_FOREIGN_KEY_CHECKS */;\n",
    b"set names latin1;\n",  # the client and server read any case
    b"/*!40101 set @@session.character_set_client = latin1 */;\n",
]


@pytest.mark.parametrize("line", DUMP_SETTINGS)
async def test_the_dumps_own_settings_go_to_every_session(line, monkeypatch):
    monkeypatch.setattr(mariadb_split, "SPLIT_AFTER_BYTES", 4096)
    streams = await _split(line + _table(b"posts", 600), 2)
    assert b"INSERT INTO `posts`" in streams[1]  # still split
    for stream in streams:
        assert stream.index(line) < stream.index(b"INSERT INTO `posts`")


#: Session changes one session makes and the others would not (autocommit, the
#: isolation level, a transaction, a call, under another delimiter, after a
#: statement on the same line): the rest of the dump must run on one session.
SESSION_CHANGES = [
    b"SET autocommit=0;\n",
    b"set autocommit=0;\n",
    b"SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ;\n",
    b"/*!40101 SET @@session.tx_isolation = 'SERIALIZABLE' */;\n",
    b"SET NAMES latin1, autocommit = 0;\n",
    b"SET @a = (SELECT COUNT(*) FROM `posts`);\n",
    b"/* x */ SET autocommit=0;\n",
    b"/*M!100000 SET autocommit=0 */;\n",
    b"START TRANSACTION;\n",
    b"BEGIN;\n",
    b"EXECUTE IMMEDIATE 'SET autocommit=0';\n",
    b"SELECT 1; set names latin1;\n",
    b"SELECT 1\n; SET autocommit=0;\n",
    b"DELIMITER ;;\nSET autocommit=0;;\nDELIMITER ;\n",
]


@pytest.mark.parametrize("change", SESSION_CHANGES)
async def test_a_session_change_keeps_the_rest_of_the_dump_on_one_session(change, monkeypatch):
    monkeypatch.setattr(mariadb_split, "SPLIT_AFTER_BYTES", 4096)
    dump = _table(b"posts", 600) + change + _table(b"meta", 600)
    streams = await _split(dump, 2)
    assert b"INSERT INTO `posts`" in streams[1]  # split before the change
    assert change not in streams[1]
    assert b"INSERT INTO `meta`" not in streams[1]
    first = streams[0]
    assert first.count(b"INSERT INTO `meta`") == 600
    # A waited for the others before the change, and never waits after it.
    assert first.rindex(b"WHILE NOT EXISTS") < first.index(change)
    assert b"__envrestore_import_sync" not in first[first.index(change) :]


async def test_a_session_change_after_an_insert_of_another_session_stops_the_import(monkeypatch):
    monkeypatch.setattr(mariadb_split, "SPLIT_AFTER_BYTES", 0)
    rows = _table(b"posts", 50).replace(b"UNLOCK TABLES;\n", b"")  # the block goes on
    dump = rows + b"INSERT INTO `posts` VALUES (1); SET autocommit=0;\n" * 4
    with pytest.raises(PermanentError, match="cannot be split safely"):
        await _split(dump, 2)
