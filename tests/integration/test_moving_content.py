"""Moving content between environments and sites, through real jobs, checked as a user would.

1. The site's URL when its database moves (restore --from, import, clone): a
   WordPress-like database (options with serialized widgets and theme mods,
   posts with Gutenberg JSON and guids, postmeta with nested serialized arrays,
   multibyte text) built for one URL must come out exactly as the same site
   built for the target's URL: no spelling of the old host left anywhere (plain,
   `https:\\/\\/` JSON-escaped, scheme-less, URL-encoded), every serialized value
   unserializing strictly with correct byte lengths. The rest of each
   environment's database moves with it: on PostgreSQL that includes a
   Drupal-style `variable (name text PRIMARY KEY, value bytea)` table, whose only
   searched column is bytea — the rewrite must get past such a table.
2. Code strategies: `revert` (one new commit with the backup's tree), `merge`
   (another site's history; a conflict fails with the paths and changes
   nothing), `overwrite` from an imported archive, and the refusal of another
   site's code without a strategy.

Every environment starts with content of its own (tests/support/environments.py),
so "the target now holds X" holds only because the job made it so.
"""

from __future__ import annotations

import gzip
import re
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from envrestore.pipelines import registry
from envrestore.pipelines.backup.service import BackupRecord, list_backups
from envrestore.pipelines.dsn import Dsn
from envrestore.pipelines.engines import engine_for
from envrestore.pipelines.errors import BadInput
from envrestore.pipelines.jobs.runtime import Runtime
from envrestore.pipelines.jobs.views import list_jobs
from envrestore.pipelines.requests import CloneRequest, ImportRequest, PartInput
from tests.integration.test_backup_job import _dsn_text
from tests.support.driver import drive
from tests.support.environments import (
    SiteEnv,
    add_env,
    assert_failed,
    dump_sql,
    local_servers,
    run_sql,
    staging_keys,
    tar_of,
    with_settings,
)
from tests.support.producing import producer, submit_backup, submit_restore, submit_rollback
from tests.support.sites import git, tags_of
from tests.unit.test_rewrite_values import MULTI, PhpObject, php_serialize, php_unserialize, strings

pytestmark = pytest.mark.integration

DEV_URL = "https://dev.shop.example"
TEST_URL = "https://test.shop.example"
LIVE_URL = "https://www.shop.example"
OLD_HOST = "dev.shop.example"
COMPANY = "Old Company"


@pytest.fixture
def make_env(runtime, tmp_path, new_db):
    """`await make_env("shop.dev", url=...)`: a registered environment on the test's engine."""

    async def make(target: str, *, url: str | None = None) -> SiteEnv:
        env = await add_env(runtime, tmp_path / "envs", target, new_db)
        if url is not None:
            await record_url(runtime, env, url)
        return env

    return make


async def record_url(rt: Runtime, env: SiteEnv, url: str) -> None:
    """`envrestore env add SITE.ENV ... --url URL` on an environment already registered."""
    await registry.add_environment(
        rt.pool, env.target, db=_dsn_text(env.dsn), files=env.files, code=env.code, url=url
    )
    assert (await registry.get_environment(rt.pool, env.target)).url == url


async def backup_of(rt: Runtime, target: str) -> BackupRecord:
    job = await submit_backup(rt, target)
    view = await drive(rt, job.job_id)
    assert view["status"] == "succeeded", view
    [record] = [b for b in await list_backups(rt.pool, target) if b.job_id == job.job_id]
    return record


async def job_count(rt: Runtime) -> int:
    return len(await list_jobs(rt.pool, limit=1000))


def step(view: dict[str, Any], name: str) -> dict[str, Any]:
    [found] = [s for s in view["steps"] if s["name"] == name]
    return found


# -- a WordPress site, built for one URL -------------------------------------------------------

#: table → (integer columns, text columns); the first integer column is the primary key.
TABLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "wp_options": (("option_id",), ("option_name", "option_value")),
    "wp_posts": (("ID",), ("post_title", "post_content", "guid")),
    "wp_postmeta": (("meta_id", "post_id"), ("meta_key", "meta_value")),
}

