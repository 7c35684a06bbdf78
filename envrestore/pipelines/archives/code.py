"""The code part of a backup: the whole working tree, `.git` and every tag included.

Pantheon's code archive holds the full repository; its top folder name is not
documented where we could check, so ours is `code_<env>/` (the caller passes it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from envrestore.pipelines.archives.files import tar_argv
from envrestore.pipelines.archives.git import ensure_repo
from envrestore.pipelines.errors import BadInput
from envrestore.pipelines.streams import run_producer


async def code_archive(repo: Path, top: str) -> AsyncIterator[bytes]:
    """Stream the repository as a tar under `top/` (e.g. `code_dev/`), restorable with git alone."""
    await ensure_repo(repo)
    if not (repo / ".git").is_dir():
        # A linked worktree or submodule keeps its objects elsewhere: the archive
        # would not be a repository on its own.
        raise BadInput(
            f"{repo}/.git is not a directory (a linked worktree or submodule?); back up the "
            "main repository instead",
            path=str(repo),
        )
    async for chunk in run_producer(tar_argv(repo, top)):
        yield chunk
