"""Where a restore's or import's parts come from, on real services, checked as a user would.

Sources: another environment's backup (same site or another), temporary links
to a backup's parts, URLs served by a local HTTP server, uploads into
`staging/uploads/`, and a backup made the way Pantheon makes them. Every
environment starts with content of its own (rows, files, commits, tags), so
"the target now equals the source" holds only if the job made it so; every
refusal leaves the target's snapshot exactly as it was.
"""

from __future__ import annotations

import asyncio
import bz2
import gzip
import hashlib
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
import zstandard

from envrestore.pipelines.backup.service import BackupRecord, list_backups
from envrestore.pipelines.engines import engine_for
from envrestore.pipelines.errors import BadInput
from envrestore.pipelines.jobs.outbox import relay_once
from envrestore.pipelines.jobs.runner import run_step
from envrestore.pipelines.jobs.views import list_jobs, show_job
from envrestore.pipelines.objectstore.resumable import (
    file_identity,
    staging_upload_key,
    upload_file,
)
from envrestore.pipelines.requests import ImportRequest, LinkRequest, PartInput
from tests.support.content import snapshot
from tests.support.driver import drive, settled
from tests.support.environments import (
    SiteEnv,
    assert_all_differ,
    assert_failed,
    dump_sql,
    local_servers,
    run_sql,
    staging_keys,
    streamed,
    tar_of,
    with_settings,
    zip_of,
)
from tests.support.pantheon import make_pantheon_backup
from tests.support.producing import (
    producer,
    submit_backup,
    submit_import,
    submit_restore,
    submit_rollback,
)
from tests.support.sites import git, make_files, make_repo, tags_of, tree_digest

pytestmark = pytest.mark.integration


async def backup_of(rt, target: str) -> BackupRecord:
    job = await submit_backup(rt, target)
    view = await drive(rt, job.job_id)
    assert view["status"] == "succeeded", view
    [record] = [b for b in await list_backups(rt.pool, target) if b.job_id == job.job_id]
    return record


async def change(env: SiteEnv, tag: str) -> None:
    """New rows, a new file, a new commit and tag: the environment after some work."""
    table = "later_" + tag.replace("-", "_")
    await run_sql(
        env.dsn, f"CREATE TABLE {table} (id INT PRIMARY KEY); INSERT INTO {table} VALUES (7);"
    )
    (env.files / f"{tag}.txt").write_text(f"{tag}\n")
    (env.code / f"{tag}.php").write_text(f"<?php // {tag}\n")
    git(env.code, "add", "-A")
    git(env.code, "commit", "-q", "-m", tag)
    git(env.code, "tag", "-a", tag, "-m", tag)


async def job_count(rt) -> int:
    return len(await list_jobs(rt.pool, limit=1000))


# -- 1. restores from another environment's backup -----------------------------------------


async def test_restore_from_another_environment_of_the_site(runtime, make_env):
    dev = await make_env("shop.dev")
    test = await make_env("shop.test")
    backup = await backup_of(runtime, "shop.dev")
    source = await dev.snapshot()
    before = await test.snapshot()
    assert_all_differ(source, before)

    job = await submit_restore(runtime, "shop.test", source="shop.dev")
    view = await drive(runtime, job.job_id)

    assert view["status"] == "succeeded", view
    assert view["requested_by"] == "operator:tests"
    assert view["outputs"]["backup_id"] == backup.id
    assert await test.snapshot() == source
    assert await dev.snapshot() == source  # the source is only read
    assert git(test.code, "log", "--format=%H %s") == git(dev.code, "log", "--format=%H %s")


