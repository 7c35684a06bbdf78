"""`make demo`: the embedded stack, a demo site, a backup, restores, a link, an import.

    python -m deploy.local.demo [--state-dir DIR]

Starts (or reuses) the local stack, builds the site `demo` with `dev`, `test`
and `live` (a PostgreSQL database with WordPress-like content, an uploads
directory, a git repository with commits and tags), then drives the CLI
exactly as a user would type it: register the site and its environments,
back up `dev` through the queue with `--wait`, list the backup, and checks
that the three parts in the object store hash to what the manifest says.
Then it changes dev's content, restores dev from that backup with `--wait`,
checks that the content is back as it was, and shows that restoring the
protected `live` is refused. Then content from anywhere: `test` is restored
from `dev`'s backup (`--from`), a temporary link to the database part is
printed and read with curl, and `test`'s database is imported through that
link. Last, dev's content is cloned into the protected `live` with dev's
address rewritten to live's (a serialized widget keeps valid lengths), and
another site's code history is merged into dev. Safe to run again: what exists is reused, and
each run compares dev's content with itself within that run.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from deploy.local import postgres, stack

SITE = "demo"
ENVS = ("dev", "test", "live")
EXIT_CONFLICT = 4
CHUNK = 1 << 20
# The demo's backup takes seconds; this only ends a wait on a worker that died.
CLI_TIMEOUT_SECONDS = 600.0


# ---------------------------------------------------------------- output


def _say(text: str = "") -> None:
    print(text, flush=True)


def _heading(text: str) -> None:
    bold = sys.stdout.isatty()
    _say()
    _say(f"\033[1m== {text}\033[0m" if bold else f"== {text}")


def _show_command(argv: list[str]) -> None:
    text = "$ " + shlex.join(argv)
    _say(f"\033[36m{text}\033[0m" if sys.stdout.isatty() else text)


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


def _url_of(env: str) -> str:
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
                    ("siteurl", _url_of(env)),
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


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def _make_repo(repo: Path, env: str) -> None:
    """A codebase with 3 commits and 2 tags, made once; a local identity so it works anywhere."""
    if (repo / ".git").exists():
        return
    repo.mkdir(parents=True, exist_ok=True)
    _git(repo, "init", "-q")
    _git(repo, "symbolic-ref", "HEAD", "refs/heads/main")
    _git(repo, "config", "user.name", "envrestore demo")
    _git(repo, "config", "user.email", "demo@envrestore.invalid")
    _git(repo, "config", "commit.gpgsign", "false")
    _git(repo, "config", "tag.gpgsign", "false")
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
        _git(repo, "add", rel)
        _git(repo, "commit", "-q", "--no-verify", "-m", message)
        if tag:
            _git(repo, "tag", "-a", tag, "-m", f"Release {tag}")


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


# ---------------------------------------------------------------- the CLI, as typed


def _cli(
    args: list[str],
    env: dict[str, str],
    *,
    tolerate: tuple[int, ...] = (),
    note: str = "it already exists from an earlier run; kept",
    timeout: float = CLI_TIMEOUT_SECONDS,
) -> int:
    """Print the command, run it on this terminal (progress bars show), stop on failure.

    An exit code in `tolerate` is expected (`note` says why) and does not stop the demo.
    """
    argv = ["envrestore", *args]
    _show_command(argv)
    worker_log = Path(env["ENVRESTORE_STATE_DIR"]) / "logs" / "worker.log"
    try:
        result = subprocess.run(
            [*stack.envrestore_command(), *args],
            env={**os.environ, **env},
            check=False,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise SystemExit(
            f"`{shlex.join(argv)}` did not finish within {timeout:.0f}s; is the worker "
            f"running (`python -m deploy.local.stack status`)? Its log is {worker_log}"
        ) from None
    if result.returncode in tolerate:
        _say(f"   (exit {result.returncode}: {note})")
    elif result.returncode != 0:
        raise SystemExit(
            f"`{shlex.join(argv)}` failed with exit {result.returncode}; "
            f"the worker's log is {worker_log}"
        )
    return result.returncode


# ---------------------------------------------------------------- the check


def _manifest_parts(manifest: Any) -> dict[str, dict[str, Any]]:
    """part name -> {key, sha256, ...}, from a manifest listing parts as a dict or a list."""
    parts = manifest.get("parts", {}) if isinstance(manifest, dict) else {}
    if isinstance(parts, list):
        return {str(p.get("part") or p.get("name")): p for p in parts if isinstance(p, dict)}
    return {str(name): p for name, p in parts.items() if isinstance(p, dict)}


def _s3_client(env: dict[str, str]) -> Any:
    import boto3  # aioboto3 brings it; only this check needs it
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=env["ENVRESTORE_S3_ENDPOINT_URL"],
        aws_access_key_id=env["ENVRESTORE_S3_ACCESS_KEY_ID"],
        aws_secret_access_key=env["ENVRESTORE_S3_SECRET_ACCESS_KEY"],
        region_name=env["ENVRESTORE_S3_REGION"],
        config=Config(s3={"addressing_style": "path"}),
    )


def _stream_sha256(client: Any, bucket: str, key: str) -> tuple[int, str]:
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    digest, size = hashlib.sha256(), 0
    for chunk in body.iter_chunks(CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


async def _latest_backup(database_url: str) -> tuple[str, str, str | None, list[Any]]:
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            "SELECT id, manifest_key, job_id::text AS job_id FROM backups "
            "WHERE site = $1 AND env = 'dev' ORDER BY created_at DESC LIMIT 1",
            SITE,
        )
        if row is None:
            raise SystemExit("the backup command succeeded but the ledger holds no backup of dev")
        parts = await conn.fetch(
            "SELECT part, key, size, sha256 FROM backup_parts WHERE backup_id = $1 ORDER BY part",
            row["id"],
        )
    finally:
        await conn.close()
    return row["id"], row["manifest_key"], row["job_id"], list(parts)


def check_backup(env: dict[str, str]) -> tuple[str, str | None]:
    """Stream each part back from S3: its sha256 must equal the manifest's. Returns ids."""
    backup_id, manifest_key, job_id, ledger_parts = asyncio.run(
        _latest_backup(env["ENVRESTORE_DATABASE_URL"])
    )
    client = _s3_client(env)
    bucket = env["ENVRESTORE_S3_BUCKET"]
    try:
        manifest = json.loads(client.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
    except client.exceptions.NoSuchKey:
        raise SystemExit(
            f"backup {backup_id} is in the ledger but its manifest s3://{bucket}/{manifest_key} "
            "is not in the bucket"
        ) from None
    in_manifest = _manifest_parts(manifest)
    _say(f"backup {backup_id}, manifest s3://{bucket}/{manifest_key}")
    problems = []
    for part in ("code", "database", "files"):
        expected = in_manifest.get(part, {})
        ledger = next((p for p in ledger_parts if p["part"] == part), None)
        key = expected.get("key") or (ledger["key"] if ledger else None)
        if not key:
            problems.append(f"{part}: not in the manifest")
            continue
        try:
            size, sha = _stream_sha256(client, bucket, key)
        except client.exceptions.NoSuchKey:
            _say(f"  {part:<9} MISSING from the bucket: {key}")
            problems.append(f"{part}: s3://{bucket}/{key} does not exist")
            continue
        wrong = [
            where
            for where, claimed in (
                ("manifest", expected.get("sha256")),
                ("ledger", ledger["sha256"] if ledger else sha),
            )
            if claimed != sha
        ]
        mark = "MISMATCH" if wrong else "ok"
        _say(f"  {part:<9} {size:>9} bytes  sha256 {sha[:16]}…  {mark}  {key}")
        if wrong:
            problems.append(f"{part}: sha256 {sha} differs from the {' and '.join(wrong)}'s")
    if problems:
        raise SystemExit("the backup does not match its manifest: " + "; ".join(problems))
    return backup_id, job_id


# ---------------------------------------------------------------- dev's content


CONTENT_TABLES = ("wp_users", "wp_posts", "wp_postmeta", "wp_options")
#: What the demo does to dev after the backup, as an editor would: shown, then run.
CHANGE_SQL = (
    "DELETE FROM wp_posts WHERE id IN (SELECT id FROM wp_posts ORDER BY post_date LIMIT 5)",
    "UPDATE wp_posts SET post_title = 'Edited on dev after the backup' "
    "WHERE id = (SELECT id FROM wp_posts ORDER BY post_date DESC, id DESC LIMIT 1)",
)
ADDED_UPLOAD = "2026/12/uploaded-after-backup.txt"
EDITED_CODE = "themes/demo/style.css"


@dataclass(frozen=True)
class DevContent:
    """What a user would look at to tell one version of dev's content from another."""

    rows: tuple[tuple[str, int], ...]  # (table, row count)
    rows_md5: str  # over every row of CONTENT_TABLES, as text
    newest_title: str
    files: tuple[tuple[str, int, str], ...]  # (path under files/, size, sha256)
    head: str
    refs: str  # branches and tags: `git show-ref --heads --tags`
    worktree: str  # `git status --porcelain`: uncommitted changes
    log: str  # git log --oneline -3

    def differences(self, other: DevContent) -> list[str]:
        """One line per part (database, files, code) whose content is not the same."""
        found = []
        if (self.rows, self.rows_md5, self.newest_title) != (
            other.rows,
            other.rows_md5,
            other.newest_title,
        ):
            found.append(
                f"database: {_rows_text_of(self.rows)}, md5 {self.rows_md5[:12]} "
                f"vs {_rows_text_of(other.rows)}, md5 {other.rows_md5[:12]}"
            )
        if self.files != other.files:
            mine, theirs = set(self.files), set(other.files)
            changed = sorted({f[0] for f in mine ^ theirs})
            found.append(f"files: {', '.join(changed)} differ")
        if (self.head, self.refs, self.worktree) != (other.head, other.refs, other.worktree):
            found.append(
                f"code: HEAD {self.head[:12]} vs {other.head[:12]}, or its branches, tags "
                "or uncommitted changes"
            )
        return found


async def _read_database(dsn: str) -> tuple[tuple[tuple[str, int], ...], str, str]:
    """Row counts, one md5 over all rows, the newest post's title; the connection is closed
    before returning (a restore's switch waits for no session of the database)."""
    conn = await asyncpg.connect(dsn)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        counts = []
        for table in CONTENT_TABLES:
            rows = await conn.fetch(f"SELECT t::text AS row FROM {table} t ORDER BY 1")
            counts.append((table, len(rows)))
            for row in rows:
                digest.update(f"{table}\t{row['row']}\n".encode())
        newest = await conn.fetchval(
            "SELECT post_title FROM wp_posts ORDER BY post_date DESC, id DESC LIMIT 1"
        )
    finally:
        await conn.close()
    return tuple(counts), digest.hexdigest(), str(newest)


def _read_files(root: Path) -> tuple[tuple[str, int, str], ...]:
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(CHUNK), b""):
                digest.update(chunk)
        found.append((path.relative_to(root).as_posix(), path.stat().st_size, digest.hexdigest()))
    return tuple(found)


