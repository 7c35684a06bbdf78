"""Real site environments for tests: a database with rows, a files tree, a git repo with tags."""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **GIT_ENV},
    ).stdout.strip()


def make_repo(path: Path, commits: int = 3) -> Path:
    """A git working tree with `commits` commits and a tag on the first and last."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    for index in range(1, commits + 1):
        (path / "index.php").write_text(f"<?php // release {index}\n")
        (path / f"module_{index}.php").write_text(f"<?php function m{index}() {{}}\n")
        git(path, "add", "-A")
        git(path, "commit", "-q", "-m", f"release {index}")
        if index in (1, commits):
            git(path, "tag", "-a", f"v{index}.0", "-m", f"version {index}")
    return path


def make_files(path: Path) -> Path:
    """An uploads tree: nested folders, a name with spaces, binary content, a symlink."""
    (path / "2026" / "11").mkdir(parents=True, exist_ok=True)
    (path / "2026" / "11" / "photo one.jpg").write_bytes(os.urandom(300_000))
    (path / "2026" / "11" / "notes.txt").write_text("héllo wörld\n")
    (path / "styles").mkdir(exist_ok=True)
    (path / "styles" / "thumb.png").write_bytes(os.urandom(20_000))
    (path / "latest.jpg").symlink_to("2026/11/photo one.jpg")
    return path


def tree_digest(root: Path) -> dict[str, str]:
    """relative path → sha256 (files) or link target (symlinks)."""
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "link:" + str(path.readlink())
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def tags_of(repo: Path) -> dict[str, str]:
    lines = git(repo, "for-each-ref", "--format=%(refname:short) %(objectname)", "refs/tags")
    return dict(line.split() for line in lines.splitlines() if line)


@dataclass(frozen=True)
class SiteDirs:
    files: Path
    code: Path