MARIADB_DDL = """
DROP TABLE IF EXISTS wp_options, wp_posts, wp_postmeta;
CREATE TABLE wp_options (
  option_id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  option_name VARCHAR(191) NOT NULL UNIQUE, option_value LONGTEXT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
CREATE TABLE wp_posts (
  ID BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  post_title TEXT NOT NULL, post_content LONGTEXT NOT NULL,
  guid VARCHAR(255) NOT NULL DEFAULT ''
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
CREATE TABLE wp_postmeta (
  meta_id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  post_id BIGINT UNSIGNED NOT NULL DEFAULT 0, meta_key VARCHAR(255), meta_value LONGTEXT,
  KEY post_id (post_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
"""

POSTGRES_DDL = """
DROP TABLE IF EXISTS wp_options, wp_posts, wp_postmeta;
CREATE TABLE wp_options (
  option_id bigint PRIMARY KEY, option_name varchar(191) NOT NULL UNIQUE, option_value text NOT NULL
);
CREATE TABLE wp_posts (
  ID bigint PRIMARY KEY, post_title text NOT NULL, post_content text NOT NULL,
  guid varchar(255) NOT NULL DEFAULT ''
);
CREATE TABLE wp_postmeta (
  meta_id bigint PRIMARY KEY, post_id bigint NOT NULL DEFAULT 0, meta_key varchar(255),
  meta_value text
);
"""


def ser(value: Any) -> str:
    return php_serialize(value).decode()


def site_rows(url: str, company: str = COMPANY) -> dict[str, list[tuple[Any, ...]]]:
    """The rows of a WordPress site whose address is `url` and whose owner is `company`.

    The URL appears in every spelling WordPress and its plugins write: plain, with a
    path, scheme-less (`//host`), under the other scheme (`http://`), JSON-escaped
    (`https:\\/\\/host`, `\\/\\/host`) and URL-encoded; inside serialized arrays,
    objects and serialized-inside-serialized strings, next to multibyte text.
    The bare host never appears alone, so the site at another URL is exactly
    `site_rows(other_url)`.
    """
    host = url.split("://", 1)[1]
    escaped = url.replace("/", "\\/")
    encoded = quote(url, safe="")
    widget_text = {
        2: {
            "title": f"About {company}",
            "text": f'<a href="{url}/about/">{company} {MULTI}</a> <img src="//{host}/x.png">',
            "filter": True,
            "visual": True,
        },
        3: {"title": "", "text": "no links here", "filter": False, "visual": False},
        "_multiwidget": 1,
    }
    theme_mods = {
        0: False,
        "nav_menu_locations": {"primary": 2, "footer": 3},
        "custom_css_post_id": -1,
        "header_image": f"{url}/wp-content/uploads/2024/01/header-{MULTI}.jpg",
        "header_image_data": PhpObject(
            "stdClass",
            {
                "attachment_id": 12,
                "url": f"{url}/wp-content/uploads/2024/01/header.jpg",
                "thumbnail_url": f"{url}/wp-content/uploads/2024/01/header-150x150.jpg",
                "height": 400,
                "width": 1200.5,
                "alt": None,
            },
        ),
        "footer_credit": f"© {company} — {MULTI}",
    }
    nested = {
        "version": "3.1",
        "payload": ser({"redirect": f"{url}/thanks/", "label": MULTI}),
        "deeper": ser(
            {"inner": ser([f"{url}/a", f"{escaped}\\/b", f"http://{host}/insecure/{MULTI}"])}
        ),
    }
    options = [
        (1, "siteurl", url),
        (2, "home", url),
        (3, "blogname", f"{company} {MULTI}"),
        (4, "admin_email", "admin@shop.example"),
        (5, "active_plugins", ser(["woocommerce/woocommerce.php", "akismet/akismet.php"])),
        (6, "widget_text", ser(widget_text)),
        (7, "theme_mods_storefront", ser(theme_mods)),
        (8, "plugin_settings", ser(nested)),
        (9, "permalink_structure", "/%postname%/"),
    ]
    gutenberg = (
        f'<!-- wp:image {{"id":5,"sizeSlug":"large","url":"{escaped}\\/wp-content\\/a.jpg"}} -->\n'
        f'<figure class="wp-block-image"><img src="{url}/wp-content/a.jpg" alt="{MULTI}"/>'
        "</figure>\n<!-- /wp:image -->\n"
        f'<!-- wp:cover {{"url":"{url}/wp-content/c.jpg","dimRatio":50}} /-->\n'
        f'<!-- wp:embed {{"url":"//{host}/video","type":"rich"}} /-->\n'
        f'<!-- wp:button {{"url":"\\/\\/{host}\\/shop","text":"{company}"}} /-->\n'
        f'<a href="/login?redirect_to={encoded}%2Fwp-admin%2F">log in to {company}</a>'
    )
    posts = [
        (
            i,
            f"Post {i} — {MULTI}",
            gutenberg if i % 3 else f"<p>{company}: no link, {MULTI}</p>",
            f"{url}/?p={i}",
        )
        for i in range(1, 13)
    ]
    attachment = {
        "width": 1920,
        "height": 1080,
        "file": "2024/01/photo.jpg",
        "sizes": {"thumbnail": {"file": "photo-150x150.jpg", "width": 150}},
        "image_meta": {
            "caption": f"{MULTI} — taken at {url}/events/ ✓",
            "credit": f"José Ñandú for {company}",
            "keywords": [],
        },
    }
    attributes = {
        "pa_colour": {
            "name": "Colour",
            "value": f"Rouge | Bleu | {MULTI}",
            "options": [
                {"image": f"{url}/c/{n}.png", "meta": {"deep": {"link": f"//{host}/d/{MULTI}"}}}
                for n in range(3)
            ],
        }
    }
    meta: list[tuple[Any, ...]] = []
    for i in range(1, 13):
        key, value = {
            0: ("_wp_attachment_metadata", ser(attachment)),
            1: ("_menu_item_url", f"{url}/page-{i}/"),
            2: (
                "_elementor_data",
                f'[{{"settings":{{"url":"{escaped}\\/x","title":"{company}"}}}}]',
            ),
            3: ("_edit_lock", "1700000000:1"),
        }[i % 4]
        meta.append((i, i, key, value))
    meta.append((13, 1, "_product_attributes", ser(attributes)))
    meta.append((14, 2, "_empty", None))
    return {"wp_options": options, "wp_posts": posts, "wp_postmeta": meta}


