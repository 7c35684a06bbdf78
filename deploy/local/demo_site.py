"""The demo site: WordPress-like databases, uploads and git code for dev, test and live."""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from deploy.local import postgres
from deploy.local.demo_console import ENVS, SITE

# ---------------------------------------------------------------- site content


USERS = [
    ("admin", "admin@demo.example", "Site Admin"),
    ("zoë", "zoe@demo.example", "Zoë Ångström"),
    ("hiroshi", "hiroshi@demo.example", "山田 博"),
    ("eleni", "eleni@demo.example", "Ελένη Παπαδοπούλου"),
    ("marc", "marc@demo.example", "Marc-André Lefèvre"),
]

TITLES = [
    "Hello world!",
    "Grüße aus Zürich",
    "日本語の投稿",
    "Καλημέρα κόσμε",
    "Café crème & croissants",
    "Launch day 🚀",
    "Notes on naïve caching",
    "Привет, мир",
]

SCHEMA = """
CREATE TABLE wp_users (
    id              bigserial PRIMARY KEY,
    user_login      text NOT NULL UNIQUE,
    user_email      text NOT NULL,
    display_name    text NOT NULL,
    user_registered timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE wp_posts (
    id            bigserial PRIMARY KEY,
    post_author   bigint NOT NULL REFERENCES wp_users (id),
    post_date     timestamptz NOT NULL,
    post_title    text NOT NULL,
    post_name     text NOT NULL,
    post_content  text NOT NULL,
    post_status   text NOT NULL DEFAULT 'publish',
    post_type     text NOT NULL DEFAULT 'post'
);
CREATE TABLE wp_postmeta (
    meta_id     bigserial PRIMARY KEY,
    post_id     bigint NOT NULL REFERENCES wp_posts (id) ON DELETE CASCADE,
    meta_key    text NOT NULL,
    meta_value  text
);
CREATE INDEX wp_postmeta_post_idx ON wp_postmeta (post_id);
CREATE TABLE wp_options (
    option_id     bigserial PRIMARY KEY,
    option_name   text NOT NULL UNIQUE,
    option_value  text NOT NULL
);
"""


def _posts(env: str) -> list[tuple[int, str, str, str, str]]:
    """(author, title, slug, content, status): `live` has the most, `dev` a draft of its own."""
    count = {"dev": 64, "test": 72, "live": 80}[env]
    rows = []
    for n in range(count):
        title = f"{TITLES[n % len(TITLES)]} #{n + 1}"
        content = (
            f"<p>{title}: post {n + 1} of the {env} environment.</p>\n"
            + "<p>Lorem ipsum dolor sit amet — « déjà vu », 你好, ✓.</p>\n" * (1 + n % 4)
        )
        rows.append((1 + n % len(USERS), title, f"post-{n + 1}", content, "publish"))
    if env == "dev":
        rows.append((1, "Work in progress (dev only)", "wip", "<p>Not ready yet.</p>", "draft"))
    return rows


def url_of(env: str) -> str:
    """The address visitors use for `env` (also the database's siteurl option)."""
    return f"https://{env}-{SITE}.example"


