"""Restored trees: byte-identical extraction, atomic swap with rollback, code history kept.

Local directories and git only (tmp_path); no services.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from envrestore.pipelines import trees
from envrestore.pipelines.archives.code import code_archive
from envrestore.pipelines.archives.code_restore import prepare_code
from envrestore.pipelines.archives.extract import extract_tar
from envrestore.pipelines.archives.files import files_archive
from envrestore.pipelines.archives.safety import TarLimits
from envrestore.pipelines.errors import Refused, UnsafeInput
from envrestore.pipelines.streams import gzip_compress, gzip_decompress

#: "keep": these round trips compare modes too (a restore normalises them by default).
LIMITS = TarLimits(max_bytes=1 << 30, mode_policy="keep")


def digest(root: Path) -> dict[str, str]:
    """Relative path → sha256, "link:<target>" or "dir" (with mode), symlinks not followed."""
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = f"link:{path.readlink()}"
        elif path.is_file():
            mode = oct(path.stat().st_mode & 0o7777)
            out[rel] = f"{hashlib.sha256(path.read_bytes()).hexdigest()} {mode}"
        else:
            out[rel] = "dir"
    return out


def make_site_files(root: Path) -> Path:
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "with space").mkdir()
    (root / "empty").mkdir()
    (root / "a" / "b" / "c" / "deep.txt").write_text("deep\n")
    (root / "with space" / "file name.txt").write_text("spaced\n")
    (root / "ünïcødé-日本.txt").write_text("unicode\n")
    (root / "big.bin").write_bytes(os.urandom(5 * 1024 * 1024))
    (root / ("n" * 150)).write_text("long name\n")  # beyond ustar's 100 bytes
    (root / "a" / "link-to-deep").symlink_to("b/c/deep.txt")
    (root / "up-link").symlink_to("a/b")
    (root / "readonly.txt").write_text("ro\n")
    (root / "readonly.txt").chmod(0o444)
    os.utime(root / "a" / "b" / "c" / "deep.txt", (1_600_000_000, 1_600_000_000))
    return root


async def gz_round_trip(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Compress and decompress, as a part does on its way through S3."""
    async for chunk in gzip_decompress(gzip_compress(stream), max_output=1 << 32):
        yield chunk


async def test_good_archive_extracts_byte_identical_with_top_folder_stripped(
    tmp_path: Path,
) -> None:
    source = make_site_files(tmp_path / "files")
    dest = tmp_path / "out"
    report = await extract_tar(
        gz_round_trip(files_archive(source, "files_dev")), dest, limits=LIMITS
    )
    assert report.top == "files_dev"
    assert digest(dest) == digest(source)
    assert (dest / "a" / "b" / "c" / "deep.txt").stat().st_mtime == 1_600_000_000
    assert (dest / "empty").is_dir()
    assert (dest / "a" / "link-to-deep").read_text() == "deep\n"


async def test_gnu_format_archive_from_another_tool_extracts_too(tmp_path: Path) -> None:
    """GNU long names (./L headers) and a `./` prefix, as `tar -czf x.tgz -C dir .` writes."""
    source = make_site_files(tmp_path / "site" / "files_live")
    archive = tmp_path / "x.tar"
    await asyncio.to_thread(
        subprocess.run,
        ["tar", "--format=gnu", "-cf", str(archive), "-C", str(tmp_path / "site"), "./files_live"],
        check=True,
    )

    async def read() -> AsyncIterator[bytes]:
        with archive.open("rb") as fh:
            while data := fh.read(100_000):
                yield data

    report = await extract_tar(read(), tmp_path / "out", limits=LIMITS)
    assert report.top == "files_live"
    assert digest(tmp_path / "out") == digest(source)


def tree(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True)
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def contents(root: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(root.iterdir())}


