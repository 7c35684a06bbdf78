"""Moving content between environments and sites, as a user runs it: the CLI, real workers.

One test per engine (starting workers and registering sites is the slow part):

1. `env clone-content shop.dev shop.live` brings dev's WordPress database and
   files into the protected live without `--force-live`; dev's URL is rewritten
   to live's in every spelling (plain, protocol-relative, JSON-escaped,
   URL-encoded, inside serialized PHP with its byte lengths recomputed), the
   job reports what it rewrote, and `rollback` brings live's own content back.
2. Another site's code (blog.dev, an unrelated history with disjoint files)
   restored into shop.dev needs `--code-strategy`; with `merge` shop's HEAD is
   a merge of both histories.
3. (MariaDB) `--code-strategy revert` after a new commit: one new commit on top
   whose tree is the backup's.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest

from envrestore.pipelines.dsn import Dsn
from envrestore.pipelines.engines import engine_for
from tests.e2e.conftest import dsn_text, snap
from tests.support.environments import dump_sql, run_sql
from tests.support.sites import git, make_files, make_repo, tags_of, tree_digest
from tests.support.workers import run_cli, run_json

pytestmark = pytest.mark.e2e

DEV_URL = "https://dev.shop.example"
LIVE_URL = "https://www.shop.example"
#: An extra pair given with --search-replace. The two URLs have the same length, so this
#: pair (8 bytes -> 5 bytes, 4 characters) is what makes serialized lengths change, and
#: in bytes, not characters.
PAIR = ("Dev Shop", "Shöp")


# -- PHP serialization: the test's own writer and a strict reader ----------------------------


def php_serialize(value: Any) -> str:
    """PHP's serialize() for str, int, bool, list and dict (lengths in UTF-8 bytes)."""
    if isinstance(value, bool):
        return f"b:{int(value)};"
    if isinstance(value, int):
        return f"i:{value};"
    if isinstance(value, str):
        return f's:{len(value.encode())}:"{value}";'
    items = value.items() if isinstance(value, dict) else enumerate(value)
    body = "".join(php_serialize(k) + php_serialize(v) for k, v in items)
    return f"a:{len(value)}:{{{body}}}"


class StrictReader:
    """unserialize() that fails on any length, count or delimiter that is not exact."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def expect(self, token: bytes) -> None:
        end = self.pos + len(token)
        assert self.data[self.pos : end] == token, (token, self.pos, self.data)
        self.pos = end

    def number(self, stop: bytes) -> int:
        end = self.data.index(stop, self.pos)
        text = self.data[self.pos : end].decode()
        assert re.fullmatch(r"-?\d+", text), (text, self.data)
        self.pos = end + len(stop)
        return int(text)

    def value(self) -> Any:
        kind = self.data[self.pos : self.pos + 2]
        self.pos += 2
        if kind == b"i:":
            return self.number(b";")
        if kind == b"b:":
            flag = self.number(b";")
            assert flag in (0, 1), self.data
            return bool(flag)
        if kind == b"s:":
            size = self.number(b':"')
            text = self.data[self.pos : self.pos + size]
            self.pos += size
            self.expect(b'";')
            return text.decode()  # a length that cuts a character fails here
        assert kind == b"a:", (kind, self.pos, self.data)
        count = self.number(b":{")
        items = {}
        for _ in range(count):
            key = self.value()
            items[key] = self.value()
        self.expect(b"}")
        if list(items) == list(range(count)):
            return list(items.values())
        return items

    @classmethod
    def load(cls, data: bytes) -> Any:
        reader = cls(data)
        result = reader.value()
        assert reader.pos == len(data), ("trailing bytes", data)
        return result


def moved(value: Any) -> Any:
    """What the clone should make of dev's value: live's URL, and the --search-replace pair."""
    if isinstance(value, str):
        return value.replace("dev.shop.example", "www.shop.example").replace(*PAIR)
    if isinstance(value, list):
        return [moved(v) for v in value]
    if isinstance(value, dict):
        return {k: moved(v) for k, v in value.items()}  # keys are never rewritten
    return value


# -- WordPress-like content -------------------------------------------------------------------

INNER = ["https://dev.shop.example/inner", "Dev Shop"]
SETTINGS = {
    "home": DEV_URL,
    "name": "Dev Shop",
    "links": [f"{DEV_URL}/cart", "//dev.shop.example/cdn/logo.png"],
    "greeting": "héllo ☃",
    "count": 3,
    "enabled": True,
    # WordPress double-serializes: a serialized string inside a serialized array.
    "nested": php_serialize(INNER),
}
POST_CONTENT = (
    f'<p>Welcome to Dev Shop. <a href="{DEV_URL}/about">About</a></p>'
    '<img src="//dev.shop.example/logo.png">'
    '<!-- wp:image {"url":"https:\\/\\/dev.shop.example\\/wp-content\\/uploads\\/a.jpg"} -->'
    '<a href="/share?u=https%3A%2F%2Fdev.shop.example%2Fabout">share</a>'
)
DEV_OPTIONS = {
    "siteurl": DEV_URL,
    "home": DEV_URL,
    "blogname": "Dev Shop",
    "admin_note": "no URL here ☃",
    "shop_settings": php_serialize(SETTINGS),
}
DEV_POSTS = [
    ("Hello from Dev Shop", POST_CONTENT, f"{DEV_URL}/?p=1"),
    ("Plain post", "<p>nothing to rewrite, ☃</p>", "urn:post:2"),
]


def literal(dsn: Dsn, text: str) -> str:
    """A SQL string literal for `dsn`'s engine (MariaDB reads backslashes as escapes)."""
    if dsn.engine == "mariadb":
        text = text.replace("\\", "\\\\")
    return "'" + text.replace("'", "''") + "'"


