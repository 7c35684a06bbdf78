"""The MariaDB/MySQL statement filter: what it refuses (by line), normalises and leaves alone."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from envrestore.pipelines.errors import UnsafeInput
from envrestore.pipelines.sqlsafety import FilterReport, check_dump, filter_dump
from envrestore.pipelines.sqlsafety.lines import LineSplitter, iter_lines

HEADER = b"""-- MariaDB dump 10.19  Distrib 10.11.19-MariaDB
--
-- Host: 127.0.0.1    Database: site
/*!40101 SET @OLD_CHARACTER_SET_CLIENT=@@CHARACTER_SET_CLIENT */;
/*!40101 SET NAMES utf8mb4 */;
/*!40101 SET @OLD_SQL_MODE=@@SQL_MODE, SQL_MODE='NO_AUTO_VALUE_ON_ZERO' */;
"""  # 6 lines

# Verbatim shapes of mariadb-dump --routines --triggers --events output.
REAL_DUMP = (
    HEADER
    + rb"""
DROP TABLE IF EXISTS `t`;
/*!40101 SET @saved_cs_client     = @@character_set_client */;
/*!40101 SET character_set_client = utf8mb4 */;
CREATE TABLE `t` (
  `id` int(11) NOT NULL,
  `s` text DEFAULT NULL,
  PRIMARY KEY (`id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
/*!40101 SET character_set_client = @saved_cs_client */;
LOCK TABLES `t` WRITE;
/*!40000 ALTER TABLE `t` DISABLE KEYS */;
INSERT INTO `t` VALUES (1,'a\\b'),(2,'it\'s; DROP DATABASE x; \\! rm -rf /'),(3,NULL),(4,0x00FF),
(5,'GRANT ALL ON *.* TO x'),(6,'LOAD_FILE(\'/etc/passwd\')'),(7,"double \" quoted; USE mysql");
/*!40000 ALTER TABLE `t` ENABLE KEYS */;
UNLOCK TABLES;
/*!50003 SET @saved_sql_mode       = @@sql_mode */ ;
/*!50003 SET sql_mode              = 'STRICT_TRANS_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_AUTO_CREATE_USER,NO_ENGINE_SUBSTITUTION' */ ;
DELIMITER ;;
/*!50003 CREATE*/ /*!50017 DEFINER=`root`@`localhost`*/ /*!50003 TRIGGER tr BEFORE INSERT ON t FOR EACH ROW BEGIN SET NEW.s = CONCAT(NEW.s, ';'); END
*/;;
DELIMITER ;
/*!50003 SET sql_mode              = @saved_sql_mode */ ;
DELIMITER ;;
CREATE DEFINER=`root`@`127.0.0.1` PROCEDURE `p`()
BEGIN SELECT 1; SELECT 'x;;y'; END
;;
DELIMITER ;
/*!50001 CREATE ALGORITHM=UNDEFINED */
/*!50013 DEFINER=`root`@`%` SQL SECURITY DEFINER */
/*!50001 VIEW `v` AS select `t`.`id` AS `id` from `t` */;
/*!40101 SET SQL_MODE=@OLD_SQL_MODE */;
-- Dump completed on 2026-11-26 11:02:58
"""
)


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]


async def run(data: bytes, size: int = 1 << 20, **kw) -> tuple[bytes, FilterReport]:
    report = FilterReport()
    out = [c async for c in filter_dump(chunked(data, size), engine="mariadb", report=report, **kw)]
    return b"".join(out), report


async def refused(data: bytes) -> UnsafeInput:
    with pytest.raises(UnsafeInput) as info:
        await run(data)
    return info.value


async def test_real_dump_passes_with_only_definers_rewritten():
    out, report = await run(REAL_DUMP)
    assert out == REAL_DUMP.replace(b"DEFINER=`root`@`localhost`", b"DEFINER=CURRENT_USER").replace(
        b"DEFINER=`root`@`127.0.0.1`", b"DEFINER=CURRENT_USER"
    ).replace(b"DEFINER=`root`@`%`", b"DEFINER=CURRENT_USER")
    assert report.normalised == ["rewrote DEFINER= clauses to CURRENT_USER"]
    assert report.lines == REAL_DUMP.count(b"\n")
    assert report.bytes_in == len(REAL_DUMP)


@pytest.mark.parametrize("size", [1, 7, 1 << 20])
async def test_chunk_boundaries_do_not_change_the_output(size):
    expected, _ = await run(REAL_DUMP)
    out, _ = await run(REAL_DUMP, size)
    assert out == expected


@pytest.mark.parametrize(
    ("sql", "problem", "shown"),
    [
        (b"\\! rm -rf /\n", "client_command", '"\\! rm -rf /"'),
        (b"system rm -rf /\n", "client_command", '"system rm -rf /"'),
        (b"source /etc/passwd\n", "client_command", "source"),
        (b"\\. /tmp/x.sql\n", "client_command", "\\."),
        (b"connect other\n", "client_command", "connect"),
        (b"\\r other\n", "client_command", "\\r"),
        (b"\\u other\n", "client_command", "\\u"),
        (b"pager cat > /tmp/x\n", "client_command", "pager"),
        (b"tee /tmp/out\n", "client_command", "tee"),
        (b"\\T /tmp/out\n", "client_command", "\\T"),
        (b"\\P cat\n", "client_command", "\\P"),
        (b"SELECT 1; \\! id\n", "client_command", "\\! id"),
        (b"SELECT 1 /*!40101 \\! id */;\n", "client_command", "\\! id"),
        (b"quit\n", "client_command", "quit"),
        (b"USE mysql;\n", "database", "USE"),
        (b"CREATE DATABASE other;\nCREATE DATABASE evil;\n", "database", "other"),
        (b"DROP DATABASE other;\n", "database", "DROP"),
        (b"GRANT ALL ON *.* TO 'x'@'%';\n", "grant", "GRANT"),
        (b"REVOKE ALL ON *.* FROM 'x'@'%';\n", "revoke", "REVOKE"),
        (b"CREATE USER 'x'@'%' IDENTIFIED BY 'y';\n", "account", "CREATE USER"),
        (b"ALTER USER root IDENTIFIED BY 'y';\n", "account", "ALTER USER"),
        (b"SET PASSWORD FOR root = PASSWORD('x');\n", "password", "SET PASSWORD"),
        (b"SELECT * FROM t INTO OUTFILE '/var/www/shell.php';\n", "outfile", "OUTFILE"),
        (b"SELECT 1 INTO DUMPFILE '/tmp/x';\n", "outfile", "DUMPFILE"),
        (b"LOAD DATA LOCAL INFILE '/etc/passwd' INTO TABLE t;\n", "load_data", "LOAD DATA"),
        (b"LOAD XML INFILE '/x' INTO TABLE t;\n", "load_data", "LOAD XML"),
        (b"INSERT INTO t VALUES (1, LOAD_FILE('/etc/passwd'));\n", "load_file", "LOAD_FILE"),
        (b"INSTALL PLUGIN x SONAME 'x.so';\n", "plugin", "INSTALL"),
        (b"CREATE FUNCTION f RETURNS STRING SONAME 'evil.so';\n", "plugin", "SONAME"),
        (b"SHUTDOWN;\n", "shutdown", "SHUTDOWN"),
        (b"KILL 12;\n", "kill", "KILL"),
        (b"SET GLOBAL general_log_file = '/var/www/x.php';\n", "global", "GLOBAL"),
        (b"CALL p();\n", "call", "CALL"),
        (b"PREPARE s FROM @q;\n", "dynamic_sql", "PREPARE"),
        (b"SET sql_mode = 'ANSI_QUOTES';\n", "quoting_mode", "ANSI_QUOTES"),
        (b"SET SESSION sql_mode='NO_BACKSLASH_ESCAPES';\n", "quoting_mode", "NO_BACKSLASH"),
        (b"SET @saved_sql_mode = 'ANSI';\n", "quoting_mode", "saved_sql_mode"),
        (b"SET NAMES gbk;\n", "quoting_mode", "gbk"),
        (
            b"CREATE TABLE x (a int) ENGINE=CONNECT table_type=CSV file_name='/etc/passwd';\n",
            "engine",
            "CONNECT",
        ),
        (
            b"SELECT `a\\`; SELECT LOAD_FILE('/etc/passwd'); -- ` FROM t;\n",
            "backslash_identifier",
            "`a",
        ),
        (b"DELIMITER '\n", "delimiter", "DELIMITER"),
        # Read by mariadb --binary-mode 10.11 as delimiter changes (issue 11's split work).
        (b"CREATE TABLE `dl` (i INT); delimiter //;\n", "client_delimiter", "delimiter //"),
        (b"delimiterX //\n", "client_delimiter", "delimiterX"),
        (b"SELECT 2\ndelimiter //\n", "client_delimiter", "delimiter"),
        (b"/*!50003 SELECT 1; DELIMITER // */;\n", "client_delimiter", "DELIMITER"),
        (
            b"INSERT INTO `bs` VALUES ('ab\\\n' , ' ); DELETE FROM `d`.`wp_options`; -- ' );\n",
            "backslash_line_end",
            "ab",
        ),
        (b'SELECT "x\\\r\n" , " ); DROP TABLE t; -- ";\n', "backslash_line_end", "x"),
    ],
)
async def test_refusals_name_the_line_and_the_problem(sql, problem, shown):
    error = await refused(HEADER + sql)
    lines = sql.count(b"\n")
    assert error.data["problem"] == problem
    assert error.data["line"] in range(7, 7 + lines)
    assert str(error).startswith(f"line {error.data['line']}: ")
    assert "is not allowed in a dump" in str(error)
    assert shown in str(error) or shown in error.data["statement"]


