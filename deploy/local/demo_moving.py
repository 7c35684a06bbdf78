"""Content from anywhere in the demo: --from, a link, an import, clone into live, a code merge."""

from __future__ import annotations

import asyncio
import hashlib
import re
import subprocess
from pathlib import Path

import asyncpg

from deploy.local import postgres
from deploy.local.demo_checks import (
    DevContent,
    check_content_back,
    edit_database,
    git_out,
    look_at_dev,
)
from deploy.local.demo_console import (
    EXIT_CONFLICT,
    SITE,
    cli,
    cli_output,
    heading,
    relative,
    say,
    show_command,
)
from deploy.local.demo_site import DemoEnv, git, url_of


def content_from_anywhere(
    env: dict[str, str], backup_id: str, backed_up: DevContent, test: DemoEnv
) -> None:
    """Restore test from dev's backup; hand out a temporary link; import through it."""
    heading(f"Restoring demo.test from demo.dev's backup {backup_id}")
    say(
        "Any environment's backup (of any site) can be the source; the files part's\n"
        "files_dev/ folder is accepted because the source is named. Its URL would be\n"
        "rewritten to test's (shown below with clone-content); here it is kept, so test\n"
        "can be compared byte for byte with dev's backup."
    )
    cli(
        [
            "restore", f"{SITE}.test", "--from", f"{SITE}.dev", "--backup", backup_id,
            "--no-search-replace", "--wait",
        ],
        env,
    )  # fmt: skip
    heading("demo.test's content now")
    check_content_back(backed_up, look_at_dev(test))

    heading("A temporary link to the backup's database part, used by curl")
    url = cli_output(
        ["backup", "link", f"{SITE}.dev", backup_id, "--part", "database", "--ttl", "300"], env
    )
    say(f"  {url.split('?', 1)[0]}?X-Amz-…  (signed, expires in 300 s)")
    target = Path(env["ENVRESTORE_STATE_DIR"]) / "demo" / "downloaded_database.sql.gz"
    show_command(["curl", "-fsS", "-o", relative(target), "<link>"])
    fetched = subprocess.run(
        ["curl", "-fsS", "-o", str(target), url], check=False, capture_output=True, text=True
    )
    if fetched.returncode != 0:
        raise SystemExit(f"curl could not use the link: {fetched.stderr.strip()}")
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    say(f"  {target.stat().st_size} bytes, sha256 {digest[:16]}… (the manifest's)")

    heading("Changing demo.test's database, then importing dev's through the link")
    asyncio.run(edit_database(test.dsn))
    cli(["import", "db", f"{SITE}.test", "--url", url, "--no-search-replace", "--wait"], env)
    heading("demo.test's content after the import")
    check_content_back(backed_up, look_at_dev(test))
    say(
        "A link that expired, or whose signature was changed, fails the import in its\n"
        "fetch step with the reason, before anything of the environment changes."
    )


WIDGET = "widget_text"


def _serialized_widget(url: str) -> str:
    """A PHP-serialized text widget, as WordPress stores it (byte lengths in `s:N:`)."""
    text = f'<a href="{url}/2026/11/photos/header.svg">Our header — « voilà »</a>'
    title = "Café"
    return (
        f'a:1:{{i:2;a:2:{{s:5:"title";s:{len(title.encode())}:"{title}";'
        f's:4:"text";s:{len(text.encode())}:"{text}";}}}}'
    )


def _lengths_hold(serialized: str) -> bool:
    """Every `s:N:"…";` of the widget has N = the string's length in bytes."""
    found = re.findall(r's:(\d+):"(.*?)";(?=s:|}|$)', serialized)
    return bool(found) and all(int(n) == len(text.encode()) for n, text in found)


async def _put_dev_links(dsn: str) -> None:
    """Give dev content that names its own address: a post link and a serialized widget."""
    url = url_of("dev")
    conn = await asyncpg.connect(dsn)
    try:
        statements = [
            (
                "UPDATE wp_posts SET post_content = post_content || $1 WHERE id = "
                "(SELECT min(id) FROM wp_posts)",
                f'<p><a href="{url}/about/">About us</a> <!-- wp:image '
                f'{{"url":"{url.replace("/", chr(92) + "/")}\\/header.svg"}} --></p>',
            ),
            (
                "INSERT INTO wp_options (option_name, option_value) VALUES ($1, $2) "
                "ON CONFLICT (option_name) DO UPDATE SET option_value = EXCLUDED.option_value",
                WIDGET,
                _serialized_widget(url),
            ),
        ]
        for sql, *args in statements:
            say(f"demo_dev=# {sql.split(' WHERE')[0].split(' VALUES')[0]} …")
            await conn.execute(sql, *args)
    finally:
        await conn.close()