def wordpress_sql(dsn: Dsn, options: dict[str, str], posts: list[tuple[str, str, str]]) -> str:
    if dsn.engine == "mariadb":
        tables = (
            "CREATE TABLE wp_options (option_id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT "
            "PRIMARY KEY, option_name VARCHAR(191) NOT NULL UNIQUE, option_value LONGTEXT NOT "
            "NULL, autoload VARCHAR(20) NOT NULL DEFAULT 'yes') DEFAULT CHARSET=utf8mb4 "
            "COLLATE=utf8mb4_unicode_ci; "
            "CREATE TABLE wp_posts (ID BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY, "
            "post_title TEXT NOT NULL, post_content LONGTEXT NOT NULL, guid VARCHAR(255) NOT "
            "NULL) DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci; "
        )
    else:
        tables = (
            "CREATE TABLE wp_options (option_id bigserial PRIMARY KEY, option_name "
            "varchar(191) NOT NULL UNIQUE, option_value text NOT NULL, autoload varchar(20) "
            "NOT NULL DEFAULT 'yes'); "
            "CREATE TABLE wp_posts (id bigserial PRIMARY KEY, post_title text NOT NULL, "
            "post_content text NOT NULL, guid varchar(255) NOT NULL); "
        )
    rows = ", ".join(f"({literal(dsn, k)}, {literal(dsn, v)})" for k, v in options.items())
    posts_sql = ", ".join(
        "(" + ", ".join(literal(dsn, field) for field in post) + ")" for post in posts
    )
    return (
        tables
        + f"INSERT INTO wp_options (option_name, option_value) VALUES {rows}; "
        + f"INSERT INTO wp_posts (post_title, post_content, guid) VALUES {posts_sql};"
    )


def fetch(dsn: Dsn, table: str, *columns: str) -> list[tuple[bytes, ...]]:
    """`columns` of `table`'s rows in key order, as exact UTF-8 bytes."""
    if dsn.engine == "mariadb":
        selected = ", ".join(f"HEX(`{c}`)" for c in columns)
        rows = asyncio.run(
            engine_for(dsn).query(dsn, f"SELECT {selected} FROM `{table}` ORDER BY 1")  # type: ignore[attr-defined]
        )
        return [tuple(bytes.fromhex(cell) for cell in row) for row in rows]

    async def read() -> list[tuple[bytes, ...]]:
        conn = await engine_for(dsn).connect(dsn)  # type: ignore[attr-defined]
        try:
            quoted = ", ".join(f'"{c}"' for c in columns)
            found = await conn.fetch(f'SELECT {quoted} FROM "{table}" ORDER BY 1')
            return [tuple(str(cell).encode() for cell in row) for row in found]
        finally:
            await conn.close()

    return asyncio.run(read())