async def test_refusal_message_reads_like_the_issue():
    error = await refused(b"SELECT 1;\n" * 1233 + b"\\! rm -rf /\n")
    assert str(error).startswith(
        'line 1234: mysql client command "\\! rm -rf /" is not allowed in a dump'
    )
    assert error.data == {"line": 1234, "statement": "\\! rm -rf /", "problem": "client_command"}


async def test_forbidden_words_inside_literals_and_comments_pass_untouched():
    dump = (
        b"INSERT INTO t VALUES ('\\\\! rm -rf', 'LOAD_FILE(x)', 'GRANT', \"USE mysql\");\n"
        b"-- GRANT ALL; \\! rm -rf /\n"
        b"# system rm -rf /\n"
        b"/* LOAD DATA INFILE '/etc/passwd'\n"
        b"   \\! still a comment */ SELECT 1;\n"
        b"INSERT INTO t VALUES ('multi-line literal\n"
        b"\\! not a command; GRANT ALL; USE mysql;\n"
        b"ends here');\n"
    )
    out, _ = await run(dump)
    assert out == dump


async def test_doubled_and_escaped_quotes_together_end_a_literal_where_mariadb_does():
    # MariaDB reads both '' and \' as a quote: 'a''\' ' is one literal (`a'' `),
    # so what follows it is code (the PostgreSQL filter once missed this in E'…').
    hidden = b"INSERT INTO t VALUES ('a''\\' ; system id; -- ', \"b\"\"\\\" ; GRANT ALL; -- \");\n"
    out, _ = await run(hidden)
    assert out == hidden
    error = await refused(b"INSERT INTO t VALUES ('a''\\' '); GRANT ALL ON *.* TO x;\n")
    assert error.data["problem"] == "grant"
    error = await refused(b'INSERT INTO t VALUES ("a""\\" "); GRANT ALL ON *.* TO x;\n')
    assert error.data["problem"] == "grant"


