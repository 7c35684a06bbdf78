"""Content from anywhere, as a user runs it: the CLI and real worker processes.

One test per engine walks every source in turn on the same two environments
(starting workers and sites is the slow part): another environment's backup
(`restore --from`), temporary links (`backup link`, fetched with curl and
imported), a local archive (`import files --file`, uploaded to staging and
released), links that expired or were changed, a URL the SSRF rules refuse,
and (MariaDB) a backup made the way Pantheon makes them. Each refusal leaves
the target exactly as it was.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from envrestore.pipelines.dsn import Dsn
from envrestore.pipelines.engines import engine_for
from tests.e2e.conftest import dsn_text, snap
from tests.e2e.test_backup_cli import s3_client
from tests.integration.test_backup_job import fill
from tests.integration.test_sources import (
    PUBLISHED_BY_AUTHOR,
    WORDPRESS,
    curl,
    mariadb_dump,
    sha256_file,
    tamper,
)
from tests.support.content import snapshot
from tests.support.environments import run_sql, zip_of
from tests.support.pantheon import make_pantheon_backup
from tests.support.sites import git, make_files, make_repo, tree_digest
from tests.support.workers import run_cli, run_json, wait_for

pytestmark = pytest.mark.e2e


# -- helpers -------------------------------------------------------------------------------


def run_job(env: dict[str, str], *args: str, code: int) -> dict[str, Any]:
    """Run a job command with `--wait --json`; it exits `code`; the job's final view."""
    done = run_cli(env, *args, "--wait", "--json", timeout=180)
    assert done.returncode == code, (done.returncode, done.stdout[-3000:], done.stderr[-3000:])
    return json.loads(done.stdout)


def assert_refused(view: dict[str, Any], step: str, *reasons: str) -> None:
    assert view["status"] == "failed", view
    assert view["error_step"] == step, view
    for reason in reasons:
        assert reason in view["error"], view["error"]


def sql_of(dsn: Dsn, sql: str) -> None:
    asyncio.run(run_sql(dsn, sql))


def query(dsn: Dsn, sql: str) -> list[list[str]]:
    return asyncio.run(engine_for(dsn).query(dsn, sql))  # type: ignore[attr-defined]


def staging_keys(env: dict[str, str]) -> list[str]:
    listed = s3_client(env).list_objects_v2(Bucket=env["ENVRESTORE_S3_BUCKET"], Prefix="staging/")
    return [item["Key"] for item in listed.get("Contents", [])]


def history(repo: Path, rev: str = "HEAD") -> str:
    return git(repo, "log", "--format=%H %s", rev)


def code_tree(repo: Path, rev: str = "HEAD") -> str:
    return git(repo, "ls-tree", "-r", rev)


def add_test_env(env: dict[str, str], root: Path, dsn: Dsn) -> dict[str, Any]:
    """shop.test, registered through the CLI, with rows, a file, a commit and a tag of its own."""
    asyncio.run(fill(dsn))
    sql_of(
        dsn,
        "CREATE TABLE only_shop_test (id INT PRIMARY KEY, note TEXT); "
        "INSERT INTO only_shop_test VALUES (1, 'shop.test');",
    )
    files = make_files(root / "files")
    (files / "shop-test.txt").write_text("only in shop.test\n")
    code = make_repo(root / "code", commits=2)
    (code / "site.txt").write_text("shop.test\n")
    git(code, "add", "-A")
    git(code, "commit", "-q", "-m", "the shop.test site")
    git(code, "tag", "-a", "shop-test-1", "-m", "shop.test")
    added = run_cli(
        env,
        "env",
        "add",
        "shop.test",
        "--db",
        dsn_text(dsn),
        "--files",
        str(files),
        "--code",
        str(code),
    )
    assert added.returncode == 0, added.stderr
    return {"dsn": dsn, "files": files, "code": code}


class RecordingServer(http.server.ThreadingHTTPServer):
    """Answers GETs from `routes` (path → body; others 404) and records every path asked."""

    def __init__(self, routes: dict[str, bytes]) -> None:
        super().__init__(("127.0.0.1", 0), RecordingHandler)
        self.routes = routes
        self.seen: list[str] = []


class RecordingHandler(http.server.BaseHTTPRequestHandler):
    server: RecordingServer

    def do_GET(self) -> None:
        self.server.seen.append(self.path)
        body = self.server.routes.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def local_server(routes: dict[str, bytes]) -> Iterator[RecordingServer]:
    """A `RecordingServer` on 127.0.0.1 (a free port), serving from a thread."""
    server = RecordingServer(routes)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# -- the test ------------------------------------------------------------------------------