def _literal(engine: str, value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, int):
        return str(value)
    data = str(value).encode().hex()
    if engine == "mariadb":
        return f"CONVERT(X'{data}' USING utf8mb4)"
    return f"convert_from('\\x{data}'::bytea, 'UTF8')"


async def make_wordpress(dsn: Dsn, url: str, company: str = COMPANY) -> None:
    """The site of `site_rows(url, company)` in `dsn`'s database (replacing any wp_ tables)."""
    statements = [MARIADB_DDL if dsn.engine == "mariadb" else POSTGRES_DDL]
    for table, rows in site_rows(url, company).items():
        ints, texts = TABLES[table]
        columns = ", ".join((*ints, *texts))
        values = ", ".join(
            "(" + ", ".join(_literal(dsn.engine, v) for v in row) + ")" for row in rows
        )
        statements.append(f"INSERT INTO {table} ({columns}) VALUES {values};")
    await run_sql(dsn, "\n".join(statements))


async def read_rows(dsn: Dsn) -> dict[str, list[tuple[Any, ...]]]:
    """The WordPress tables' rows as `site_rows` gives them (bytes decoded, by primary key)."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    engine = engine_for(dsn)
    for table, (ints, texts) in TABLES.items():
        if dsn.engine == "mariadb":
            # HEX keeps every byte intact through the client's batch escaping.
            selected = ", ".join((*ints, *(f"HEX({c})" for c in texts)))
            rows = await engine.query(  # type: ignore[attr-defined]
                dsn, f"SELECT {selected} FROM {table} ORDER BY {ints[0]};"
            )
            out[table] = [
                (
                    *(int(v) for v in row[: len(ints)]),
                    *(None if v == "NULL" else bytes.fromhex(v).decode() for v in row[len(ints) :]),
                )
                for row in rows
            ]
        else:
            conn = await engine.connect(dsn)  # type: ignore[attr-defined]
            try:
                records = await conn.fetch(
                    f"SELECT {', '.join((*ints, *texts))} FROM {table} ORDER BY {ints[0]}"
                )
            finally:
                await conn.close()
            out[table] = [tuple(r) for r in records]
    return out


async def option(dsn: Dsn, name: str) -> str:
    [value] = [row[2] for row in (await read_rows(dsn))["wp_options"] if row[1] == name]
    return str(value)


SERIALIZED = re.compile(rb"^(?:[aO]:\d+:\{|s:\d+:\"|[bid]:[^;]*;|N;)")


def unserialize_strictly(value: str | bytes) -> int:
    """Unserialize `value` and every serialized string inside it (PHP's rules: byte lengths,
    counts, nothing left over); returns how many serialized values were checked."""
    data = value.encode() if isinstance(value, str) else value
    if not SERIALIZED.match(data):
        return 0
    parsed = php_unserialize(data)  # raises on a wrong length
    return 1 + sum(unserialize_strictly(s) for s in strings(parsed))


def serialized_values(rows: dict[str, list[tuple[Any, ...]]]) -> int:
    return sum(
        unserialize_strictly(value)
        for table_rows in rows.values()
        for row in table_rows
        for value in row
        if isinstance(value, str)
    )


def touched(rows: dict[str, list[tuple[Any, ...]]], needles: tuple[str, ...]) -> dict[str, Any]:
    """Rows and values holding one of `needles` (what the rewrite should report changing)."""
    per_table: dict[str, dict[str, int]] = {}
    for table, table_rows in rows.items():
        _ints, texts = TABLES[table]
        hits = [
            sum(1 for v in row[-len(texts) :] if v is not None and any(n in v for n in needles))
            for row in table_rows
        ]
        per_table[table] = {"rows_changed": sum(1 for h in hits if h), "values_changed": sum(hits)}
    return {
        "rows_changed": sum(t["rows_changed"] for t in per_table.values()),
        "values_changed": sum(t["values_changed"] for t in per_table.values()),
        "per_table": per_table,
    }


def reported(outputs: dict[str, Any]) -> dict[str, Any]:
    """The rewrite step's counts in `touched`'s shape (tables named without their schema)."""
    return {
        "rows_changed": outputs["rows_changed"],
        "values_changed": outputs["values_changed"],
        "per_table": {
            table.rsplit(".", 1)[-1]: {k: t[k] for k in ("rows_changed", "values_changed")}
            for table, t in outputs["per_table"].items()
        },
    }


async def assert_moved_to(dsn: Dsn, url: str, company: str = COMPANY) -> None:
    """The database is the site built for `url`, byte for byte, with no trace of the old host."""
    rows = await read_rows(dsn)
    assert rows == site_rows(url, company)
    assert await option(dsn, "home") == url
    # every serialized value, and those inside them, unserialize strictly (byte lengths)
    assert serialized_values(rows) == 11
    dump = await dump_sql(dsn)  # every table, whatever its columns
    assert OLD_HOST.encode() not in dump
    for form in (DEV_URL, f"//{OLD_HOST}", "https:\\/\\/" + OLD_HOST, "\\/\\/" + OLD_HOST):
        assert form.encode() not in dump


# -- 1. URL rewrite ----------------------------------------------------------------------------


async def test_restore_from_dev_rewrites_its_url_to_tests(runtime, make_env):
    dev = await make_env("shop.dev", url=DEV_URL)
    test = await make_env("shop.test", url=TEST_URL)
    await make_wordpress(dev.dsn, DEV_URL)
    await backup_of(runtime, "shop.dev")
    source = await dev.snapshot()

    job = await submit_restore(runtime, "shop.test", source="shop.dev")
    view = await drive(runtime, job.job_id)

    assert view["status"] == "succeeded", view
    await assert_moved_to(test.dsn, TEST_URL)
    rewrite = step(view, "rewrite_urls")
    assert rewrite["status"] == "done"
    out = rewrite["outputs"]
    assert (out["rewritten"], out["old_url"], out["new_url"]) == (True, DEV_URL, TEST_URL)
    assert out["old_url_from"] == "the source environment's URL"
    assert out["values_skipped"] == 0
    expected = touched(site_rows(DEV_URL), (OLD_HOST,))
    assert reported(out) == expected
    assert view["outputs"]["urls"] == {
        "old_url": DEV_URL,
        "new_url": TEST_URL,
        "rows_changed": expected["rows_changed"],
        "values_changed": expected["values_changed"],
        "values_skipped": 0,
    }
    assert await dev.snapshot() == source  # the source is only read
    assert await read_rows(dev.dsn) == site_rows(DEV_URL)


async def test_no_search_replace_leaves_the_old_url(runtime, make_env):
    dev = await make_env("shop.dev", url=DEV_URL)
    test = await make_env("shop.test", url=TEST_URL)
    await make_wordpress(dev.dsn, DEV_URL)
    await backup_of(runtime, "shop.dev")

    job = await submit_restore(runtime, "shop.test", source="shop.dev", search_replace=False)
    view = await drive(runtime, job.job_id)

    assert view["status"] == "succeeded", view
    assert await read_rows(test.dsn) == site_rows(DEV_URL)
    assert await option(test.dsn, "home") == DEV_URL
    out = step(view, "rewrite_urls")["outputs"]
    assert out["rewritten"] is False
    assert out["url"] == "not rewritten: --no-search-replace"
    assert "urls" not in view["outputs"]


async def test_explicit_pairs_are_applied_with_the_url(runtime, make_env):
    dev = await make_env("shop.dev", url=DEV_URL)
    test = await make_env("shop.test", url=TEST_URL)
    await make_wordpress(dev.dsn, DEV_URL)
    await backup_of(runtime, "shop.dev")

    job = await submit_restore(
        runtime, "shop.test", source="shop.dev", replace_pairs=(("Old Company", "New Company"),)
    )
    view = await drive(runtime, job.job_id)

    assert view["status"] == "succeeded", view
    await assert_moved_to(test.dsn, TEST_URL, "New Company")
    out = step(view, "rewrite_urls")["outputs"]
    assert (out["old_url"], out["new_url"]) == (DEV_URL, TEST_URL)
    assert ["Old Company", "New Company"] in out["pairs"]
    assert [DEV_URL, TEST_URL] in out["pairs"]
    assert reported(out) == touched(site_rows(DEV_URL), (OLD_HOST, "Old Company"))


async def test_an_imported_dump_moves_from_its_home_option(runtime, make_env, new_db):
    test = await make_env("shop.test", url=TEST_URL)
    elsewhere = new_db()  # a site that is not registered here: only its dump says its URL
    await make_wordpress(elsewhere, DEV_URL)
    dump = gzip.compress(await dump_sql(elsewhere))
    before = await test.snapshot()

    async with local_servers() as start:
        server = await start({"/shop.sql.gz": dump})
        rt = with_settings(runtime, import_allow_hosts=[server.allow])
        request = ImportRequest(
            "shop.test", (PartInput("database", url=server.url("/shop.sql.gz")),)
        )
        job = await producer(rt).submit(request)
        view = await drive(rt, job.job_id)

    assert view["status"] == "succeeded", view
    await assert_moved_to(test.dsn, TEST_URL)
    out = step(view, "rewrite_urls")["outputs"]
    assert (out["old_url"], out["new_url"]) == (DEV_URL, TEST_URL)
    assert out["old_url_from"] == "the dump's home option"
    assert (
        view["outputs"]["urls"]["rows_changed"]
        == touched(site_rows(DEV_URL), (OLD_HOST,))["rows_changed"]
    )
    after = await test.snapshot()
    assert (after.files, after.head, after.tags) == (before.files, before.head, before.tags)
    assert await staging_keys(runtime) == []


async def test_a_clone_into_live_takes_lives_url_and_rolls_back(runtime, make_env):
    dev = await make_env("shop.dev", url=DEV_URL)
    live = await make_env("shop.live", url=LIVE_URL)
    assert (await registry.get_environment(runtime.pool, "shop.live")).protected
    await make_wordpress(dev.dsn, DEV_URL)
    await make_wordpress(live.dsn, LIVE_URL, "Live Shop Ltd")  # live's own site
    source = await dev.snapshot()
    before = await live.snapshot()

    job = await producer(runtime).submit(CloneRequest("shop.dev", "shop.live"))  # no force
    view = await drive(runtime, job.job_id)

    assert view["status"] == "succeeded", view
    await assert_moved_to(live.dsn, LIVE_URL)
    out = step(view, "rewrite_urls")["outputs"]
    assert (out["old_url"], out["new_url"]) == (DEV_URL, LIVE_URL)
    assert out["old_url_from"] == "the source environment's URL"
    assert (view["outputs"]["urls"]["old_url"], view["outputs"]["urls"]["new_url"]) == (
        DEV_URL,
        LIVE_URL,
    )
    assert await dev.snapshot() == source

    undo = await submit_rollback(runtime, job.job_id)
    assert (await drive(runtime, undo.job_id))["status"] == "succeeded"
    assert await live.snapshot() == before
    assert await read_rows(live.dsn) == site_rows(LIVE_URL, "Live Shop Ltd")
    assert await dev.snapshot() == source


async def test_a_target_without_a_url_is_not_rewritten(runtime, make_env):
    dev = await make_env("shop.dev", url=DEV_URL)
    test = await make_env("shop.test")  # no --url
    await make_wordpress(dev.dsn, DEV_URL)
    await backup_of(runtime, "shop.dev")

    job = await submit_restore(runtime, "shop.test", source="shop.dev")
    view = await drive(runtime, job.job_id)

    assert view["status"] == "succeeded", view
    assert await read_rows(test.dsn) == site_rows(DEV_URL)
    out = step(view, "rewrite_urls")["outputs"]
    assert out["rewritten"] is False
    assert "shop.test has no URL recorded" in out["url"]
    assert "envrestore env add shop.test --url" in out["url"]
    assert "urls" not in view["outputs"]


# -- 2. code strategies ------------------------------------------------------------------------


def commit(repo: Path, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def new_repo(path: Path, files: dict[str, str], tag: str) -> str:
    """A repository of its own at `path` (replacing whatever was there): one commit, one tag."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    head = commit(path, files, f"{tag} release")
    git(path, "tag", "-a", tag, "-m", tag)
    return head