def options_of(dsn: Dsn) -> dict[str, bytes]:
    return {
        name.decode(): value
        for name, value in fetch(dsn, "wp_options", "option_name", "option_value")
    }


# -- environments -----------------------------------------------------------------------------


def cli_ok(env: dict[str, str], *args: str, timeout: float = 180) -> str:
    done = run_cli(env, *args, timeout=timeout)
    assert done.returncode == 0, (args, done.returncode, done.stdout[-3000:], done.stderr[-3000:])
    return done.stdout


def run_job(env: dict[str, str], *args: str) -> dict[str, Any]:
    """A job command with `--wait --json` that succeeds; the job's final view."""
    view = json.loads(cli_ok(env, *args, "--wait", "--json"))
    assert view["status"] == "succeeded", view
    return view


def register(
    env: dict[str, str], target: str, root: Path, dsn: Dsn, code: Path, url: str | None = None
) -> dict[str, Any]:
    files = make_files(root / target / "files")
    (files / f"{target}.txt").write_text(f"only in {target}\n")
    extra = ("--url", url) if url else ()
    cli_ok(env, "env", "add", target, "--db", dsn_text(dsn), "--files", str(files),
           "--code", str(code), *extra)  # fmt: skip
    return {"dsn": dsn, "files": files, "code": code}