def test_content_from_anywhere(
    cli_env, worker_pool, site, tmp_path, make_mariadb_db, make_postgres_db
):
    env = cli_env
    engine = site["dsn"].engine
    make_db = make_mariadb_db if engine == "mariadb" else make_postgres_db
    test = add_test_env(env, tmp_path / "test", make_db())
    at_backup = site["before"]  # shop.dev when the `site` fixture backed it up (then changed)
    dev_head = at_backup.head
    original = snap(test)
    assert original.rows != at_backup.rows and original.files != at_backup.files
    assert original.head != at_backup.head and original.tags != at_backup.tags
    [backup] = run_json(env, "backup", "list", "shop.dev")
    parts = {p["part"]: p for p in backup["parts"]}

    # 1. restore shop.test from shop.dev's latest backup.
    restored = run_job(
        env, "restore", "shop.test", "--from", "shop.dev", "--backup", "latest", code=0
    )
    assert restored["status"] == "succeeded", restored
    assert restored["outputs"]["backup_id"] == backup["id"]
    assert snap(test) == at_backup
    assert history(test["code"]) == history(site["code"], dev_head)
    assert code_tree(test["code"]) == code_tree(site["code"], dev_head)
    assert snap(site) == site["changed"]  # the source is only read

    # 2. temporary links: one part, all parts, a TTL past the platform's cap.
    [link] = run_json(env, "backup", "link", "shop.dev", backup["id"], "--part", "database")
    assert (link["backup_id"], link["part"]) == (backup["id"], "database")
    assert datetime.fromisoformat(link["expires_at"]) > datetime.now(UTC)
    fetched = curl(link["url"], tmp_path / "database.download")
    assert fetched.returncode == 0, fetched.stderr
    assert sha256_file(tmp_path / "database.download") == parts["database"]["sha256"]

    every = run_cli(env, "backup", "link", "shop.dev", backup["id"], "--all")
    assert every.returncode == 0, every.stderr
    lines = every.stdout.strip().splitlines()
    assert len(lines) == 3, every.stdout
    by_part = dict(line.split(None, 1) for line in lines)
    assert sorted(by_part) == ["code", "database", "files"]
    assert all(url.startswith(env["ENVRESTORE_S3_ENDPOINT_URL"]) for url in by_part.values())

    capped = {**env, "ENVRESTORE_LINK_MAX_TTL": "600"}
    too_long = run_cli(
        capped, "backup", "link", "shop.dev", backup["id"], "--part", "database", "--ttl", "601"
    )
    assert too_long.returncode == 2, too_long.stderr
    assert "ENVRESTORE_LINK_MAX_TTL" in too_long.stderr and "600" in too_long.stderr
    assert len(too_long.stderr.strip().splitlines()) == 1, too_long.stderr
    assert too_long.stdout == ""

    # 3. import shop.test's database through the link, after changing it.
    sql_of(
        test["dsn"],
        "CREATE TABLE later_work (id INT PRIMARY KEY); INSERT INTO later_work VALUES (7);",
    )
    assert snap(test).rows != at_backup.rows
    imported = run_job(env, "import", "db", "shop.test", "--url", link["url"], code=0)
    after = snap(test)
    assert (after.tables, after.rows) == (at_backup.tables, at_backup.rows)
    assert (after.files, after.head, after.tags) == (
        at_backup.files,
        at_backup.head,
        at_backup.tags,
    )
    shown = run_json(env, "job", "show", imported["id"])
    assert shown["kind"] == "import", shown
    assert shown["status"] == "succeeded", shown
    assert shown["requested_by"].startswith("operator:"), shown["requested_by"]
    assert len(shown["requested_by"]) > len("operator:")
    assert staging_keys(env) == []

    # 4. import shop.test's files from a local zip (uploaded, imported, released).
    tree = make_files(tmp_path / "zipped")
    (tree / "from-the-zip.txt").write_text("uploaded as a zip\n")
    archive = tmp_path / "uploads.zip"
    zip_of(tree, archive)
    unzipped = run_job(env, "import", "files", "shop.test", "--file", str(archive), code=0)
    [upload_key] = [p["upload_key"] for p in unzipped["params"]["parts"] if p.get("upload_key")]
    assert upload_key.startswith("staging/uploads/"), upload_key
    assert tree_digest(test["files"]) == tree_digest(tree)
    after = snap(test)
    assert (after.rows, after.head, after.tags) == (at_backup.rows, at_backup.head, at_backup.tags)
    assert upload_key not in staging_keys(env)
    assert staging_keys(env) == []

    # 5. an expired link and a changed link: failed jobs, nothing touched.
    before = snap(test)
    [short] = run_json(
        env, "backup", "link", "shop.dev", backup["id"], "--part", "database", "--ttl", "1"
    )
    time.sleep(2.1)  # the link lived 1 s (S3 counts from the signature's second)
    assert curl(short["url"], tmp_path / "expired").returncode != 0  # S3 refuses it too
    expired = run_job(env, "import", "db", "shop.test", "--url", short["url"], code=5)
    assert_refused(expired, "fetch", "expired")
    assert snap(test) == before

    changed_url = tamper(link["url"])
    assert curl(changed_url, tmp_path / "tampered").returncode != 0  # S3 refuses it too
    tampered = run_job(env, "import", "db", "shop.test", "--url", changed_url, code=5)
    assert_refused(tampered, "fetch", "not one envrestore issued")
    assert "X-Amz-Signature" not in tampered["error"]
    assert snap(test) == before

    # 7. a URL the SSRF rules refuse: a local server that is not allowlisted.
    dump = (tmp_path / "database.download").read_bytes()
    with local_server({"/dump.sql.gz": dump}) as server:
        url = f"http://127.0.0.1:{server.server_port}/dump.sql.gz"
        refused = run_job(env, "import", "db", "shop.test", "--url", url, code=5)
        assert server.seen == []
        # The server does answer: no request reached it because none was made.
        assert curl(url, tmp_path / "direct").returncode == 0
        assert server.seen == ["/dump.sql.gz"]
    assert_refused(
        refused,
        "fetch",
        "127.0.0.1 (loopback), not a public address",
        "ENVRESTORE_IMPORT_ALLOW_HOSTS",
    )
    assert snap(test) == before
    wait_for(lambda: staging_keys(env) == [], timeout=30, what="staging to be released")

    if engine == "mariadb":
        import_pantheon_backup(env, site, tmp_path, make_mariadb_db)

    # Checked last, so that every step above runs even while this fails: `--all` prints
    # `part<TAB>url` lines (a script splits them on the tab), not columns of spaces.
    assert all(line.count("\t") == 1 for line in lines), [line[:40] for line in lines]