def parents(repo: Path, rev: str = "HEAD") -> list[str]:
    return git(repo, "rev-list", "--parents", "-n", "1", rev).split()[1:]


def tree(repo: Path, rev: str = "HEAD") -> str:
    return git(repo, "rev-parse", f"{rev}^{{tree}}")


def tracked(repo: Path, rev: str = "HEAD") -> list[str]:
    return git(repo, "ls-tree", "-r", "--name-only", rev).splitlines()


async def test_revert_is_one_new_commit_with_the_backups_tree(runtime, make_env):
    dev = await make_env("shop.dev")
    backup = await backup_of(runtime, "shop.dev")
    at_backup = await dev.snapshot()
    # Work since the backup: two commits, a tag, a table and a file.
    commit(dev.code, {"index.php": "<?php // broken deploy\n", "new.php": "<?php\n"}, "deploy")
    commit(dev.code, {"more.php": "<?php // more\n"}, "deploy again")
    git(dev.code, "tag", "-a", "v9.0", "-m", "after the backup")
    await run_sql(dev.dsn, "CREATE TABLE later_work (id INT PRIMARY KEY)")
    (dev.files / "later.txt").write_text("after the backup\n")
    before = await dev.snapshot()

    job = await submit_restore(runtime, "shop.dev", code_strategy="revert", element="code")
    view = await drive(runtime, job.job_id)

    assert view["status"] == "succeeded", view
    after = await dev.snapshot()
    assert after.head not in (before.head, at_backup.head)  # a NEW commit
    assert parents(dev.code) == [before.head]  # on top of live's branch
    assert tree(dev.code) == tree(dev.code, at_backup.head)  # with the backup's tree
    assert git(dev.code, "rev-list", "--merges", "HEAD") == ""  # history linear
    assert git(dev.code, "rev-parse", "--abbrev-ref", "HEAD") == "main"
    assert f"shop.dev's backup {backup.id}" in git(dev.code, "log", "-1", "--format=%s")
    assert sorted(tracked(dev.code)) == sorted(tracked(dev.code, at_backup.head))
    assert not (dev.code / "new.php").exists() and not (dev.code / "more.php").exists()
    assert after.tags == before.tags and "v9.0" in after.tags  # tags kept
    assert after.status == ""
    assert (after.tables, after.rows, after.files) == (before.tables, before.rows, before.files)
    code = step(view, "apply_code")["outputs"]
    assert (code["strategy"], code["previous_head"], code["commits_added"]) == (
        "revert",
        before.head,
        1,
    )

    undo = await submit_rollback(runtime, job.job_id)
    assert (await drive(runtime, undo.job_id))["status"] == "succeeded"
    assert await dev.snapshot() == before
    assert git(dev.code, "rev-parse", "HEAD") == before.head


