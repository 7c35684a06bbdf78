"""Hostile parts only an import can be given: zips, bzip2 and other formats found by content.

A backup's parts are gzip-compressed tars and dumps, so a restore refuses a zip
or a bzip2 before reading it; an import takes them (the format comes from the
bytes), so their own hostile forms must be refused by the import: a zip whose
members climb out with `../` or a symlink, a zip bomb, a zipped database with
two dumps, a `.sql.bz2` dump reaching the server. (The hostile tars and dumps a
restore refuses run through an import too, in the tests of restores: see
`tests/support/routes.py`.)

Each part is uploaded to `staging/uploads/` and imported by a real job into an
environment with content of its own, beside a canary folder `outside/` that
every escape aims at. Each must be refused before the switch, naming why, and
leave the environment's snapshot unchanged, `outside/` as it was and nothing
new beside the environment, the canary database's rows, no import login, and
nothing under `staging/` (`import_parts` checks that last one).
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from envrestore.pipelines.engines.shadow import import_login_name
from envrestore.pipelines.restore.targets import job_tag
from tests.support import archive_formats as af
from tests.support import evil_archives as evil
from tests.support.databases import _mariadb_admin, _postgres_admin
from tests.support.environments import add_env, assert_failed, run_sql, with_settings
from tests.support.routes import import_parts
from tests.support.sites import tree_digest

pytestmark = pytest.mark.integration

ENGINES = ["mariadb", "postgresql"]
#: The cap the bomb cases set (`limits_for`: min(max(size x ratio, floor), ceiling)).
SMALL_CAP = 1 << 20


@pytest.fixture(params=ENGINES)
def engine(request) -> str:
    return request.param


@pytest.fixture
async def site(
    runtime, tmp_path, engine, make_mariadb_db, make_postgres_db, mariadb_server, postgres_server
) -> dict[str, Any]:
    """shop.dev on `engine` (no backup: imports need none), a canary folder beside its
    files and code, a canary database on the same server, and an absolute path to aim at."""
    make_db = make_mariadb_db if engine == "mariadb" else make_postgres_db
    env = await add_env(runtime, tmp_path / "envs", "shop.dev", make_db)
    outside = env.files.parent / "outside"
    outside.mkdir()
    (outside / "sentinel.txt").write_text("untouched\n")
    canary = make_db()
    await run_sql(canary, "CREATE TABLE t (i INT); INSERT INTO t VALUES (1);")
    return {
        "env": env,
        "engine": engine,
        "admin": mariadb_server if engine == "mariadb" else postgres_server,
        "outside": outside,
        "outside_digest": tree_digest(outside),
        "beside": sorted(p.name for p in env.files.parent.iterdir()),
        "canary": canary,
        "absolute": Path(f"/tmp/envrestore-import-evil-{uuid.uuid4().hex[:12]}"),
        "shell_canary": Path(f"/tmp/envrestore-import-pwned-{uuid.uuid4().hex[:12]}"),
        "before": await env.snapshot(),
        "tmp": tmp_path,
    }


def _admin_query(site: dict[str, Any], sql: str, database: str | None = None) -> list[str]:
    """`sql` as the server's admin; the words it printed. `database`: PostgreSQL's to
    connect to (MariaDB's queries name their database)."""
    if site["engine"] == "mariadb":
        return _mariadb_admin(site["admin"], sql).split()
    admin = site["admin"] if database is None else site["admin"].with_database(database)
    return _postgres_admin(admin, sql).split()


async def _assert_refused_and_untouched(
    site: dict[str, Any], view: dict[str, Any], step: str, *reasons: str
) -> None:
    assert_failed(view, step, *reasons)  # failed in `step`, switch skipped, abandoned
    [done] = [s for s in view["steps"] if s["name"] == step]
    assert done["attempts"] == 1  # permanent: not retried
    assert str(site["tmp"]) not in view["error"]  # no worker paths
    env = site["env"]
    assert await env.snapshot() == site["before"]
    # Nothing outside: the canary folder as it was, nothing new beside the environment
    # (the job's staging folders are gone too), nothing at the absolute paths.
    assert tree_digest(site["outside"]) == site["outside_digest"]
    assert sorted(p.name for p in env.files.parent.iterdir()) == site["beside"]
    assert not site["absolute"].exists() and not site["shell_canary"].exists()
    # The canary database keeps its row; the job's import login is gone.
    canary = site["canary"].database
    table = f"`{canary}`.t" if site["engine"] == "mariadb" else "t"
    assert _admin_query(site, f"SELECT COUNT(*) FROM {table}", canary) == ["1"]
    login = import_login_name(job_tag(uuid.UUID(view["id"])))
    if site["engine"] == "mariadb":
        left = _admin_query(site, f"SELECT COUNT(*) FROM mysql.user WHERE user = '{login}'")
    else:
        left = _admin_query(site, f"SELECT COUNT(*) FROM pg_roles WHERE rolname = '{login}'")
    assert left == ["0"]


# -- files: zips and formats a backup never has -----------------------------------------


def _zip(*entries: af.Entry) -> bytes:
    return af.zip_of(entries)


def _lying_bomb() -> bytes:
    """One member declaring 10 bytes that inflates to 8 MiB (its CRC is the real one)."""
    data = _zip(af.folder("files"), af.file("files/bomb.bin", b"\0" * (8 << 20)))
    cd, local = af.SIZE
    return af.patch_both(data, 1, cd=cd, local=local, fmt="<L", value=10)


#: case → (the imported files part, given the site; phrases its error must hold; the cap).
FILES: dict[str, tuple[Callable[[dict[str, Any]], bytes], tuple[str, ...], int | None]] = {
    "zip_slip": (
        lambda s: _zip(af.file("a.txt"), af.file("../outside/escaped.txt")),
        ("the files part", "'../outside/escaped.txt'", "has a '..' component"),
        None,
    ),
    "zip_slip_under_a_folder": (
        lambda s: _zip(af.folder("files"), af.file("files/../../outside/escaped.txt")),
        ("has a '..' component",),
        None,
    ),
    "zip_absolute_path": (
        lambda s: _zip(af.file("a.txt"), af.file(f"{s['absolute']}/escaped.txt")),
        ("has an absolute path",),
        None,
    ),
    "zip_symlink_outside": (
        lambda s: _zip(
            af.folder("files_dev"),
            af.symlink("files_dev/out", "../../outside"),
            af.file("files_dev/out/escaped.txt"),
        ),
        ("'files_dev/out'", "resolves outside the archive root"),
        None,
    ),
    # Inside the archive, but `files/` is unwrapped to become the tree: `up` would
    # then point beside the environment, at `outside/`.
    "zip_symlink_out_of_the_unwrapped_folder": (
        lambda s: _zip(
            af.folder("files"), af.file("files/a.txt"), af.symlink("files/up", "../outside")
        ),
        ("'files/up'", "resolves outside the folder 'files' that is unwrapped"),
        None,
    ),
    "zip_symlink_absolute": (
        lambda s: _zip(af.file("a.txt"), af.symlink("etc", str(s["absolute"]))),
        ("is a symlink to the absolute path",),
        None,
    ),
    "zip_write_through_symlink": (
        lambda s: _zip(
            af.folder("sub"), af.symlink("a", "sub"), af.file("a/escaped.txt", b"through\n")
        ),
        ("would be written through the symlink 'a'",),
        None,
    ),
    "zip_bomb": (  # 8 MiB of zeros in ~8 KiB, honestly declared: over the cap
        lambda s: _zip(af.folder("files"), af.file("files/bomb.bin", b"\0" * (8 << 20))),
        (f"over the cap of {SMALL_CAP} bytes", "decompression bomb"),
        SMALL_CAP,
    ),
    "zip_bomb_lying_about_its_size": (
        lambda s: _lying_bomb(),
        ("inflates to more than the 10 bytes it declares", "decompression bomb"),
        SMALL_CAP,
    ),
    "tar_bomb_under_a_small_cap": (
        lambda s: evil.bomb_tar_gz(8 << 20, top="files"),
        (f"over the cap of {SMALL_CAP} bytes",),
        SMALL_CAP,
    ),
    "tar_gz_holding_a_gzip": (
        lambda s: gzip.compress(evil.gzipped(evil.wrong_top("files"))),
        ("the imported files part is not a tar archive", "compressed twice"),
        None,
    ),
    "zip_inside_a_bzip2": (
        lambda s: bz2.compress(_zip(af.file("a.txt"))),
        ("the imported files part is not a tar archive: found a zip archive",),
        None,
    ),
    "xz": (
        lambda s: lzma.compress(evil.wrong_top("files")),
        ("the imported files part is not an archive that can be imported",),
        None,
    ),
    "7z": (
        lambda s: b"7z\xbc\xaf\x27\x1c\x00\x04" + bytes(600),
        ("found a 7z archive", "give a tar archive"),
        None,
    ),
    "pdf": (
        lambda s: b"%PDF-1.7\n" + bytes(range(256)) * 4,
        ("found a PDF document",),
        None,
    ),
    "sql_dump_as_files": (
        lambda s: bz2.compress(b"-- MySQL dump 10.13\n\nCREATE TABLE t (i INT);\n" * 30),
        ("not a tar archive: found what looks like an SQL dump",),
        None,
    ),
}


@pytest.mark.parametrize("engine", ["mariadb"], indirect=True)  # files: any engine will do
@pytest.mark.parametrize("case", sorted(FILES))
async def test_a_hostile_files_part_is_refused_and_nothing_escapes(runtime, site, case):
    build, reasons, cap = FILES[case]
    rt = runtime
    if cap is not None:  # what `limits_for` reads (not declared in config/settings.py)
        rt = with_settings(runtime, archive_bomb_ratio=2, archive_bomb_ceiling_bytes=cap)
    view = await import_parts(rt, "shop.dev", {"files": build(site)})
    await _assert_refused_and_untouched(site, view, "import_files", *reasons)


# -- databases: zips, bzip2, xz --------------------------------------------------------


def _zip_of_files(files: dict[str, bytes]) -> bytes:
    return _zip(*(af.file(name, data) for name, data in files.items()))


ENDING = {
    "mariadb": b"\n-- Dump completed on 2026-12-01 10:00:00\n",
    "postgresql": b"\n--\n-- PostgreSQL database dump complete\n--\n\n",
}
TABLE = b"CREATE TABLE a (i INT);\nINSERT INTO a VALUES (1);\n"

#: case → engine → (the dump's statements after TABLE, phrases its error must hold),
#: each given as a .sql.bz2 (the canary database's name fills `{canary}`).
BZIP2_DUMPS: dict[str, dict[str, tuple[bytes, tuple[str, ...]]]] = {
    "drop_the_server_schema": {
        "mariadb": (b"DROP DATABASE mysql;\n", ("line 3", "DROP DATABASE")),
        "postgresql": (b"DROP DATABASE postgres;\n", ("line 3", "a statement on a database")),
    },
    "drop_another_database": {
        "mariadb": (b"DROP DATABASE `{canary}`;\n", ("line 3", "DROP DATABASE")),
        "postgresql": (b'DROP DATABASE "{canary}";\n', ("line 3", "a statement on a database")),
    },
    "grant_or_role": {
        "mariadb": (
            b"GRANT ALL ON *.* TO 'envr_evil'@'%' IDENTIFIED BY 'x';\n",
            ("line 3", "GRANT (privileges belong to the target server)"),
        ),
        # PostgreSQL dumps carry GRANTs, which are dropped (defused) rather than
        # refused; what reaches the server's roles is a role statement.
        "postgresql": (
            b"CREATE ROLE envr_evil SUPERUSER LOGIN;\n",
            ("line 3", "a role statement"),
        ),
    },
    "shell_command": {
        "mariadb": (b"\\! touch {shell_canary}\n", ("line 3", "mysql client command")),
        "postgresql": (b"\\! touch {shell_canary}\n", ("line 3", "psql meta-command")),
    },
}


def _dump(site: dict[str, Any], statements: bytes) -> bytes:
    filled = statements.replace(b"{canary}", site["canary"].database.encode()).replace(
        b"{shell_canary}", str(site["shell_canary"]).encode()
    )
    return TABLE + filled + ENDING[site["engine"]]


@pytest.mark.parametrize("case", sorted(BZIP2_DUMPS))
async def test_a_hostile_bzip2_dump_is_refused(runtime, site, case):
    statements, reasons = BZIP2_DUMPS[case][site["engine"]]
    data = bz2.compress(_dump(site, statements))
    view = await import_parts(runtime, "shop.dev", {"database": data})
    await _assert_refused_and_untouched(site, view, "import_db", "database part", *reasons)


#: case → (the database part, given the site; phrases its error must hold).
DATABASES: dict[str, tuple[Callable[[dict[str, Any]], bytes], tuple[str, ...]]] = {
    "zip_with_two_dumps": (
        lambda s: _zip_of_files(
            {"shop.sql": _dump(s, b""), "shop-old.sql": _dump(s, b"DROP TABLE a;\n")}
        ),
        ("the database part is a zip archive with 2 .sql files", "which one to import"),
    ),
    "zip_holding_a_pdf": (
        lambda s: _zip_of_files({"report.pdf": b"%PDF-1.7\n" + bytes(600)}),
        ("zip archive with no .sql file (found 'report.pdf')",),
    ),
    "zip_with_a_script_beside_the_dump": (
        lambda s: _zip_of_files({"shop.sql": _dump(s, b""), "run.sh": b"#!/bin/sh\nid\n"}),
        ("with other files beside 'shop.sql'",),
    ),
    "zip_with_a_shell_command": (
        lambda s: _zip_of_files({"shop.sql": _dump(s, b"\\! touch {shell_canary}\n")}),
        ("database part", "line 3", "command", "is not allowed in a dump"),
    ),
    "xz": (
        lambda s: lzma.compress(_dump(s, b"")),
        ("the database part is not in a format that can be imported", "xz-compressed"),
    ),
    "bzip2_holding_a_gzip": (
        lambda s: bz2.compress(gzip.compress(_dump(s, b""))),
        ("the database part is not a plain SQL dump", "compressed twice"),
    ),
    "gzip_holding_a_zip": (
        lambda s: gzip.compress(_zip_of_files({"shop.sql": _dump(s, b"")})),
        ("the database part is not a plain SQL dump: found a zip archive",),
    ),
    "empty_zip": (
        lambda s: _zip(),
        ("the database part is a zip archive with no file at all",),
    ),
}


@pytest.mark.parametrize("case", sorted(DATABASES))
async def test_a_hostile_database_part_is_refused(runtime, site, case):
    build, reasons = DATABASES[case]
    view = await import_parts(runtime, "shop.dev", {"database": build(site)})
    await _assert_refused_and_untouched(site, view, "import_db", *reasons)


@pytest.mark.parametrize("engine", ["postgresql"], indirect=True)
async def test_grants_in_an_imported_postgresql_dump_are_dropped_not_run(runtime, site):
    """The PostgreSQL filter defuses GRANT/REVOKE/OWNER TO the same way for an import."""
    dump = (
        TABLE
        + (
            b"GRANT ALL ON TABLE public.a TO PUBLIC;\n"
            b"ALTER TABLE public.a OWNER TO postgres;\n"
            b"REVOKE ALL ON SCHEMA public FROM PUBLIC;\n"
        )
        + ENDING["postgresql"]
    )
    view = await import_parts(runtime, "shop.dev", {"database": bz2.compress(dump)})
    assert view["status"] == "succeeded", view["error"]
    [step] = [s for s in view["steps"] if s["name"] == "import_db"]
    notes = step["outputs"]["normalised"]
    assert any("dropped GRANT/REVOKE" in note for note in notes), notes
    assert any("OWNER TO" in note for note in notes), notes
    env = site["env"]
    acl = _admin_query(
        site,
        "SELECT COALESCE(relacl::text, 'none') || ' ' || pg_get_userbyid(relowner) "
        "FROM pg_class WHERE relname = 'a'",
        env.dsn.database,
    )
    assert acl == ["none", env.dsn.user]  # no grant to PUBLIC, owned by the DSN user
    assert (await env.snapshot()).tables == {"a": 1}