#: Read by `mariadb --binary-mode` 10.11 differently from the server (checked by hand):
#: the client takes `--x` at a statement's start for a comment, the server for code;
#: the server takes `--` and a control byte for a comment, the client for code. Either
#: way a quote on that line opened a literal for one of them only, hiding what follows.
DASH_DASH = {
    "--x at a statement's start": b"CREATE TABLE t2 (a text);\n--x '\n"
    b"SELECT LOAD_FILE(0x2f6574632f686f73746e616d65) AS leaked;\n"
    b"GRANT ALL ON *.* TO CURRENT_USER;\n-- ';\nINSERT INTO t2 VALUES ('ok');\n",
    "--x after a ; on the same line": b"SELECT 1;--x '\n\\! id\n-- ';\n",
    "--x inside a statement": b"SELECT 1 --x '\n, 2;\n",
    "-- and a control byte": b"CREATE TABLE t3 (a text);\nSELECT 1 --\x01 '\n' \\C gbk\n"
    b"--\x01 '\n# '\n;\n",
    "-- and a vertical tab": b"SELECT 1 --\x0b '\n;\n",
    "--- in rows": b"INSERT INTO t VALUES (1---1);\n",
    "-- inside an executable comment": b"/*!40101 SELECT 1 --x ' */;\n",
}


@pytest.mark.parametrize("case", sorted(DASH_DASH))
async def test_a_double_dash_not_followed_by_a_space_is_refused(case):
    error = await refused(DASH_DASH[case])
    assert error.data["problem"] == "dash_comment"