def test_exchange_swaps_two_directories_exactly(tmp_path: Path) -> None:
    a = tree(tmp_path / "a", {"one": "1"})
    b = tree(tmp_path / "b", {"two": "2"})
    with capture_logs() as logs:
        trees.exchange(a, b)
    assert contents(a) == {"two": "2"}
    assert contents(b) == {"one": "1"}
    assert not [e for e in logs if e["event"] == "trees.exchange_fallback"]


def test_staging_and_rollback_sit_beside_the_live_directory(tmp_path: Path) -> None:
    live = tmp_path / "site" / "files"
    live.mkdir(parents=True)
    assert trees.staging_path(live, "j1") == tmp_path / "site" / ".files.envrestore-staging-j1"
    assert trees.rollback_path(live, "j1") == tmp_path / "site" / ".files.envrestore-rollback-j1"


def test_swap_in_makes_staging_live_keeps_rollback_and_second_call_is_a_noop(
    tmp_path: Path,
) -> None:
    live = tree(tmp_path / "files", {"old.txt": "old"})
    staging = tree(trees.staging_path(live, "j1"), {"new.txt": "new"})
    rollback = trees.rollback_path(live, "j1")
    window = trees.swap_in(live, staging, rollback)
    assert window < 1.0
    assert contents(live) == {"new.txt": "new"}
    assert contents(rollback) == {"old.txt": "old"}
    assert not staging.exists()
    assert trees.swap_in(live, staging, rollback) == 0.0
    assert contents(live) == {"new.txt": "new"}
    assert contents(rollback) == {"old.txt": "old"}


def test_swap_in_finishes_a_swap_whose_worker_died_after_the_exchange(tmp_path: Path) -> None:
    live = tree(tmp_path / "files", {"old.txt": "old"})
    staging = tree(trees.staging_path(live, "j2"), {"new.txt": "new"})
    rollback = trees.rollback_path(live, "j2")
    marker = staging.parent / f"{staging.name}.switching"
    st = staging.stat()
    marker.write_text(f"{st.st_dev}:{st.st_ino}")
    trees.exchange(staging, live)  # the first run got this far, then died
    trees.swap_in(live, staging, rollback)
    assert contents(live) == {"new.txt": "new"}
    assert contents(rollback) == {"old.txt": "old"}
    assert not marker.exists()


def test_first_restore_without_a_live_directory_works_and_rolls_back(tmp_path: Path) -> None:
    live = tmp_path / "files"
    staging = tree(trees.staging_path(live, "j3"), {"new.txt": "new"})
    rollback = trees.rollback_path(live, "j3")
    trees.swap_in(live, staging, rollback)
    assert contents(live) == {"new.txt": "new"}
    assert trees.swap_in(live, staging, rollback) == 0.0
    aside = trees.aside_path(live, "j3")
    trees.swap_back(live, rollback, aside)
    assert contents(live) == {}
    assert contents(aside) == {"new.txt": "new"}


async def test_rollback_round_trip_restores_the_original_tree_exactly(tmp_path: Path) -> None:
    live = make_site_files(tmp_path / "files")
    original = digest(live)
    other = make_site_files(tmp_path / "other")
    (other / "added.txt").write_text("restored only\n")
    staging = trees.staging_path(live, "j4")
    await extract_tar(gz_round_trip(files_archive(other, "files_dev")), staging, limits=LIMITS)
    rollback, aside = trees.rollback_path(live, "j4"), trees.aside_path(live, "j4")
    trees.swap_in(live, staging, rollback)
    assert (live / "added.txt").exists()
    trees.swap_back(live, rollback, aside)
    assert trees.swap_back(live, rollback, aside) == 0.0
    assert digest(live) == original
    assert (aside / "added.txt").exists()
    await trees.delete_tree_later(aside)
    assert not aside.exists()
    assert digest(live) == original


async def test_delete_tree_later_refuses_a_live_looking_path(tmp_path: Path) -> None:
    live = tree(tmp_path / "files", {"keep.txt": "keep"})
    for path in (live, tmp_path / ".files", tmp_path / "files.envrestore-staging-x"):
        with pytest.raises(Refused):
            await trees.delete_tree_later(path)
        with pytest.raises(Refused):
            trees.discard(path)
    assert contents(live) == {"keep.txt": "keep"}