async def test_another_sites_code_needs_a_strategy_and_merges_disjoint_files(runtime, make_env):
    shop = await make_env("shop.dev")
    blog = await make_env("blog.dev")
    blog_head = new_repo(
        blog.code,
        {"wp-content/plugins/blog/blog.php": "<?php // blog\n", "BLOG.md": "the blog\n"},
        "blog-1.0",
    )
    await backup_of(runtime, "blog.dev")
    before = await shop.snapshot()
    shop_files = tracked(shop.code)
    jobs = await job_count(runtime)

    # Another site's code without a strategy (or with one for the same site) is refused.
    for strategy in (None, "replace", "revert"):
        with pytest.raises(BadInput, match="--code-strategy") as refused:
            await submit_restore(
                runtime, "shop.dev", source="blog.dev", element="code", code_strategy=strategy
            )
        assert "overwrite" in str(refused.value) and "merge" in str(refused.value)
    assert await job_count(runtime) == jobs
    assert await shop.snapshot() == before

    job = await submit_restore(
        runtime, "shop.dev", source="blog.dev", element="code", code_strategy="merge"
    )
    view = await drive(runtime, job.job_id)

    assert view["status"] == "succeeded", view
    after = await shop.snapshot()
    assert parents(shop.code) == [before.head, blog_head]  # a merge commit of both histories
    assert sorted(tracked(shop.code)) == sorted(
        [*shop_files, "BLOG.md", "wp-content/plugins/blog/blog.php"]
    )
    assert (shop.code / "wp-content/plugins/blog/blog.php").read_text() == "<?php // blog\n"
    assert after.tags == before.tags  # blog's tags stay behind
    assert after.status == ""
    assert (after.tables, after.rows, after.files) == (before.tables, before.rows, before.files)
    assert step(view, "apply_code")["outputs"]["strategy"] == "merge"