async def test_double_dash_comments_the_client_and_server_agree_on_pass():
    dump = (
        b"-- a comment\n--\n--\tx\n-- ------------------------\n"
        b"SELECT 1-- x\r\n;\nSELECT 1 --\nSELECT '--x' + 1; -- ' ; GRANT\n"
    )
    out, _ = await run(dump)
    assert out == dump


@pytest.mark.parametrize(
    "sql",
    [
        # mariadb --binary-mode 10.11 ran the DELETE: after /*! on a line, the client
        # ends a /* comment only at the second */, so the quote was not code for it.
        b"/*!40101 /* x */ ' */ SELECT 1 */;\nDELETE FROM `d`.`wp_options`;\n-- '\n;\n",
        b"/*!40101 /* x */ # */ \\! id\n",
        b"/*!40101 /* x */ -- */ \\! id\n",
        b"/*M!100000 /* x */ ' */;\n",
    ],
)
async def test_a_comment_inside_an_executable_comment_on_its_line_is_refused(sql):
    error = await refused(sql)
    assert (error.data["line"], error.data["problem"]) == (1, "nested_comment")


async def test_plain_comments_after_a_closed_executable_comment_pass():
    dump = b"/*!40101 SET @a=1 */; /* ok */ SELECT 1;\n/*!40101 SET @b=1 */ /* ok */;\n"
    out, _ = await run(dump)
    assert out == dump


@pytest.mark.parametrize("size", [1, 7, 1 << 20])
async def test_rows_lines_that_call_a_routine_in_another_database_are_refused(size):
    # `(dead.beef(1))`: letters and `.` that once passed as hex digits on the rows path.
    for dump in (
        b"INSERT INTO `t` VALUES (1),\n(dead.beef(1));\n",
        b"INSERT INTO `t` VALUES (1),(dead.beef(1));\n",
        b"INSERT INTO `t` VALUES (1),\n(1,fade.cab (1),2);\n",
    ):
        with pytest.raises(UnsafeInput) as info:
            await run(dump, size)
        assert info.value.data["problem"] == "qualified", dump


async def test_rows_with_every_value_shape_mysqldump_writes_pass():
    dump = (
        b"INSERT INTO `t` VALUES (1,NULL,0x00FF,-1.5e+3,'x',1.5e-05,b'101',X'0A',-0.25),\n"
        b"(2,NULL,0xABCDEF,1E20,'y''z',0,b'0',X'',3.14159);\n"
    )
    out, report = await run(dump)
    assert out == dump and report.statements == 1


async def test_an_unterminated_literal_hides_nothing_after_it_ends():
    error = await refused(b"INSERT INTO t VALUES ('a\nb');\nGRANT ALL ON *.* TO x;\n")
    assert error.data["line"] == 3


async def test_delimiter_blocks_split_statements_on_the_new_delimiter():
    dump = (
        b"DELIMITER ;;\n"
        b"CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW BEGIN\n"
        b"  SET NEW.a = 1;\n"
        b"END ;;\n"
        b"DELIMITER ;\n"
        b"SELECT 1;\n"
    )
    out, report = await run(dump)
    assert out == dump
    assert report.statements == 2


async def test_semicolon_inside_a_delimiter_block_still_ends_a_statement_for_the_server():
    error = await refused(b"DELIMITER ;;\nCREATE TABLE x (a int);\nUSE mysql;;\n")
    assert (error.data["line"], error.data["problem"]) == (3, "use")


async def test_a_client_command_after_a_delimiter_change_is_still_refused():
    error = await refused(b"DELIMITER $$\nSELECT 1$$\nsystem id\n")
    assert (error.data["line"], error.data["problem"]) == (3, "client_command")


async def test_sandbox_line_is_dropped():
    dump = b"/*M!999999\\- enable the sandbox mode */ \nCREATE TABLE `a` (`id` int);\n"
    out, report = await run(dump)
    assert out == b"\nCREATE TABLE `a` (`id` int);\n"
    assert "dropped the sandbox-mode line of MariaDB 11 dumps" in report.normalised