async def test_delete_tree_later_does_not_follow_symlinks(tmp_path: Path) -> None:
    victim = tree(tmp_path / "victim", {"keep.txt": "keep"})
    rollback = tree(trees.rollback_path(tmp_path / "files", "j5"), {"x": "x"})
    (rollback / "link").symlink_to(victim)
    await trees.delete_tree_later(rollback)
    assert not rollback.exists()
    assert contents(victim) == {"keep.txt": "keep"}


def test_discard_removes_a_failed_staging_directory(tmp_path: Path) -> None:
    staging = tree(trees.staging_path(tmp_path / "files", "j6"), {"partial": "x"})
    trees.discard(staging)
    assert not staging.exists()
    trees.discard(staging)  # already gone: fine


# ---------------------------------------------------------------- code


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


def make_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    for i in range(3):
        (path / "index.php").write_text(f"<?php // v{i}\n")
        git(path, "add", "-A")
        git(path, "commit", "-q", "-m", f"commit {i}")
        git(path, "tag", "-a", f"v{i}", "-m", f"release {i}")
    return path


def all_tags(repo: Path) -> dict[str, str]:
    out = git(repo, "for-each-ref", "--format=%(refname:strip=2) %(objectname)", "refs/tags")
    return dict(line.split() for line in out.splitlines())


async def test_prepare_code_keeps_backup_head_and_tags_and_live_newer_commit(
    tmp_path: Path,
) -> None:
    live = make_repo(tmp_path / "code")
    backup_head = git(live, "rev-parse", "HEAD")
    backup_tags = all_tags(live)
    staging = trees.staging_path(live, "j7")
    archive = code_archive(live, "code_dev")
    await extract_tar(gz_round_trip(archive), staging, limits=LIMITS)
    # After the backup, the live site got one more commit and tag.
    (live / "index.php").write_text("<?php // hotfix\n")
    git(live, "commit", "-q", "-am", "hotfix after backup")
    git(live, "tag", "hotfix")
    newer = git(live, "rev-parse", "HEAD")

    result = await prepare_code(staging, live, job_tag="j7")
    assert result["head"] == backup_head
    assert git(staging, "rev-parse", "HEAD") == backup_head
    assert all_tags(staging) == backup_tags
    assert git(staging, "rev-parse", "refs/envrestore/pre-restore/j7/heads/main") == newer
    assert git(staging, "cat-file", "-t", newer) == "commit"
    assert git(staging, "status", "--porcelain") == ""
    again = await prepare_code(staging, live, job_tag="j7")  # a second run changes nothing
    assert again["head"] == backup_head
    assert again["tags"] == result["tags"]


async def test_prepare_code_without_a_live_repository_checks_the_restored_one(
    tmp_path: Path,
) -> None:
    source = make_repo(tmp_path / "src")
    staging = tmp_path / ".code.envrestore-staging-j8"
    await extract_tar(gz_round_trip(code_archive(source, "code_dev")), staging, limits=LIMITS)
    result = await prepare_code(staging, None, job_tag="j8")
    assert result["head"] == git(source, "rev-parse", "HEAD")


async def test_prepare_code_refuses_a_repository_borrowing_objects_elsewhere(
    tmp_path: Path,
) -> None:
    source = make_repo(tmp_path / "src")
    staging = tmp_path / ".code.envrestore-staging-j9"
    await extract_tar(gz_round_trip(code_archive(source, "code_dev")), staging, limits=LIMITS)
    (staging / ".git" / "objects" / "info" / "alternates").write_text(
        "/srv/other-site/.git/objects\n"
    )
    with pytest.raises(UnsafeInput, match="alternates"):
        await prepare_code(staging, None, job_tag="j9")