def _git_out(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def look_at_dev(dev: DemoEnv) -> DevContent:
    """Read dev's database, uploads and code, and show a little of each."""
    rows, rows_md5, newest = asyncio.run(_read_database(dev.dsn))
    files = _read_files(dev.files)
    _say(f"database {dev.dsn.rsplit('/', 1)[-1]}: {_rows_text_of(rows)}")
    _say(f"  newest post: {newest!r}; md5 of all rows {rows_md5[:12]}")
    _say(f"uploads {_relative(dev.files)}/: {len(files)} files")
    for rel, size, sha in files:
        _say(f"  {size:>6} bytes  sha256 {sha[:12]}  {rel}")
    _show_command(["git", "-C", _relative(dev.code), "log", "--oneline", "-3"])
    log = _git_out(dev.code, "log", "--oneline", "-3")
    _say(log)
    return DevContent(
        rows=rows,
        rows_md5=rows_md5,
        newest_title=newest,
        files=files,
        head=_git_out(dev.code, "rev-parse", "HEAD"),
        refs=_git_out(dev.code, "show-ref", "--heads", "--tags"),
        worktree=_git_out(dev.code, "status", "--porcelain"),
        log=log,
    )


def _rows_text_of(rows: tuple[tuple[str, int], ...]) -> str:
    return ", ".join(f"{table} {count} rows" for table, count in rows)


async def _edit_database(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for sql in CHANGE_SQL:
            _say(f"{dsn.rsplit('/', 1)[-1]}=# {sql};")
            _say(f"  {await conn.execute(sql)}")
    finally:
        await conn.close()


def change_dev(dev: DemoEnv, before: DevContent) -> None:
    """Edit dev as its users would after the backup: posts, uploads, a commit."""
    asyncio.run(_edit_database(dev.dsn))
    removed = next((f[0] for f in before.files if f[0] != "README.txt"), None)
    if removed is not None:
        (dev.files / removed).unlink()
        _say(f"deleted upload {removed}")
    added = dev.files / ADDED_UPLOAD
    added.parent.mkdir(parents=True, exist_ok=True)
    added.write_text(f"Uploaded after the backup, before HEAD {before.head[:12]} was restored.\n")
    _say(f"added upload {ADDED_UPLOAD}")
    with (dev.code / EDITED_CODE).open("a", encoding="utf-8") as handle:
        handle.write("body { background: #111; color: #eee; } /* dark mode, not reviewed */\n")
    _say(f"edited {EDITED_CODE}")
    message = "Dark mode (not reviewed)"
    _show_command(["git", "-C", _relative(dev.code), "commit", "-q", "-am", message])
    _git(dev.code, "commit", "-q", "--no-verify", "-am", message)


def check_content_back(before: DevContent, after: DevContent) -> None:
    """Stop the demo unless the restore brought back exactly what was backed up."""
    problems = before.differences(after)
    if problems:
        raise SystemExit(
            "the restore succeeded but dev's content differs from the backup's: "
            + "; ".join(problems)
        )
    _say("content is back — same as before the changes:")
    _say(f"  database  same rows in all {len(after.rows)} tables (md5 {after.rows_md5[:12]})")
    _say(f"  files     same {len(after.files)} files: names, sizes and sha256")
    _say(f"  code      same HEAD {after.head[:12]}, branches and tags, no uncommitted change")


async def _latest_restore_job(database_url: str) -> str | None:
    conn = await asyncpg.connect(database_url)
    try:
        job_id = await conn.fetchval(
            "SELECT id::text FROM jobs WHERE kind = 'restore' AND site = $1 AND env = 'dev' "
            "ORDER BY created_at DESC LIMIT 1",
            SITE,
        )
    finally:
        await conn.close()
    return str(job_id) if job_id else None


# ---------------------------------------------------------------- main


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def run(state_dir: Path) -> None:
    _heading(
        "Starting the embedded stack (PostgreSQL, Redis, SeaweedFS S3, one worker, the scheduler)"
    )
    env = stack.up(state_dir)
    pg = postgres.running(stack.StackPaths(state_dir).pg_data)
    if pg is None:
        raise SystemExit("PostgreSQL stopped right after the stack started; see its log")
    _say(f"settings: {_relative(stack.StackPaths(state_dir).env_file)}")
    _say(
        "scheduler: running; every environment is backed up daily at "
        "ENVRESTORE_SCHEDULE_DEFAULT_HOUR (UTC) from its first day on"
    )

    _heading(f"Building site {SITE!r}: databases, uploaded files, git code for {', '.join(ENVS)}")
    envs = asyncio.run(build_site(state_dir, pg))
    for item in envs:
        _say(
            f"  {item.name:<5} db {item.dsn}  files {_relative(item.files)}  "
            f"code {_relative(item.code)}"
        )

    _heading("Registering them with envrestore")
    _show_command(["source", _relative(stack.StackPaths(state_dir).env_file)])
    _cli(["site", "add", SITE], env, tolerate=(EXIT_CONFLICT,))
    for item in envs:
        _cli(
            [
                "env",
                "add",
                f"{SITE}.{item.name}",
                "--db",
                item.dsn,
                "--files",
                str(item.files),
                "--code",
                str(item.code),
                "--url",
                _url_of(item.name),
            ],
            env,
            tolerate=(EXIT_CONFLICT,),
        )
    _cli(["env", "list"], env)

    _heading("Backing up demo.dev through the queue")
    _cli(["backup", "create", f"{SITE}.dev", "--wait"], env)
    _cli(["backup", "list", f"{SITE}.dev"], env)

    _heading("Checking the parts in the object store against the manifest")
    backup_id, job_id = check_backup(env)

    dev = next(item for item in envs if item.name == "dev")
    _heading("demo.dev's content, as backed up")
    before = look_at_dev(dev)

    _heading("Changing demo.dev as its users would: posts, uploads, code")
    change_dev(dev, before)
    changed = look_at_dev(dev)
    if not before.differences(changed):
        raise SystemExit("the demo's changes to dev left its content as it was")

    _heading(f"Restoring demo.dev from backup {backup_id}")
    _cli(["restore", f"{SITE}.dev", "--backup", backup_id, "--wait"], env)
    restore_job = asyncio.run(_latest_restore_job(env["ENVRESTORE_DATABASE_URL"]))

    _heading("demo.dev's content after the restore")
    after = look_at_dev(dev)
    check_content_back(before, after)

    _heading("Undoing a restore, and why live is not restored directly")
    _say(
        "The content the restore replaced is kept (ENVRESTORE_ROLLBACK_HOURS, default 24);\n"
        "this would swap it back in:\n"
        f"  envrestore rollback run {restore_job or '<restore job id>'} --wait\n"
        "Restoring a protected environment is refused (exit 4):"
    )
    code = _cli(
        ["restore", f"{SITE}.live"],
        env,
        tolerate=(EXIT_CONFLICT,),
        note="refused by policy, as it should be",
    )
    if code != EXIT_CONFLICT:
        raise SystemExit(f"`envrestore restore {SITE}.live` was not refused (exit {code})")
    _say(
        f"The way to {SITE}.live: restore {SITE}.dev or {SITE}.test, check the result there,\n"
        f"then clone its content to {SITE}.live."
    )

    test = next(item for item in envs if item.name == "test")
    content_from_anywhere(env, backup_id, before, test)
    live = next(item for item in envs if item.name == "live")
    clone_into_live(env, dev, live)
    merge_another_sites_code(env, state_dir, pg, dev)

    env_file = _relative(stack.StackPaths(state_dir).env_file)
    logs = _relative(stack.StackPaths(state_dir).logs)
    _heading("What just happened")
    _say(
        f"""\
A PostgreSQL, a Redis and a SeaweedFS S3 gateway started from Python wheels on free
loopback ports, with their data under {_relative(state_dir)}/ (nothing else on this
machine was touched), one envrestore worker and the scheduler (it backs every
environment up daily, keeps dailies 8 days and weeklies 32, and queues the
deletion of expired backups; `envrestore schedule show`). The site {SITE!r} got three
environments; `backup create --wait` queued a job whose steps the worker ran: it
dumped demo_dev with pg_dump, archived the uploads and the git repository, streamed
the three parts to S3 with their sha256, and recorded backup {backup_id}.

Then dev changed (posts deleted and retitled, an upload deleted and one added, a
commit) and `restore --wait` put the backup back: the worker checked each part's
sha256, imported the dump into a shadow database, unpacked the uploads and the code
beside the live ones, and swapped all three in at the end; a failure before that
swap would have left dev untouched. The replaced content is the rollback point.

The same pipeline restored test from dev's backup (`--from`), and imported dev's
database into test through a temporary link that plain curl could also read; the
link was checked against its record (signature, object, expiry) before a byte was
read. dev's content was cloned into the protected live (no --force-live: this is
how content reaches live), its address rewritten to live's in the shadow database;
and another site's code was merged into dev's history.

Look around:
  source {env_file}
  envrestore job show {restore_job or "<restore job id>"}    # the restore
  envrestore job show {job_id or "<backup job id>"}    # the backup
  envrestore backup list {SITE}.dev
  envrestore backup link {SITE}.dev {backup_id} --all
  envrestore job list {SITE}
  envrestore env list
  envrestore schedule show                 # daily backups: next and last slot
  tail -f {logs}/worker.log {logs}/scheduler.log
  python -m deploy.local.stack status

Stop everything this demo started:  make demo-stop"""
    )


def _cli_output(args: list[str], env: dict[str, str]) -> str:
    """Run a command whose output the demo uses next (a link); show it as typed."""
    argv = ["envrestore", *args]
    _show_command(argv)
    result = subprocess.run(
        [*stack.envrestore_command(), *args],
        env={**os.environ, **env},
        check=False,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_SECONDS,
    )
    if result.returncode != 0:
        raise SystemExit(f"`{shlex.join(argv)}` failed: {result.stderr.strip()}")
    sys.stderr.write(result.stderr)
    return result.stdout.strip()


def content_from_anywhere(
    env: dict[str, str], backup_id: str, backed_up: DevContent, test: DemoEnv
) -> None:
    """Restore test from dev's backup; hand out a temporary link; import through it."""
    _heading(f"Restoring demo.test from demo.dev's backup {backup_id}")
    _say(
        "Any environment's backup (of any site) can be the source; the files part's\n"
        "files_dev/ folder is accepted because the source is named. Its URL would be\n"
        "rewritten to test's (shown below with clone-content); here it is kept, so test\n"
        "can be compared byte for byte with dev's backup."
    )
    _cli(
        [
            "restore", f"{SITE}.test", "--from", f"{SITE}.dev", "--backup", backup_id,
            "--no-search-replace", "--wait",
        ],
        env,
    )  # fmt: skip
    _heading("demo.test's content now")
    check_content_back(backed_up, look_at_dev(test))

    _heading("A temporary link to the backup's database part, used by curl")
    url = _cli_output(
        ["backup", "link", f"{SITE}.dev", backup_id, "--part", "database", "--ttl", "300"], env
    )
    _say(f"  {url.split('?', 1)[0]}?X-Amz-…  (signed, expires in 300 s)")
    target = Path(env["ENVRESTORE_STATE_DIR"]) / "demo" / "downloaded_database.sql.gz"
    _show_command(["curl", "-fsS", "-o", _relative(target), "<link>"])
    fetched = subprocess.run(
        ["curl", "-fsS", "-o", str(target), url], check=False, capture_output=True, text=True
    )
    if fetched.returncode != 0:
        raise SystemExit(f"curl could not use the link: {fetched.stderr.strip()}")
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    _say(f"  {target.stat().st_size} bytes, sha256 {digest[:16]}… (the manifest's)")

    _heading("Changing demo.test's database, then importing dev's through the link")
    asyncio.run(_edit_database(test.dsn))
    _cli(["import", "db", f"{SITE}.test", "--url", url, "--no-search-replace", "--wait"], env)
    _heading("demo.test's content after the import")
    check_content_back(backed_up, look_at_dev(test))
    _say(
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
    url = _url_of("dev")
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
            _say(f"demo_dev=# {sql.split(' WHERE')[0].split(' VALUES')[0]} …")
            await conn.execute(sql, *args)
    finally:
        await conn.close()


async def _urls_in(dsn: str) -> tuple[int, str, str]:
    """(values still naming dev's host, the siteurl option, the widget option) of a database."""
    conn = await asyncpg.connect(dsn)
    try:
        host = _url_of("dev").split("//", 1)[1]
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
    _heading("Cloning demo.dev's content into demo.live, its address rewritten to live's")
    _say(
        f"dev's content names its own address, {_url_of('dev')}: a link in a post, and a\n"
        "PHP-serialized widget (whose string lengths must stay right):"
    )
    asyncio.run(_put_dev_links(dev.dsn))
    _say(
        "live is protected: a direct restore is refused, but clone-content is how checked\n"
        "content reaches it (with a rollback point)."
    )
    _cli(["env", "clone-content", f"{SITE}.dev", f"{SITE}.live", "--wait"], env)
    left, siteurl, widget = asyncio.run(_urls_in(live.dsn))
    _say(f"live's siteurl: {siteurl}")
    _say(f"live's widget:  {widget}")
    _say(f"values in live still naming {_url_of('dev')}: {left}")
    if left or siteurl != _url_of("live") or not _lengths_hold(widget):
        raise SystemExit(
            "the clone did not rewrite dev's address to live's cleanly: "
            f"{left} values left, siteurl {siteurl!r}, widget lengths ok: {_lengths_hold(widget)}"
        )
    _say("rewritten in the shadow database before the switch; the serialized lengths hold.")


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
    _git(repo, "init", "-q")
    _git(repo, "symbolic-ref", "HEAD", "refs/heads/main")
    _git(repo, "config", "user.name", "blog developer")
    _git(repo, "config", "user.email", "blog@envrestore.invalid")
    _git(repo, "config", "commit.gpgsign", "false")
    for rel, text, message in (
        ("plugins/blog-widgets/plugin.php", "<?php\n// Blog widgets.\n", "Blog widgets plugin"),
        ("plugins/blog-widgets/README.md", "# Blog widgets\n", "Document the widgets"),
    ):
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        _git(repo, "add", rel)
        _git(repo, "commit", "-q", "--no-verify", "-m", message)


def merge_another_sites_code(
    env: dict[str, str], state_dir: Path, pg: postgres.PostgresHandle, dev: DemoEnv
) -> None:
    """Back up another site and merge its code history into demo.dev."""
    _heading("Merging another site's code into demo.dev")
    base = state_dir / "demo" / "blog-dev"
    (base / "files").mkdir(parents=True, exist_ok=True)
    _make_blog_repo(base / "code")
    dsn = asyncio.run(_seed_blog(pg))
    _cli(["site", "add", "blog"], env, tolerate=(EXIT_CONFLICT,))
    _cli(
        [
            "env", "add", "blog.dev", "--db", dsn, "--files", str(base / "files"),
            "--code", str(base / "code"),
        ],
        env,
        tolerate=(EXIT_CONFLICT,),
    )  # fmt: skip
    _cli(["backup", "create", "blog.dev", "--wait"], env)
    _say("Another site's history is not demo's: the restore asks how to bring it in.")
    _cli(
        [
            "restore", f"{SITE}.dev", "--from", "blog.dev", "--element", "code",
            "--code-strategy", "merge", "--wait",
        ],
        env,
    )  # fmt: skip
    _show_command(["git", "-C", _relative(dev.code), "log", "--graph", "--oneline", "-7"])
    _say(_git_out(dev.code, "log", "--graph", "--oneline", "-7"))
    blog_root = _git_out(base / "code", "rev-list", "--max-parents=0", "HEAD").strip()
    merged = subprocess.run(
        ["git", "-C", str(dev.code), "merge-base", "--is-ancestor", blog_root, "HEAD"],
        check=False,
    )
    if merged.returncode != 0 or not (dev.code / "plugins/blog-widgets/plugin.php").exists():
        raise SystemExit("blog's code history was not merged into demo.dev")
    _say(
        "Both histories are in dev's branch; a conflict would have failed the job and\n"
        "named the paths, leaving dev's code as it was."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.local.demo", description=__doc__)
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where the stack and the demo site live (env: ENVRESTORE_STATE_DIR)",
    )
    args = parser.parse_args(argv)
    state_dir = args.state_dir.resolve() if args.state_dir else stack.default_state_dir()
    try:
        run(state_dir)
    except RuntimeError as exc:  # the stack did not come up; the message says where to look
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