async def _seed_database(pg: postgres.PostgresHandle, env: str) -> str:
    """Create demo_<env> with content once; a later run keeps what is there."""
    name = f"{SITE}_{env}"
    admin = await asyncpg.connect(pg.dsn("postgres"))
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    conn = await asyncpg.connect(pg.dsn(name))
    try:
        if await conn.fetchval("SELECT to_regclass('public.wp_posts') IS NOT NULL"):
            return pg.dsn(name)
        async with conn.transaction():
            await conn.execute(SCHEMA)
            await conn.executemany(
                "INSERT INTO wp_users (user_login, user_email, display_name) VALUES ($1, $2, $3)",
                USERS,
            )
            await conn.executemany(
                "INSERT INTO wp_options (option_name, option_value) VALUES ($1, $2)",
                [
                    ("siteurl", url_of(env)),
                    ("blogname", f"Demo site ({env})"),
                    ("blogdescription", "Just another envrestore demo — ça marche"),
                ],
            )
            await conn.executemany(
                "INSERT INTO wp_posts (post_author, post_date, post_title, post_name, "
                "post_content, post_status) "
                "VALUES ($1, now() - make_interval(days => $6), $2, $3, $4, $5)",
                [(*row, index) for index, row in enumerate(_posts(env))],
            )
            post_ids = [r["id"] for r in await conn.fetch("SELECT id FROM wp_posts ORDER BY id")]
            meta = []
            for post_id in post_ids:
                meta += [
                    (post_id, "_edit_lock", f"{1764150000 + post_id}:1"),
                    (post_id, "_thumbnail_id", str(post_id % 7)),
                    (post_id, "views", str(post_id * 13 % 1000)),
                ]
            await conn.executemany(
                "INSERT INTO wp_postmeta (post_id, meta_key, meta_value) VALUES ($1, $2, $3)",
                meta,
            )
    finally:
        await conn.close()
    return pg.dsn(name)


def _write_files(root: Path, env: str) -> None:
    """An uploads folder: text, a binary, unicode names, nested year/month folders."""
    files = {
        "README.txt": f"Uploaded files of the {env} environment of site {SITE}.\n",
        "2026/10/report-q3.csv": "quarter,visits\nQ1,1200\nQ2,1350\nQ3,1610\n",
        "2026/11/menü-de-café.txt": "Crème brûlée — 6 €\nTarte tatin — 5 €\n",
        "2026/11/photos/header.svg": (
            '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
            '<rect width="10" height="10" fill="teal"/></svg>\n'
        ),
        f"{env}-only/notes.md": f"# {env}\n\nThis file exists only in {env}.\n",
    }
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_text(text, encoding="utf-8")
    blob = root / "2026/11/photos/noise.bin"
    if not blob.exists():
        # Deterministic incompressible bytes, like a real image upload.
        seed = hashlib.sha256(env.encode()).digest()
        blob.write_bytes(b"".join(hashlib.sha256(seed + bytes([i])).digest() for i in range(256)))


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def _make_repo(repo: Path, env: str) -> None:
    """A codebase with 3 commits and 2 tags, made once; a local identity so it works anywhere."""
    if (repo / ".git").exists():
        return
    repo.mkdir(parents=True, exist_ok=True)
    git(repo, "init", "-q")
    git(repo, "symbolic-ref", "HEAD", "refs/heads/main")
    git(repo, "config", "user.name", "envrestore demo")
    git(repo, "config", "user.email", "demo@envrestore.invalid")
    git(repo, "config", "commit.gpgsign", "false")
    git(repo, "config", "tag.gpgsign", "false")
    steps = [
        (
            "index.php",
            "<?php\n// Demo site front controller.\nrequire 'wp-blog-header.php';\n",
            "Initial import",
            "v1.0.0",
        ),
        ("wp-config.php", "<?php\ndefine('DB_NAME', 'demo');\n", "Add configuration", None),
        (
            "themes/demo/style.css",
            f"/* Theme: Demo ({env}) — « ok » */\nbody {{ color: #333; }}\n",
            f"Theme tweaks for {env}",
            "v1.1.0",
        ),
    ]
    for rel, text, message, tag in steps:
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        git(repo, "add", rel)
        git(repo, "commit", "-q", "--no-verify", "-m", message)
        if tag:
            git(repo, "tag", "-a", tag, "-m", f"Release {tag}")


@dataclass(frozen=True)
class DemoEnv:
    name: str
    dsn: str
    files: Path
    code: Path


async def build_site(state_dir: Path, pg: postgres.PostgresHandle) -> list[DemoEnv]:
    """Everything a hosting platform would already have: databases, uploads, code."""
    built = []
    for env in ENVS:
        base = state_dir / "demo" / env
        dsn = await _seed_database(pg, env)
        _write_files(base / "files", env)
        _make_repo(base / "code", env)
        built.append(DemoEnv(env, dsn, base / "files", base / "code"))
    return built