def import_pantheon_backup(
    env: dict[str, str], site: dict[str, Any], tmp_path: Path, make_mariadb_db: Any
) -> None:
    """6. The three files of a Pantheon backup, given as paths, make shop.dev that site."""
    live_db = make_mariadb_db()
    sql_of(live_db, WORDPRESS)
    live_files = make_files(tmp_path / "pantheon" / "files")
    (live_files / "2026" / "11" / "header.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 500)
    live_code = make_repo(tmp_path / "pantheon" / "code", commits=4)
    (live_code / "wp-config.php").write_text("<?php // Pantheon's wp-config\n")
    git(live_code, "add", "-A")
    git(live_code, "commit", "-q", "-m", "deploy")
    git(live_code, "tag", "-a", "pantheon_live_7", "-m", "deployed to live")
    live = asyncio.run(snapshot(live_db, live_files, live_code))
    current = snap(site)
    assert live.rows != current.rows and live.files != current.files
    assert live.head != current.head and live.tags != current.tags

    backup = make_pantheon_backup(
        tmp_path / "download",
        site="shop",
        env="live",
        moment=datetime(2026, 11, 26, 10, 33, tzinfo=UTC),
        code_repo=live_code,
        files_dir=live_files,
        dump_sql=mariadb_dump(live_db),
    )
    view = run_job(
        env,
        "import",
        "site",
        "shop.dev",
        "--code",
        str(backup["code"]),
        "--database",
        str(backup["database"]),
        "--files",
        str(backup["files"]),
        code=0,
    )
    assert view["status"] == "succeeded", view
    assert snap(site) == live  # tables, rows, files, HEAD, tags, a clean working tree
    assert tree_digest(site["files"]) == tree_digest(live_files)
    assert history(site["code"]) == history(live_code)
    assert git(site["code"], "describe", "--tags") == "pantheon_live_7"
    # The site works: its options are there, and a query joining its tables answers.
    siteurl = "SELECT option_value FROM wp_options WHERE option_name = 'siteurl'"
    assert query(site["dsn"], siteurl) == [["https://live-shop.pantheonsite.io"]]
    assert query(site["dsn"], PUBLISHED_BY_AUTHOR) == query(live_db, PUBLISHED_BY_AUTHOR)
    assert query(site["dsn"], PUBLISHED_BY_AUTHOR) == [["admin", "160"], ["editor", "160"]]
    assert staging_keys(env) == []
    # The files given by path went through staging/uploads/, and were released.
    assert all(
        (p.get("upload_key") or "").startswith("staging/uploads/") for p in view["params"]["parts"]
    ), view["params"]