@pytest.mark.parametrize("engine", ["postgresql"], indirect=True)
async def test_restore_from_another_sites_backup_by_id(runtime, make_env):
    shop = await make_env("shop.dev")
    blog = await make_env("blog.dev")
    first = await backup_of(runtime, "blog.dev")
    at_first = await blog.snapshot()
    await change(blog, "after-first")
    await backup_of(runtime, "blog.dev")  # the newer one must not be the one restored
    before = await shop.snapshot()
    assert_all_differ(at_first, before)

    # Another site's code needs a strategy: its history is not shop's.
    with pytest.raises(BadInput, match="--code-strategy overwrite"):
        await submit_restore(runtime, "shop.dev", source="blog.dev", backup=first.id)
    job = await submit_restore(
        runtime, "shop.dev", source="blog.dev", backup=first.id, code_strategy="overwrite"
    )
    view = await drive(runtime, job.job_id)

    assert view["status"] == "succeeded", view
    assert view["outputs"]["backup_id"] == first.id
    after = await shop.snapshot()
    assert (after.tables, after.rows, after.files) == (
        at_first.tables,
        at_first.rows,
        at_first.files,
    )
    # shop's code: one new commit on its own history whose tree is blog's at the backup.
    assert git(shop.code, "rev-parse", "HEAD^") == before.head
    assert git(shop.code, "rev-parse", "HEAD^{tree}") == git(
        blog.code, "rev-parse", f"{at_first.head}^{{tree}}"
    )
    assert "blog.dev's backup" in git(shop.code, "log", "-1", "--format=%s")
    assert (after.tags, after.status) == (before.tags, "")


@pytest.mark.parametrize("engine", ["mariadb"], indirect=True)
async def test_restore_from_the_latest_backup_of_the_source(runtime, make_env):
    dev = await make_env("shop.dev")
    test = await make_env("shop.test")
    first = await backup_of(runtime, "shop.dev")
    await change(dev, "second")
    # Backup times have whole seconds (Pantheon's names): two backups in the same second
    # are ordered by the random end of their ids, so the newer one is made a second later.
    next_second = first.created_at + timedelta(seconds=1)
    await asyncio.sleep(max(0.0, (next_second - datetime.now(UTC)).total_seconds()) + 0.01)
    latest = await backup_of(runtime, "shop.dev")
    assert latest.created_at > first.created_at
    at_latest = await dev.snapshot()
    await change(dev, "not-backed-up")  # live content after the backup is not what is restored

    job = await submit_restore(runtime, "shop.test", source="shop.dev", backup="latest")
    view = await drive(runtime, job.job_id)

    assert view["status"] == "succeeded", view
    assert view["outputs"]["backup_id"] == latest.id
    assert await test.snapshot() == at_latest
    assert "second" in tags_of(test.code) and "not-backed-up" not in tags_of(test.code)


@pytest.mark.parametrize("engine", ["postgresql"], indirect=True)
async def test_a_backup_of_another_environment_than_the_source_is_refused(runtime, make_env):
    await make_env("shop.dev")
    test = await make_env("shop.test")
    await make_env("blog.dev")
    await backup_of(runtime, "shop.dev")
    blogs = await backup_of(runtime, "blog.dev")
    before = await test.snapshot()
    jobs = await job_count(runtime)

    with pytest.raises(BadInput, match=f"backup {blogs.id} belongs to blog.dev, not shop.dev"):
        await submit_restore(runtime, "shop.test", source="shop.dev", backup=blogs.id)

    assert await job_count(runtime) == jobs
    assert await test.snapshot() == before


async def test_a_database_of_the_other_engine_is_refused_but_files_and_code_restore(
    runtime, make_env, other_db
):
    test = await make_env("shop.test")
    other = await make_env("blog.dev", make_db=other_db)
    await backup_of(runtime, "blog.dev")
    source = await other.snapshot()
    before = await test.snapshot()
    jobs = await job_count(runtime)

    with pytest.raises(BadInput, match="engine") as refused:
        await submit_restore(runtime, "shop.test", source="blog.dev")
    assert f"holds a {other.engine} database, but shop.test runs {test.engine}" in str(
        refused.value
    )
    assert await job_count(runtime) == jobs
    assert await test.snapshot() == before

    job = await submit_restore(
        runtime, "shop.test", source="blog.dev", element="files,code", code_strategy="overwrite"
    )
    view = await drive(runtime, job.job_id)
    assert view["status"] == "succeeded", view
    after = await test.snapshot()
    assert after.files == source.files
    assert (after.tables, after.rows) == (before.tables, before.rows)
    # blog's tree as one commit on shop.test's history; shop's tags kept.
    assert git(test.code, "rev-parse", "HEAD^") == before.head
    assert git(test.code, "rev-parse", "HEAD^{tree}") == git(other.code, "rev-parse", "HEAD^{tree}")
    assert (after.tags, after.status) == (before.tags, "")


# -- 2. temporary links --------------------------------------------------------------------