@pytest.mark.parametrize(
    ("statement", "named"),
    [
        (b"CREATE DATABASE /*!32312 IF NOT EXISTS*/ `site`;\n", "CREATE DATABASE"),
        (b"USE `site`;\n", "USE"),
        (b"/*!40000 DROP DATABASE IF EXISTS `site`*/;\n", "DROP DATABASE"),
        (b"ALTER DATABASE `other` CHARACTER SET latin1;\n", "ALTER DATABASE"),
    ],
)
async def test_a_dump_that_creates_or_switches_databases_is_refused_naming_it(statement, named):
    """Even the dump's own database: the statements would silently run elsewhere."""
    dump = b"--\n-- Current Database: `site`\n--\n" + statement + b"CREATE TABLE `a` (i int);\n"
    error = await refused(dump)
    assert (error.data["line"], error.data["problem"]) == (4, "database")
    assert str(error).startswith(f"line 4: {named} ")
    assert "--databases" in str(error)


async def test_use_without_a_preceding_create_database_is_refused():
    error = await refused(b"CREATE TABLE a (id int);\nUSE `site`;\n")
    assert (error.data["line"], error.data["problem"]) == (2, "database")


async def test_a_second_database_in_one_dump_is_refused():
    dump = b"-- Current Database: `site`\nCREATE TABLE a (i int);\n-- Current Database: `other`\n"
    error = await refused(dump)
    assert (error.data["line"], error.data["problem"]) == (3, "multiple_databases")


@pytest.mark.parametrize(
    ("sql", "problem", "named"),
    [
        (b"CREATE TABLE `other`.`t` (i int);\n", "qualified", "other.t"),
        (b"INSERT INTO `other`.`t` VALUES (1);\n", "qualified", "other.t"),
        (b"INSERT INTO other.t VALUES (1),(2);\n", "qualified", "other.t"),
        (b"REPLACE INTO `other` . `t` SET a = 1;\n", "qualified", "other.t"),
        (b"UPDATE other.t SET a = 1;\n", "qualified", "other.t"),
        (b"DELETE FROM `other`.`t`;\n", "qualified", "other.t"),
        (b"DROP TABLE IF EXISTS `a`, `other`.`t`;\n", "qualified", "other.t"),
        (b"ALTER TABLE other.t ADD c int;\n", "qualified", "other.t"),
        (b"LOCK TABLES `a` WRITE, `other`.`t` WRITE;\n", "qualified", "other.t"),
        (b"RENAME TABLE `a` TO `other`.`a`;\n", "qualified", "other.a"),
        (b"CREATE TABLE b LIKE other.t;\n", "qualified", "other.t"),
        (b"INSERT INTO a SELECT * FROM x, other.secrets;\n", "qualified", "other.secrets"),
        (b"INSERT INTO a SELECT * FROM a JOIN other.t USING (i);\n", "qualified", "other.t"),
        (b"CREATE TABLE c (i int REFERENCES other.t (i));\n", "qualified", "other.t"),
        (b"SELECT other.t.c FROM a;\n", "qualified", "other.t"),
        (b"SELECT other.f(1);\n", "qualified", "other.f"),
        (b"INSERT INTO `mysql`.`global_priv` VALUES ('x','y','{}');\n", "system_schema", "mysql"),
        (b"UPDATE mysql.user SET Super_priv = 'Y';\n", "system_schema", "mysql.user"),
        (
            b"SELECT * FROM a WHERE i IN (SELECT 1 FROM performance_schema.threads);\n",
            "system_schema",
            "performance_schema",
        ),
    ],
)
async def test_names_in_another_database_are_refused(sql, problem, named):
    error = await refused(HEADER + b"CREATE TABLE a (i int);\n" + sql)
    assert (error.data["line"], error.data["problem"]) == (8, problem)
    assert named in str(error)


async def test_names_in_another_database_are_refused_across_lines_and_in_object_bodies():
    trigger = (
        b"DELIMITER ;;\n"
        b"/*!50003 CREATE*/ /*!50017 DEFINER=`root`@`localhost`*/ /*!50003 TRIGGER tr "
        b"AFTER INSERT ON a FOR EACH ROW BEGIN\n"
        b"  INSERT INTO\n"
        b"    `other`.`log` VALUES (NEW.i);\n"
        b"END */;;\nDELIMITER ;\n"
    )
    error = await refused(b"CREATE TABLE a (i int);\n" + trigger)
    assert (error.data["line"], error.data["problem"]) == (5, "qualified")
    view = (
        b"/*!50001 CREATE ALGORITHM=UNDEFINED */\n"
        b"/*!50013 DEFINER=`root`@`%` SQL SECURITY DEFINER */\n"
        b"/*!50001 VIEW `v` AS select `a`.`i` AS `i` from `a`, `other`.`t` */;\n"
    )
    error = await refused(b"CREATE TABLE a (i int);\n" + view)
    assert (error.data["line"], error.data["problem"]) == (4, "qualified")
    # A multi-line string before it does not hide the name.
    hidden = b"INSERT INTO a VALUES ('multi\nline'); INSERT INTO other.t VALUES (1);\n"
    error = await refused(b"CREATE TABLE a (i int);\n" + hidden)
    assert (error.data["line"], error.data["problem"]) == (3, "qualified")


