"""Archives of an environment's files and code (tar streams), and git queries."""

from __future__ import annotations

from envrestore.pipelines.archives.code import code_archive
from envrestore.pipelines.archives.files import files_archive
from envrestore.pipelines.archives.git import ensure_repo, head_commit, tags

__all__ = ["code_archive", "ensure_repo", "files_archive", "head_commit", "tags"]