async def _urls_in(dsn: str) -> tuple[int, str, str]:
    """(values still naming dev's host, the siteurl option, the widget option) of a database."""
    conn = await asyncpg.connect(dsn)
    try:
        host = url_of("dev").split("//", 1)[1]
        left = await conn.fetchval(
            "SELECT (SELECT count(*) FROM wp_posts WHERE post_content LIKE '%' || $1 || '%')"
            " + (SELECT count(*) FROM wp_options WHERE option_value LIKE '%' || $1 || '%')",
            host,
        )
        siteurl = await conn.fetchval(
            "SELECT option_value FROM wp_options WHERE option_name = 'siteurl'"
        )
        widget = await conn.fetchval(
            "SELECT option_value FROM wp_options WHERE option_name = $1", WIDGET
        )
    finally:
        await conn.close()
    return int(left), str(siteurl), str(widget or "")


def clone_into_live(env: dict[str, str], dev: DemoEnv, live: DemoEnv) -> None:
    """Clone dev's content into the protected live, its URL rewritten to live's."""
    heading("Cloning demo.dev's content into demo.live, its address rewritten to live's")
    say(
        f"dev's content names its own address, {url_of('dev')}: a link in a post, and a\n"
        "PHP-serialized widget (whose string lengths must stay right):"
    )
    asyncio.run(_put_dev_links(dev.dsn))
    say(
        "live is protected: a direct restore is refused, but clone-content is how checked\n"
        "content reaches it (with a rollback point)."
    )
    cli(["env", "clone-content", f"{SITE}.dev", f"{SITE}.live", "--wait"], env)
    left, siteurl, widget = asyncio.run(_urls_in(live.dsn))
    say(f"live's siteurl: {siteurl}")
    say(f"live's widget:  {widget}")
    say(f"values in live still naming {url_of('dev')}: {left}")
    if left or siteurl != url_of("live") or not _lengths_hold(widget):
        raise SystemExit(
            "the clone did not rewrite dev's address to live's cleanly: "
            f"{left} values left, siteurl {siteurl!r}, widget lengths ok: {_lengths_hold(widget)}"
        )
    say("rewritten in the shadow database before the switch; the serialized lengths hold.")


async def _seed_blog(pg: postgres.PostgresHandle) -> str:
    name = "blog_dev"
    admin = await asyncpg.connect(pg.dsn("postgres"))
    try:
        if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    conn = await asyncpg.connect(pg.dsn(name))
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS notes (id serial PRIMARY KEY, body text)")
    finally:
        await conn.close()
    return pg.dsn(name)


def _make_blog_repo(repo: Path) -> None:
    """Another site's code: its own history, files the demo site does not have."""
    if (repo / ".git").exists():
        return
    repo.mkdir(parents=True, exist_ok=True)
    git(repo, "init", "-q")
    git(repo, "symbolic-ref", "HEAD", "refs/heads/main")
    git(repo, "config", "user.name", "blog developer")
    git(repo, "config", "user.email", "blog@envrestore.invalid")
    git(repo, "config", "commit.gpgsign", "false")
    for rel, text, message in (
        ("plugins/blog-widgets/plugin.php", "<?php\n// Blog widgets.\n", "Blog widgets plugin"),
        ("plugins/blog-widgets/README.md", "# Blog widgets\n", "Document the widgets"),
    ):
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        git(repo, "add", rel)
        git(repo, "commit", "-q", "--no-verify", "-m", message)


def merge_another_sites_code(
    env: dict[str, str], state_dir: Path, pg: postgres.PostgresHandle, dev: DemoEnv
) -> None:
    """Back up another site and merge its code history into demo.dev."""
    heading("Merging another site's code into demo.dev")
    base = state_dir / "demo" / "blog-dev"
    (base / "files").mkdir(parents=True, exist_ok=True)
    _make_blog_repo(base / "code")
    dsn = asyncio.run(_seed_blog(pg))
    cli(["site", "add", "blog"], env, tolerate=(EXIT_CONFLICT,))
    cli(
        [
            "env", "add", "blog.dev", "--db", dsn, "--files", str(base / "files"),
            "--code", str(base / "code"),
        ],
        env,
        tolerate=(EXIT_CONFLICT,),
    )  # fmt: skip
    cli(["backup", "create", "blog.dev", "--wait"], env)
    say("Another site's history is not demo's: the restore asks how to bring it in.")
    cli(
        [
            "restore", f"{SITE}.dev", "--from", "blog.dev", "--element", "code",
            "--code-strategy", "merge", "--wait",
        ],
        env,
    )  # fmt: skip
    show_command(["git", "-C", relative(dev.code), "log", "--graph", "--oneline", "-7"])
    say(git_out(dev.code, "log", "--graph", "--oneline", "-7"))
    blog_root = git_out(base / "code", "rev-list", "--max-parents=0", "HEAD").strip()
    merged = subprocess.run(
        ["git", "-C", str(dev.code), "merge-base", "--is-ancestor", blog_root, "HEAD"],
        check=False,
    )
    if merged.returncode != 0 or not (dev.code / "plugins/blog-widgets/plugin.php").exists():
        raise SystemExit("blog's code history was not merged into demo.dev")
    say(
        "Both histories are in dev's branch; a conflict would have failed the job and\n"
        "named the paths, leaving dev's code as it was."
    )
