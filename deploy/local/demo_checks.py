"""What the demo checks: backup parts against the manifest, and dev's content before and after."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from deploy.local.demo_console import CHUNK, SITE, relative, say, show_command
from deploy.local.demo_site import DemoEnv, git

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
    say(f"backup {backup_id}, manifest s3://{bucket}/{manifest_key}")
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
            say(f"  {part:<9} MISSING from the bucket: {key}")
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
        say(f"  {part:<9} {size:>9} bytes  sha256 {sha[:16]}…  {mark}  {key}")
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


def git_out(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def look_at_dev(dev: DemoEnv) -> DevContent:
    """Read dev's database, uploads and code, and show a little of each."""
    rows, rows_md5, newest = asyncio.run(_read_database(dev.dsn))
    files = _read_files(dev.files)
    say(f"database {dev.dsn.rsplit('/', 1)[-1]}: {_rows_text_of(rows)}")
    say(f"  newest post: {newest!r}; md5 of all rows {rows_md5[:12]}")
    say(f"uploads {relative(dev.files)}/: {len(files)} files")
    for rel, size, sha in files:
        say(f"  {size:>6} bytes  sha256 {sha[:12]}  {rel}")
    show_command(["git", "-C", relative(dev.code), "log", "--oneline", "-3"])
    log = git_out(dev.code, "log", "--oneline", "-3")
    say(log)
    return DevContent(
        rows=rows,
        rows_md5=rows_md5,
        newest_title=newest,
        files=files,
        head=git_out(dev.code, "rev-parse", "HEAD"),
        refs=git_out(dev.code, "show-ref", "--heads", "--tags"),
        worktree=git_out(dev.code, "status", "--porcelain"),
        log=log,
    )


def _rows_text_of(rows: tuple[tuple[str, int], ...]) -> str:
    return ", ".join(f"{table} {count} rows" for table, count in rows)


async def edit_database(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for sql in CHANGE_SQL:
            say(f"{dsn.rsplit('/', 1)[-1]}=# {sql};")
            say(f"  {await conn.execute(sql)}")
    finally:
        await conn.close()


def change_dev(dev: DemoEnv, before: DevContent) -> None:
    """Edit dev as its users would after the backup: posts, uploads, a commit."""
    asyncio.run(edit_database(dev.dsn))
    removed = next((f[0] for f in before.files if f[0] != "README.txt"), None)
    if removed is not None:
        (dev.files / removed).unlink()
        say(f"deleted upload {removed}")
    added = dev.files / ADDED_UPLOAD
    added.parent.mkdir(parents=True, exist_ok=True)
    added.write_text(f"Uploaded after the backup, before HEAD {before.head[:12]} was restored.\n")
    say(f"added upload {ADDED_UPLOAD}")
    with (dev.code / EDITED_CODE).open("a", encoding="utf-8") as handle:
        handle.write("body { background: #111; color: #eee; } /* dark mode, not reviewed */\n")
    say(f"edited {EDITED_CODE}")
    message = "Dark mode (not reviewed)"
    show_command(["git", "-C", relative(dev.code), "commit", "-q", "-am", message])
    git(dev.code, "commit", "-q", "--no-verify", "-am", message)


def check_content_back(before: DevContent, after: DevContent) -> None:
    """Stop the demo unless the restore brought back exactly what was backed up."""
    problems = before.differences(after)
    if problems:
        raise SystemExit(
            "the restore succeeded but dev's content differs from the backup's: "
            + "; ".join(problems)
        )
    say("content is back — same as before the changes:")
    say(f"  database  same rows in all {len(after.rows)} tables (md5 {after.rows_md5[:12]})")
    say(f"  files     same {len(after.files)} files: names, sizes and sha256")
    say(f"  code      same HEAD {after.head[:12]}, branches and tags, no uncommitted change")


async def latest_restore_job(database_url: str) -> str | None:
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