def blog_repo(path: Path) -> Path:
    """Another site's repository: its own history, no path in common with make_repo's."""
    (path / "blog").mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    (path / "blog" / "theme.php").write_text("<?php // the blog's theme\n")
    (path / "README-blog.md").write_text("# The blog\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "blog: first")
    git(path, "tag", "-a", "blog-1", "-m", "blog release")
    (path / "blog" / "feed.php").write_text("<?php // feeds\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "blog: feeds")
    return path


def names(repo: Path, rev: str = "HEAD") -> set[str]:
    return set(git(repo, "ls-tree", "-r", "--name-only", rev).splitlines())


def parents(repo: Path, rev: str = "HEAD") -> list[str]:
    return git(repo, "rev-list", "--parents", "-n", "1", rev).split()[1:]


def commits(repo: Path, rev: str) -> set[str]:
    return set(git(repo, "rev-list", rev).splitlines())


def job_ids(env: dict[str, str]) -> set[str]:
    return {job["id"] for job in run_json(env, "job", "list")}


# -- the test ---------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["mariadb", "postgresql"])
def test_moving_content(engine, cli_env, worker_pool, tmp_path, make_mariadb_db, make_postgres_db):
    env = cli_env
    make_db = make_mariadb_db if engine == "mariadb" else make_postgres_db
    cli_ok(env, "db", "migrate")
    cli_ok(env, "site", "add", "shop")
    cli_ok(env, "site", "add", "blog")

    dev_db = make_db()
    asyncio.run(run_sql(dev_db, wordpress_sql(dev_db, DEV_OPTIONS, DEV_POSTS)))
    live_db = make_db()
    live_options = {"siteurl": LIVE_URL, "home": LIVE_URL, "blogname": "The Shop"}
    asyncio.run(
        run_sql(
            live_db,
            wordpress_sql(live_db, live_options, [("Live post", "<p>live</p>", "urn:live:1")])
            + " CREATE TABLE live_orders (id INT PRIMARY KEY, total INT);"
            " INSERT INTO live_orders VALUES (1, 42);",
        )
    )
    blog_db = make_db()
    asyncio.run(run_sql(blog_db, "CREATE TABLE blog_posts (id INT PRIMARY KEY, title TEXT);"))
    dev = register(env, "shop.dev", tmp_path, dev_db, make_repo(tmp_path / "shop.dev" / "code"),
                   url=DEV_URL)  # fmt: skip
    live = register(env, "shop.live", tmp_path, live_db,
                    make_repo(tmp_path / "shop.live" / "code", commits=2), url=LIVE_URL)  # fmt: skip
    blog = register(env, "blog.dev", tmp_path, blog_db, blog_repo(tmp_path / "blog.dev" / "code"))
    listed = {f"{e['site']}.{e['env']}": e for e in run_json(env, "env", "list")}
    assert (listed["shop.dev"]["url"], listed["shop.dev"]["protected"]) == (DEV_URL, False)
    assert (listed["shop.live"]["url"], listed["shop.live"]["protected"]) == (LIVE_URL, True)
    worker_pool.start()

    clone_into_live(env, dev, live)
    merge_another_sites_code(env, dev, blog)
    if engine == "mariadb":
        revert_code(env, dev)


def clone_into_live(env: dict[str, str], dev: dict[str, Any], live: dict[str, Any]) -> None:
    """1. dev's content into the protected live, URLs rewritten, then rolled back."""
    dev_before, live_before = snap(dev), snap(live)
    assert dev_before.rows != live_before.rows and dev_before.files != live_before.files
    assert b"dev.shop.example" in asyncio.run(dump_sql(dev["dsn"]))

    view = run_job(env, "env", "clone-content", "shop.dev", "shop.live",
                   "--search-replace", "=".join(PAIR))  # fmt: skip

    # Live has dev's content, under live's URL; its code and dev are untouched.
    after = snap(live)
    assert after.tables == dev_before.tables
    assert tree_digest(live["files"]) == tree_digest(dev["files"])
    assert (after.head, after.tags, after.status) == (
        live_before.head,
        live_before.tags,
        live_before.status,
    )
    assert snap(dev) == dev_before
    dump = asyncio.run(dump_sql(live["dsn"]))
    assert b"dev.shop.example" not in dump, [
        line[:300] for line in dump.splitlines() if b"dev.shop.example" in line
    ]
    assert b"Dev Shop" not in dump

    options = options_of(live["dsn"])
    assert options["home"] == options["siteurl"] == LIVE_URL.encode()
    assert options["blogname"] == "Shöp".encode()
    assert options["admin_note"] == DEV_OPTIONS["admin_note"].encode()
    # The serialized option: every s:N: exact in bytes, at both levels, and the values moved.
    stored = options["shop_settings"]
    settings = StrictReader.load(stored)
    assert StrictReader.load(settings["nested"].encode()) == moved(INNER)
    expected = {**moved(SETTINGS), "nested": php_serialize(moved(INNER))}
    assert settings == expected
    assert stored == php_serialize(expected).encode()
    assert len(stored) != len(DEV_OPTIONS["shop_settings"].encode())  # lengths did change
    posts = fetch(live["dsn"], "wp_posts", "post_title", "post_content", "guid")
    assert posts == [tuple(moved(field).encode() for field in post) for post in DEV_POSTS]
    assert b"https:\\/\\/www.shop.example\\/wp-content" in posts[0][1]
    assert b"https%3A%2F%2Fwww.shop.example%2Fabout" in posts[0][1]

    # What the job says it did.
    shown = run_json(env, "job", "show", view["id"])
    assert (shown["kind"], shown["status"], shown["target"]) == ("clone", "succeeded", "shop.live")
    steps = {step["name"]: step for step in shown["steps"]}
    rewrite = steps["rewrite_urls"]
    assert rewrite["status"] == "done", rewrite
    out = rewrite["outputs"]
    assert out["rewritten"] is True, out
    assert (out["old_url"], out["new_url"]) == (DEV_URL, LIVE_URL), out
    # 4 options (siteurl, home, blogname, shop_settings) and 1 post (title, content, guid).
    assert (out["rows_changed"], out["values_changed"]) == (5, 7), out
    urls = shown["outputs"]["urls"]
    assert (urls["old_url"], urls["new_url"]) == (DEV_URL, LIVE_URL), urls
    assert urls["rows_changed"] == 5 and urls["values_changed"] == 7, urls
    assert urls["values_skipped"] == 0, urls

    # The rollback point brings live's own content back.
    undo = run_job(env, "rollback", "run", view["id"])
    assert undo["kind"] == "rollback", undo
    assert snap(live) == live_before
    assert options_of(live["dsn"])["home"] == LIVE_URL.encode()
    assert snap(dev) == dev_before


def merge_another_sites_code(
    env: dict[str, str], dev: dict[str, Any], blog: dict[str, Any]
) -> None:
    """2. blog.dev's code (unrelated history) into shop.dev: a strategy is required; merge."""
    run_job(env, "backup", "create", "blog.dev")
    [backup] = run_json(env, "backup", "list", "blog.dev")
    blog_head = git(blog["code"], "rev-parse", "HEAD")
    assert backup["git_head"] == blog_head
    shop_head = git(dev["code"], "rev-parse", "HEAD")
    shop_names, blog_names = names(dev["code"]), names(blog["code"])
    assert shop_names and blog_names and not shop_names & blog_names
    assert not commits(dev["code"], "HEAD") & commits(blog["code"], "HEAD")
    before = snap(dev)
    jobs = job_ids(env)

    refused = run_cli(env, "restore", "shop.dev", "--from", "blog.dev", "--element", "code",
                      "--wait")  # fmt: skip
    assert refused.returncode == 2, (refused.returncode, refused.stdout, refused.stderr)
    assert "--code-strategy" in refused.stderr, refused.stderr
    assert job_ids(env) == jobs  # refused before a job existed
    assert snap(dev) == before

    view = run_job(env, "restore", "shop.dev", "--from", "blog.dev", "--element", "code",
                   "--code-strategy", "merge")  # fmt: skip
    assert view["outputs"]["backup_id"] == backup["id"], view["outputs"]
    code = dev["code"]
    head = git(code, "rev-parse", "HEAD")
    assert parents(code) == [shop_head, blog_head]
    assert view["outputs"]["git_head"] == head, view["outputs"]
    reachable = commits(code, "HEAD")
    assert commits(code, shop_head) <= reachable
    assert commits(blog["code"], blog_head) <= reachable
    assert names(code) == shop_names | blog_names
    for name in shop_names:  # the same blobs as before, checked out (the tree is clean)
        assert git(code, "rev-parse", f"HEAD:{name}") == git(
            code, "rev-parse", f"{shop_head}:{name}"
        )
        assert (code / name).is_file()
    for name in blog_names:
        assert (code / name).read_bytes() == (blog["code"] / name).read_bytes()
    after = snap(dev)
    assert after.status == ""
    assert after.tags == before.tags  # the other site's tags stay out
    assert (after.rows, after.files) == (before.rows, before.files)


def revert_code(env: dict[str, str], dev: dict[str, Any]) -> None:
    """3. a new commit, then `--code-strategy revert`: one commit back to the backup's tree."""
    code = dev["code"]
    backed = run_job(env, "backup", "create", "shop.dev")
    backup_tree = git(code, "rev-parse", "HEAD^{tree}")
    (code / "index.php").write_text("<?php // a change after the backup\n")
    (code / "after-backup.php").write_text("<?php // new\n")
    git(code, "add", "-A")
    git(code, "commit", "-q", "-m", "after the backup")
    previous = git(code, "rev-parse", "HEAD")
    assert git(code, "rev-parse", "HEAD^{tree}") != backup_tree
    before = snap(dev)

    view = run_job(env, "restore", "shop.dev", "--element", "code", "--code-strategy", "revert")
    assert view["outputs"]["backup_id"] == backed["outputs"]["backup_id"], view["outputs"]
    head = git(code, "rev-parse", "HEAD")
    assert head != previous
    assert parents(code) == [previous]
    assert git(code, "rev-parse", "HEAD^{tree}") == backup_tree
    assert not (code / "after-backup.php").exists()
    after = snap(dev)
    assert after.status == ""
    assert tags_of(code) == before.tags
    assert (after.rows, after.files) == (before.rows, before.files)