async def test_a_merge_conflict_fails_in_apply_code_and_changes_nothing(runtime, make_env):
    shop = await make_env("shop.dev")
    blog = await make_env("blog.dev")
    # site.txt and index.php exist in shop too, with other content.
    new_repo(
        blog.code,
        {"site.txt": "blog\n", "index.php": "<?php // blog\n", "blog.php": "<?php\n"},
        "blog-1.0",
    )
    await backup_of(runtime, "blog.dev")
    before = await shop.snapshot()
    shop_tree = tree(shop.code)

    # All elements: the database and files are imported beside live, then must not switch.
    job = await submit_restore(runtime, "shop.dev", source="blog.dev", code_strategy="merge")
    view = await drive(runtime, job.job_id)

    assert_failed(view, "apply_code", "conflicts in 2 path(s)", "index.php, site.txt")
    assert step(view, "apply_code")["status"] == "failed"
    after = await shop.snapshot()
    assert after == before  # HEAD, tags, status, tables, rows, files
    assert tree(shop.code) == shop_tree
    assert git(shop.code, "rev-parse", "--abbrev-ref", "HEAD") == "main"
    assert not (shop.code / "blog.php").exists()
    assert "pre-restore" not in git(shop.code, "for-each-ref", "--format=%(refname)")


async def test_imported_code_overwrites_as_one_commit(runtime, make_env, tmp_path):
    shop = await make_env("shop.dev")
    incoming = tmp_path / "incoming"
    new_repo(
        incoming,
        {"index.php": "<?php // imported\n", "lib/app.php": "<?php // app\n"},
        "imported-1",
    )
    commit(incoming, {"lib/more.php": "<?php // more\n"}, "second")
    incoming_head = git(incoming, "rev-parse", "HEAD")
    archive = tar_of(incoming, "code_live")
    before = await shop.snapshot()

    async with local_servers() as start:
        server = await start({"/code.tar.gz": archive})
        rt = with_settings(runtime, import_allow_hosts=[server.allow])
        request = ImportRequest(
            "shop.dev",
            (PartInput("code", url=server.url("/code.tar.gz")),),
            code_strategy="overwrite",
        )
        job = await producer(rt).submit(request)
        view = await drive(rt, job.job_id)

    assert view["status"] == "succeeded", view
    after = await shop.snapshot()
    assert parents(shop.code) == [before.head]  # one commit on shop's own history
    assert tree(shop.code) == tree(incoming, incoming_head)  # with the archive's tree
    assert sorted(tracked(shop.code)) == ["index.php", "lib/app.php", "lib/more.php"]
    assert not any(".git" in path.split("/") for path in tracked(shop.code))
    assert sorted(p.name for p in shop.code.iterdir()) == [".git", "index.php", "lib"]
    assert incoming_head[:12] in git(shop.code, "log", "-1", "--format=%s")
    assert "imported-1" not in tags_of(shop.code)
    assert (after.tags, after.status) == (before.tags, "")
    assert (after.tables, after.rows, after.files) == (before.tables, before.rows, before.files)
    assert step(view, "apply_code")["outputs"]["commits_added"] == 1
    assert await staging_keys(runtime) == []