def curl(url: str, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-fsS", "--max-time", "20", url, "-o", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tamper(url: str) -> str:
    """`url` with one hex character of its X-Amz-Signature changed."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    changed = []
    for name, value in query:
        if name == "X-Amz-Signature":
            value = ("1" if value[0] != "1" else "2") + value[1:]
        changed.append((name, value))
    assert changed != query
    return urlunsplit(parts._replace(query=urlencode(changed)))


@pytest.mark.parametrize("engine", ["mariadb"], indirect=True)
async def test_links_download_the_parts_and_are_recorded(runtime, make_env, tmp_path):
    await make_env("shop.dev")
    backup = await backup_of(runtime, "shop.dev")
    parts = {p["part"]: p for p in backup.parts}

    links = await producer(runtime).link(
        LinkRequest("shop.dev", backup.id, ("database", "files", "code"), 300)
    )

    assert sorted(link.part for link in links) == ["code", "database", "files"]
    assert len({link.url for link in links}) == 3
    for link in links:
        out = tmp_path / f"{link.part}.download"
        done = curl(link.url, out)
        assert done.returncode == 0, done.stderr
        assert sha256_file(out) == parts[link.part]["sha256"]
        assert out.stat().st_size == parts[link.part]["size"]
    rows = await runtime.pool.fetch(
        "SELECT part, key, requested_by, expires_at FROM links WHERE backup_id = $1", backup.id
    )
    assert sorted(r["part"] for r in rows) == ["code", "database", "files"]
    for row in rows:
        assert row["requested_by"] == "operator:tests"
        assert row["key"] == parts[row["part"]]["key"]
        left = (row["expires_at"] - datetime.now(UTC)).total_seconds()
        assert 0 < left <= 300

    with pytest.raises(BadInput, match="ENVRESTORE_LINK_MAX_TTL"):
        await producer(runtime).link(
            LinkRequest("shop.dev", backup.id, ("database",), runtime.settings.link_max_ttl + 1)
        )
    assert await runtime.pool.fetchval("SELECT count(*) FROM links") == 3


@pytest.mark.parametrize("engine", ["postgresql"], indirect=True)
async def test_an_expired_link_is_refused_by_s3_and_by_an_import(runtime, make_env, tmp_path):
    await make_env("shop.dev")
    test = await make_env("shop.test")
    backup = await backup_of(runtime, "shop.dev")
    [link] = await producer(runtime).link(LinkRequest("shop.dev", backup.id, ("database",), 1))
    before = await test.snapshot()
    await asyncio.sleep(2.1)  # the link lived 1 s (S3 counts from the signature's second)

    done = curl(link.url, tmp_path / "expired")
    assert done.returncode != 0
    assert "403" in done.stderr, done.stderr

    job = await submit_import(runtime, "shop.test", database=link.url)
    view = await drive(runtime, job.job_id)
    assert_failed(view, "fetch", "expired", "envrestore backup link")
    assert await test.snapshot() == before
    assert await staging_keys(runtime) == []


@pytest.mark.parametrize("engine", ["mariadb"], indirect=True)
async def test_a_tampered_link_is_refused(runtime, make_env, tmp_path):
    await make_env("shop.dev")
    test = await make_env("shop.test")
    backup = await backup_of(runtime, "shop.dev")
    [link] = await producer(runtime).link(LinkRequest("shop.dev", backup.id, ("database",), 300))
    tampered = tamper(link.url)
    before = await test.snapshot()

    assert curl(tampered, tmp_path / "tampered").returncode != 0  # S3 refuses it too
    job = await submit_import(runtime, "shop.test", database=tampered)
    view = await drive(runtime, job.job_id)
    assert_failed(view, "fetch", "not one envrestore issued")
    assert "X-Amz-Signature" not in view["error"]
    assert await test.snapshot() == before


async def test_a_link_imports_into_another_environment(runtime, make_env):
    dev = await make_env("shop.dev")
    test = await make_env("shop.test")
    backup = await backup_of(runtime, "shop.dev")
    links = await producer(runtime).link(
        LinkRequest("shop.dev", backup.id, ("database", "files"), 300)
    )
    url = {link.part: link.url for link in links}
    source = await dev.snapshot()
    before = await test.snapshot()
    assert_all_differ(source, before)

    job = await submit_import(runtime, "shop.test", database=url["database"], files=url["files"])
    view = await drive(runtime, job.job_id)

    assert view["status"] == "succeeded", view
    after = await test.snapshot()
    assert (after.tables, after.rows, after.files) == (source.tables, source.rows, source.files)
    assert (after.head, after.tags) == (before.head, before.tags)  # code was not asked for
    assert await staging_keys(runtime) == []
    assert (view["kind"], view["requested_by"]) == ("import", "operator:tests")

    # An import keeps a rollback point like a restore: undoing it brings back test's own.
    undo = await submit_rollback(runtime, job.job_id)
    assert (await drive(runtime, undo.job_id))["status"] == "succeeded"
    assert await test.snapshot() == before


# -- 3. imports from URLs ------------------------------------------------------------------


async def test_import_from_an_allowlisted_url(runtime, make_env):
    dev = await make_env("shop.dev")
    test = await make_env("shop.test")
    source = await dev.snapshot()
    before = await test.snapshot()
    assert_all_differ(source, before)
    dump = gzip.compress(await dump_sql(dev.dsn))
    files = tar_of(dev.files, "files_dev")

    async with local_servers() as start:
        server = await start({"/shop.sql.gz": dump, "/uploads.tar.gz": files})
        rt = with_settings(runtime, import_allow_hosts=[server.allow])
        job = await submit_import(
            rt,
            "shop.test",
            database=server.url("/shop.sql.gz"),
            files=server.url("/uploads.tar.gz"),
        )
        view = await drive(rt, job.job_id)

    assert view["status"] == "succeeded", view
    assert sorted(server.seen) == ["/shop.sql.gz", "/uploads.tar.gz"]
    after = await test.snapshot()
    assert (after.tables, after.rows, after.files) == (source.tables, source.rows, source.files)
    assert (after.head, after.tags) == (before.head, before.tags)
    assert await staging_keys(runtime) == []


@pytest.mark.parametrize("engine", ["postgresql"], indirect=True)
async def test_a_url_not_on_the_allowlist_gets_no_request(runtime, make_env):
    dev = await make_env("shop.dev")
    test = await make_env("shop.test")
    before = await test.snapshot()

    async with local_servers() as start:
        server = await start({"/shop.sql.gz": gzip.compress(await dump_sql(dev.dsn))})
        job = await submit_import(runtime, "shop.test", database=server.url("/shop.sql.gz"))
        view = await drive(runtime, job.job_id)

    assert_failed(view, "fetch", "127.0.0.1 (loopback), not a public address")
    assert "ENVRESTORE_IMPORT_ALLOW_HOSTS" in view["error"]
    assert server.seen == []
    assert await test.snapshot() == before
    assert await staging_keys(runtime) == []


@pytest.mark.parametrize("engine", ["mariadb"], indirect=True)
@pytest.mark.parametrize("length", ["chunked", "content-length"])
async def test_a_download_over_the_import_limit_is_refused(runtime, make_env, length):
    dev = await make_env("shop.dev")
    test = await make_env("shop.test")
    before = await test.snapshot()
    dump = gzip.compress(await dump_sql(dev.dsn))
    limit = len(dump) // 2

    async with local_servers() as start:
        served = streamed(dump) if length == "chunked" else dump
        server = await start({"/shop.sql.gz": served})
        rt = with_settings(runtime, import_allow_hosts=[server.allow], import_max_bytes=limit)
        job = await submit_import(rt, "shop.test", database=server.url("/shop.sql.gz"))
        view = await drive(rt, job.job_id)

    said = "was cut off at" if length == "chunked" else f"it is {len(dump)} bytes (Content-Length)"
    assert_failed(view, "fetch", said, f"ENVRESTORE_IMPORT_MAX_BYTES ({limit} bytes)")
    assert server.seen == ["/shop.sql.gz"]  # asked once: a refusal is not retried
    assert await test.snapshot() == before
    assert await staging_keys(runtime) == []


def pack_dump(sql: bytes, form: str, tmp_path: Path) -> bytes:
    if form == "sql":
        return sql
    if form == "bz2":
        return bz2.compress(sql)
    if form == "zst":
        return zstandard.ZstdCompressor(level=3).compress(sql)
    assert form == "zip"
    (tmp_path / "zipped").mkdir()
    (tmp_path / "zipped" / "shop.sql").write_bytes(sql)
    return zip_of(tmp_path / "zipped", tmp_path / "dump.zip")


# Served under names that say nothing true: the format is read from the bytes.
DUMP_FORMATS = [
    ("sql", "/dump.txt"),
    ("bz2", "/dump.sql.gz"),
    ("zst", "/export.tar"),
    ("zip", "/db"),
]


@pytest.mark.parametrize(("form", "path"), DUMP_FORMATS, ids=[f for f, _ in DUMP_FORMATS])
async def test_dump_formats_are_recognised_by_content(runtime, make_env, tmp_path, form, path):
    dev = await make_env("shop.dev")
    test = await make_env("shop.test")
    source = await dev.snapshot()
    before = await test.snapshot()
    served = pack_dump(await dump_sql(dev.dsn), form, tmp_path)

    async with local_servers() as start:
        server = await start({path: served})
        rt = with_settings(runtime, import_allow_hosts=[server.allow])
        job = await submit_import(rt, "shop.test", database=server.url(path))
        view = await drive(rt, job.job_id)

    assert view["status"] == "succeeded", view
    after = await test.snapshot()
    assert (after.tables, after.rows) == (source.tables, source.rows)
    assert (after.files, after.head) == (before.files, before.head)
    assert await staging_keys(runtime) == []


def pack_files(directory: Path, form: str, tmp_path: Path) -> bytes:
    if form == "tar":
        return tar_of(directory, "files_live", mode="w")
    if form == "tar.bz2":
        return tar_of(directory, None, mode="w:bz2")
    if form == "zip":
        return zip_of(directory, tmp_path / "files.zip")
    if form == "tgz-files-folder":
        return tar_of(directory, "files")
    assert form == "tgz-at-root"
    return tar_of(directory, None)


FILES_FORMATS = [
    ("tar", "/files.tar.gz"),
    ("tar.bz2", "/files.zip"),
    ("zip", "/files.tar"),
    ("tgz-files-folder", "/uploads"),
    ("tgz-at-root", "/files.txt"),
]


@pytest.mark.parametrize("engine", ["postgresql"], indirect=True)
@pytest.mark.parametrize(("form", "path"), FILES_FORMATS, ids=[f for f, _ in FILES_FORMATS])
async def test_files_formats_are_recognised_by_content(runtime, make_env, tmp_path, form, path):
    dev = await make_env("shop.dev")
    test = await make_env("shop.test")
    source = await dev.snapshot()
    before = await test.snapshot()
    served = pack_files(dev.files, form, tmp_path)

    async with local_servers() as start:
        server = await start({path: served})
        rt = with_settings(runtime, import_allow_hosts=[server.allow])
        job = await submit_import(rt, "shop.test", files=server.url(path))
        view = await drive(rt, job.job_id)

    assert view["status"] == "succeeded", view
    after = await test.snapshot()
    assert after.files == source.files
    assert (after.rows, after.head) == (before.rows, before.head)
    assert await staging_keys(runtime) == []


# -- 4. uploads ----------------------------------------------------------------------------


async def upload(runtime, path: Path):
    return await upload_file(
        runtime.store, path, staging_upload_key(path.name, file_identity(path))
    )


async def drive_until_settled(runtime, job_id, *, timeout: float = 120.0) -> dict:
    """Like `drive` (every job's messages delivered), but returns once this job has settled.

    `drive` goes on while any message is due, and a job that ends wakes the steps
    waiting for its lease: it would run the next job too. Here those stay queued.
    """
    deadline = asyncio.get_running_loop().time() + timeout
    while not settled(view := await show_job(runtime.pool, job_id)):
        assert asyncio.get_running_loop().time() < deadline, f"job {job_id} did not settle"
        sent: list = []
        await relay_once(runtime.pool, lambda j, s: sent.append((j, s)))
        if sent:
            await asyncio.gather(*(run_step(runtime, j, s) for j, s in sent))
        else:
            await asyncio.sleep(0.05)
    return view


@pytest.mark.parametrize("engine", ["postgresql"], indirect=True)
async def test_an_uploaded_dump_imports_and_the_upload_is_released(runtime, make_env, tmp_path):
    dev = await make_env("shop.dev")
    test = await make_env("shop.test")
    source = await dev.snapshot()
    before = await test.snapshot()
    path = tmp_path / "shop.sql.gz"
    path.write_bytes(gzip.compress(await dump_sql(dev.dsn)))
    put = await upload(runtime, path)
    assert put.key.startswith("staging/uploads/")
    assert (put.size, put.sha256) == (path.stat().st_size, sha256_file(path))

    part = PartInput("database", upload_key=put.key, size=put.size, sha256=put.sha256)
    job = await producer(runtime).submit(ImportRequest("shop.test", (part,)))
    # The same file imported again (a second click without a key, or into another
    # environment) is the same upload object: the first job to end must not delete
    # it from under a job that has yet to read it. This one waits behind the lease.
    second = await producer(runtime).submit(ImportRequest("shop.test", (part,)))
    view = await drive_until_settled(runtime, job.job_id)

    assert view["status"] == "succeeded", view
    after = await test.snapshot()
    assert (after.tables, after.rows) == (source.tables, source.rows)
    assert (after.files, after.head) == (before.files, before.head)
    waiting = await show_job(runtime.pool, second.job_id)
    assert {s["name"]: s["status"] for s in waiting["steps"]}["fetch"] == "pending", waiting
    assert await runtime.store.head(put.key) is not None  # the second job still needs it
    assert (await drive(runtime, second.job_id))["status"] == "succeeded"
    assert (await test.snapshot()).rows == source.rows
    assert await runtime.store.head(put.key) is None
    assert await staging_keys(runtime) == []


@pytest.mark.parametrize("engine", ["mariadb"], indirect=True)
async def test_an_upload_whose_sha256_is_wrong_fails_verify(runtime, make_env, tmp_path):
    dev = await make_env("shop.dev")
    test = await make_env("shop.test")
    before = await test.snapshot()
    path = tmp_path / "shop.sql.gz"
    path.write_bytes(gzip.compress(await dump_sql(dev.dsn)))
    put = await upload(runtime, path)
    wrong = hashlib.sha256(b"another file").hexdigest()

    request = ImportRequest(
        "shop.test", (PartInput("database", upload_key=put.key, size=put.size, sha256=wrong),)
    )
    job = await producer(runtime).submit(request)
    view = await drive(runtime, job.job_id)

    assert_failed(view, "import_db", "verify failed for the database part")
    assert await test.snapshot() == before
    assert await runtime.store.head(put.key) is None  # released when the job ended


# -- 5. a Pantheon backup ------------------------------------------------------------------

WORDPRESS = """
CREATE TABLE wp_users (
  ID BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  user_login VARCHAR(60) NOT NULL, user_email VARCHAR(100) NOT NULL, user_registered DATETIME
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
INSERT INTO wp_users (user_login, user_email, user_registered) VALUES
  ('admin', 'admin@shop.example', '2024-01-02 03:04:05'),
  ('editor', 'editor@shop.example', '2024-02-03 04:05:06');
CREATE TABLE wp_options (
  option_id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  option_name VARCHAR(191) NOT NULL UNIQUE, option_value LONGTEXT NOT NULL,
  autoload VARCHAR(20) NOT NULL DEFAULT 'yes'
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
INSERT INTO wp_options (option_name, option_value) VALUES
  ('siteurl', 'https://live-shop.pantheonsite.io'), ('home', 'https://live-shop.pantheonsite.io'),
  ('blogname', 'Shöp ☃'), ('active_plugins', 'a:1:{i:0;s:19:"akismet/akismet.php";}');
CREATE TABLE wp_posts (
  ID BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  post_author BIGINT UNSIGNED NOT NULL, post_date DATETIME NOT NULL,
  post_title TEXT NOT NULL, post_content LONGTEXT NOT NULL,
  post_status VARCHAR(20) NOT NULL, post_type VARCHAR(20) NOT NULL,
  KEY post_author (post_author)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
INSERT INTO wp_posts (post_author, post_date, post_title, post_content, post_status, post_type)
  SELECT 1 + seq % 2, '2025-06-01 12:00:00' + INTERVAL seq HOUR, CONCAT('Post ', seq, ' — ☃'),
         REPEAT('<p>Lorem ipsum "quoted" \\'text\\'</p>', 20),
         IF(seq % 5 = 0, 'draft', 'publish'), IF(seq % 10 = 0, 'page', 'post')
  FROM seq_1_to_400;
CREATE TABLE wp_postmeta (
  meta_id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  post_id BIGINT UNSIGNED NOT NULL, meta_key VARCHAR(255), meta_value LONGTEXT,
  KEY post_id (post_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
INSERT INTO wp_postmeta (post_id, meta_key, meta_value)
  SELECT seq, '_thumbnail_id', seq * 3 FROM seq_1_to_400;
CREATE TABLE _pantheon_heartbeat (id INT PRIMARY KEY, ts DATETIME NOT NULL);
INSERT INTO _pantheon_heartbeat VALUES (1, '2026-11-26 10:32:59');
"""

PUBLISHED_BY_AUTHOR = (
    "SELECT u.user_login, COUNT(*) FROM wp_posts p JOIN wp_users u ON u.ID = p.post_author "
    "JOIN wp_postmeta m ON m.post_id = p.ID AND m.meta_key = '_thumbnail_id' "
    "WHERE p.post_status = 'publish' AND p.post_type = 'post' GROUP BY u.user_login "
    "ORDER BY u.user_login"
)


def mariadb_dump(dsn) -> bytes:
    """`mysqldump --single-transaction --quick pantheon` as Pantheon runs it (no envrestore options)."""
    return subprocess.run(
        [
            "mariadb-dump",
            "--protocol=TCP",
            f"--host={dsn.host}",
            f"--port={dsn.port}",
            f"--user={dsn.user}",
            "--single-transaction",
            "--quick",
            dsn.database,
        ],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout


@pytest.mark.parametrize("engine", ["mariadb"], indirect=True)
async def test_a_pantheon_backup_imports_as_a_working_site(
    runtime, make_env, make_mariadb_db, tmp_path
):
    target = await make_env("shop.dev")
    before = await target.snapshot()

    # The site as it runs on Pantheon's live environment.
    live_db = make_mariadb_db()
    await run_sql(live_db, WORDPRESS)
    live_files = make_files(tmp_path / "pantheon" / "files")
    (live_files / "2026" / "11" / "header.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 500)
    live_code = make_repo(tmp_path / "pantheon" / "code", commits=4)
    (live_code / "wp-config.php").write_text("<?php // Pantheon's wp-config\n")
    git(live_code, "add", "-A")
    git(live_code, "commit", "-q", "-m", "deploy")
    git(live_code, "tag", "-a", "pantheon_live_7", "-m", "deployed to live")
    live = await snapshot(live_db, live_files, live_code)
    assert_all_differ(live, before)

    parts = make_pantheon_backup(
        tmp_path / "download",
        site="shop",
        env="live",
        moment=datetime(2026, 11, 26, 10, 33, tzinfo=UTC),
        code_repo=live_code,
        files_dir=live_files,
        dump_sql=mariadb_dump(live_db),
    )

    async with local_servers() as start:
        server = await start({f"/{path.name}": path.read_bytes() for path in parts.values()})
        rt = with_settings(runtime, import_allow_hosts=[server.allow])
        request = ImportRequest(
            "shop.dev",
            tuple(
                PartInput(element, url=server.url(f"/{path.name}"))
                for element, path in parts.items()
            ),
        )
        job = await producer(rt).submit(request)
        view = await drive(rt, job.job_id)

    assert view["status"] == "succeeded", view
    after = await target.snapshot()
    assert after == live  # tables, rows, files, HEAD, tags, a clean working tree
    assert tree_digest(target.files) == tree_digest(live_files)
    assert git(target.code, "log", "--format=%H %s") == git(live_code, "log", "--format=%H %s")
    assert git(target.code, "describe", "--tags") == "pantheon_live_7"

    # The site works: its options are there, and a query joining its tables answers.
    [[siteurl]] = await run_query(
        target, "SELECT option_value FROM wp_options WHERE option_name = 'siteurl'"
    )
    assert siteurl == "https://live-shop.pantheonsite.io"
    assert await run_query(target, PUBLISHED_BY_AUTHOR) == await run_query_dsn(
        live_db, PUBLISHED_BY_AUTHOR
    )
    assert await run_query(target, PUBLISHED_BY_AUTHOR) == [["admin", "160"], ["editor", "160"]]
    assert await staging_keys(runtime) == []


async def run_query(env: SiteEnv, sql: str) -> list[list[str]]:
    return await run_query_dsn(env.dsn, sql)


async def run_query_dsn(dsn, sql: str) -> list[list[str]]:
    return await engine_for(dsn).query(dsn, sql)  # type: ignore[attr-defined]
