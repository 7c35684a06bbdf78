"""Files and code archives: what `tar -x` gets back is what was archived."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from envrestore.pipelines.archives import (
    code_archive,
    ensure_repo,
    files_archive,
    head_commit,
    tags,
)
from envrestore.pipelines.errors import BadInput
from envrestore.pipelines.streams import gzip_compress

pytestmark = pytest.mark.integration


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path → sha256 of each file, or "link:<target>" for each symlink."""
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = f"link:{path.readlink()}"
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


async def write_and_extract(stream, dest: Path) -> list[str]:
    archive = dest / "archive.tar.gz"
    with archive.open("wb") as fh:
        async for chunk in gzip_compress(stream, 6):
            fh.write(chunk)
    return await asyncio.to_thread(extract, archive, dest / "out")


def extract(archive: Path, out: Path) -> list[str]:
    """Extract with GNU tar, as a user would; return the member names."""
    out.mkdir()
    subprocess.run(["tar", "-xzf", str(archive), "-C", str(out)], check=True)
    listing = subprocess.run(["tar", "-tzf", str(archive)], check=True, capture_output=True)
    return listing.stdout.decode().splitlines()


def git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
    }
    done = subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=env)
    return done.stdout.decode().strip()


@pytest.fixture
def files_dir(tmp_path: Path) -> Path:
    root = tmp_path / "uploads"
    (root / "2024" / "05" / "deep").mkdir(parents=True)
    (root / "2024" / "05" / "photo one.jpg").write_bytes(os.urandom(200_000))
    (root / "2024" / "05" / "deep" / "notes ünï.txt").write_text("hello ☃\n")
    (root / "empty.txt").write_bytes(b"")
    (root / ".htaccess").write_text("deny from all\n")
    (root / "latest.jpg").symlink_to("2024/05/photo one.jpg")
    (root / "empty-dir").mkdir()
    return root


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    git(root, "init", "-q", "-b", "master")
    (root / "index.php").write_text("<?php echo 'v1';\n")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "v1")
    git(root, "tag", "v1")
    (root / "index.php").write_text("<?php echo 'v2';\n")
    git(root, "commit", "-q", "-am", "v2")
    git(root, "tag", "-a", "pantheon_live_1", "-m", "deploy")
    (root / "untracked.txt").write_text("kept too\n")
    return root


async def test_files_archive_extracts_byte_identical_under_files_env(files_dir, tmp_path):
    members = await write_and_extract(files_archive(files_dir, "files_dev"), tmp_path)
    assert all(m == "files_dev/" or m.startswith("files_dev/") for m in members)
    extracted = tmp_path / "out" / "files_dev"
    assert tree_digest(extracted) == tree_digest(files_dir)
    assert (extracted / "latest.jpg").is_symlink()
    assert (extracted / "latest.jpg").readlink() == Path("2024/05/photo one.jpg")


async def test_files_archive_of_a_missing_directory_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="does not exist"):
        files_archive(tmp_path / "nope", "files_dev")
    (tmp_path / "file").write_text("x")
    with pytest.raises(BadInput, match="not a directory"):
        files_archive(tmp_path / "file", "files_dev")


async def test_files_archive_refuses_a_top_folder_that_is_a_path(files_dir):
    with pytest.raises(BadInput, match="plain name"):
        files_archive(files_dir, "../escape")


async def test_code_archive_restores_the_same_head_and_tags(repo, tmp_path):
    members = await write_and_extract(code_archive(repo, "code_dev"), tmp_path)
    assert "code_dev/.git/HEAD" in members
    restored = tmp_path / "out" / "code_dev"
    assert await head_commit(restored) == await head_commit(repo) == git(repo, "rev-parse", "HEAD")
    source_tags = await tags(repo)
    assert await tags(restored) == source_tags
    assert set(source_tags) == {"v1", "pantheon_live_1"}
    assert source_tags["pantheon_live_1"] == git(repo, "rev-parse", "HEAD")
    assert git(restored, "status", "--porcelain") == "?? untracked.txt"


async def test_ensure_repo_rejects_missing_plain_and_nested_directories(repo, tmp_path):
    await ensure_repo(repo)
    with pytest.raises(BadInput, match="does not exist"):
        await ensure_repo(tmp_path / "missing")
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(BadInput, match="not a git working tree"):
        await ensure_repo(plain)
    (repo / "sub").mkdir()
    with pytest.raises(BadInput, match="is not its top"):
        await ensure_repo(repo / "sub")


async def test_code_archive_of_a_non_repository_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="not a git working tree"):
        async for _ in code_archive(tmp_path, "code_dev"):
            pass


async def test_head_commit_of_an_empty_repository_is_bad_input(tmp_path):
    await asyncio.to_thread(git, tmp_path, "init", "-q")
    with pytest.raises(BadInput, match="no commit"):
        await head_commit(tmp_path)