async def test_table_column_names_new_old_and_lookalikes_in_strings_pass():
    dump = (
        b"CREATE TABLE a (i int, d decimal(9,2) DEFAULT 1.50, s varchar(9) DEFAULT 'x.y');\n"
        b"INSERT INTO a VALUES (1, 2.5, 'other.t'),(2, 0.1, 'FROM other.t');\n"
        b"DELIMITER ;;\n"
        b"CREATE TRIGGER tr BEFORE INSERT ON a FOR EACH ROW BEGIN\n"
        b"  SET NEW.s = (SELECT b.s FROM a AS b WHERE b.i = NEW.i LIMIT 1), NEW.d = OLD.d;\n"
        b"END ;;\nDELIMITER ;\n"
        b"/*!50001 VIEW `v` AS select `a`.`i` AS `i`,`a`.`s` AS `s` from `a` "
        b"where `a`.`i` > 1 order by `a`.`i` desc, `a`.`s` */;\n"
        b"CREATE DEFINER=`root`@`db.example.com` PROCEDURE `p`() SELECT `a`.`i` FROM a;\n"
    )
    out, _report = await run(dump)
    assert b"other.t" in out


async def test_newer_collations_are_mapped_outside_literals_only():
    dump = (
        b"CREATE TABLE `a` (`s` varchar(9) COLLATE utf8mb4_0900_ai_ci)"
        b" DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_uca1400_ai_ci;\n"
        b"INSERT INTO `a` VALUES ('utf8mb4_0900_ai_ci');\n"
    )
    out, report = await run(dump)
    assert out == (
        b"CREATE TABLE `a` (`s` varchar(9) COLLATE utf8mb4_unicode_ci)"
        b" DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;\n"
        b"INSERT INTO `a` VALUES ('utf8mb4_0900_ai_ci');\n"
    )
    assert "rewrote collation utf8mb4_0900_ai_ci to utf8mb4_unicode_ci" in report.normalised


async def test_the_collation_map_is_a_parameter():
    dump = b"CREATE TABLE `a` (`id` int) COLLATE=utf8mb4_0900_ai_ci;\n"
    out, _ = await run(dump, collation_map={"utf8mb4_0900_ai_ci": "utf8mb4_general_ci"})
    assert out == b"CREATE TABLE `a` (`id` int) COLLATE=utf8mb4_general_ci;\n"


async def test_crlf_lines_are_read_like_lf_lines():
    dump = (
        b"DELIMITER ;;\r\nCREATE PROCEDURE p() BEGIN SELECT 1; END;;\r\n"
        b"DELIMITER ;\r\nSELECT 1;\r\n"
    )
    out, report = await run(dump)
    assert out == dump
    assert report.statements == 2


async def test_a_line_longer_than_the_cap_is_refused():
    with pytest.raises(UnsafeInput, match="longer than 1000 bytes"):
        await run(b"INSERT INTO t VALUES " + b"(1)," * 1000 + b"(1);\n", 100, max_line=1000)


async def test_check_dump_consumes_the_stream_and_reports():
    report = await check_dump(chunked(REAL_DUMP, 4096), engine="mariadb")
    assert report.lines == REAL_DUMP.count(b"\n")
    assert report.statements > 10


async def test_line_splitter_keeps_lines_whole_across_chunks():
    data = b"a\r\n" + b"x" * 5000 + b"\nlast"
    lines = [line async for line in iter_lines(chunked(data, 7))]
    assert lines == [b"a\r\n", b"x" * 5000 + b"\n", b"last"]
    splitter = LineSplitter()
    assert splitter.feed(b"no newline") == b""
    assert splitter.feed(b" yet\nrest") == b"no newline yet\n"
    assert splitter.finish() == b"rest"
