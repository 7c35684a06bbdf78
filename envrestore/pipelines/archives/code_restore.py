"""Preparing a restored code tree: keep the live history reachable, check the repository.

The code part is a whole repository (`.git` included) from an untrusted archive,
so git runs on it with everything that could execute the archive's contents
turned off (hooks, fsmonitor, transports other than local files, submodule
recursion, auto-gc), and a `.git` that points elsewhere (gitdir file,
alternates, commondir) is refused: it could read another site's objects.
Before anything else runs git on it, the repository is disarmed for good
(`git_hardening`): a developer's plain `git status` later passes none of our flags.

Messages say "the code part's repository", never the worker's staging path.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import structlog

from envrestore.pipelines.archives.git import git
from envrestore.pipelines.archives.git_hardening import HARDENED, harden_repository, scrub
from envrestore.pipelines.errors import EnvrestoreError, IntegrityError, UnsafeInput

log = structlog.get_logger(__name__)


#: Live refs are kept under this prefix, one folder per restore job.
PRE_RESTORE = "refs/envrestore/pre-restore"


async def _git(repo: Path, *args: str) -> str:
    return await git(repo, *HARDENED, *args)


def _check_layout(staging: Path) -> None:
    dot_git = staging / ".git"
    try:
        mode = dot_git.lstat().st_mode
    except FileNotFoundError:
        raise UnsafeInput(
            "the code part's repository has no .git directory; the code part must be a "
            "whole repository (a code archive made by envrestore or Pantheon)",
            path=str(staging),
            problem="not_a_repository",
        ) from None
    if not stat.S_ISDIR(mode):
        raise UnsafeInput(
            "the code part's repository has a .git that is not a directory (a gitdir file "
            "or symlink pointing elsewhere); refusing the code archive",
            path=str(dot_git),
            problem="gitdir_elsewhere",
        )
    for inner in ("objects/info/alternates", "commondir"):
        if (dot_git / inner).exists() or (dot_git / inner).is_symlink():
            raise UnsafeInput(
                f"the code part's repository has .git/{inner}, which makes git read objects "
                "from another place on this machine; refusing the code archive",
                path=str(dot_git / inner),
                problem=inner.rsplit("/", 1)[-1],
            )


def _real(path: Path | None) -> str | None:
    """The live repository's real path, or None when there is no repository there."""
    if path is None or not (path / ".git").exists():
        return None
    return os.path.realpath(path)


async def _is_repo(path: str | None) -> bool:
    if path is None:
        return False
    try:
        await _git(Path(path), "rev-parse", "--git-dir")
    except EnvrestoreError:
        return False
    return True


async def _tags(repo: Path) -> dict[str, str]:
    out = await _git(
        repo,
        "for-each-ref",
        "--format=%(refname:strip=2)%00%(objectname)%00%(*objectname)",
        "refs/tags",
    )
    result: dict[str, str] = {}
    for line in out.splitlines():
        name, obj, peeled = line.split("\0")
        result[name] = peeled or obj
    return result


async def prepare_code(staging: Path, live_repo: Path | None, *, job_tag: str) -> dict[str, object]:
    """Keep the live history in the restored repository and check that it is whole.

    Every live ref is fetched to `refs/envrestore/pre-restore/<job_tag>/…` (earlier
    restores' refs keep their names), so commits made after the backup stay
    reachable; tags and HEAD stay the backup's. First the repository is disarmed
    (hooks moved aside, config allowlisted, unsafe submodule URLs refused), so no
    git command, ours or a developer's, runs anything from the archive. Returns the
    restored head and tags, and the `git_*` report of what the disarming dropped.
    Safe to run twice: the fetch force-updates the same refs.
    """
    _check_layout(staging)
    hardening = await harden_repository(staging)
    preserved = 0
    source = _real(live_repo)
    if source is not None and await _is_repo(source):
        # A negative refspec applies to the whole fetch: two fetches, so earlier
        # restores' refs keep their names instead of nesting one level per restore.
        for refspecs in (
            (f"+refs/*:{PRE_RESTORE}/{job_tag}/*", "^refs/envrestore/*"),
            (f"+{PRE_RESTORE}/*:{PRE_RESTORE}/*",),
        ):
            await _git(
                staging,
                "fetch",
                "--quiet",
                "--no-tags",
                "--no-write-fetch-head",
                "--recurse-submodules=no",
                "--no-auto-maintenance",
                source,
                *refspecs,
            )
        refs = await _git(
            staging, "for-each-ref", "--format=%(refname)", f"{PRE_RESTORE}/{job_tag}"
        )
        preserved = len(refs.splitlines())
    else:
        log.info("code.no_live_repository", live=str(live_repo) if live_repo else None)
    try:
        head = (await _git(staging, "rev-parse", "--verify", "HEAD^{commit}")).strip()
    except EnvrestoreError as exc:
        raise IntegrityError(
            "the code part's repository has no valid HEAD commit "
            f"({scrub(exc.data.get('stderr', exc), staging)}); the code archive is damaged",
            path=str(staging),
        ) from exc
    try:
        await _git(staging, "fsck", "--connectivity-only", "--no-progress")
    except EnvrestoreError as exc:
        raise IntegrityError(
            "the code part's repository is missing objects "
            f"({scrub(exc.data.get('stderr', exc), staging)}); the code archive is damaged "
            "or incomplete",
            path=str(staging),
        ) from exc
    tags = await _tags(staging)
    log.info("code.prepared", head=head, tags=len(tags), preserved_refs=preserved)
    return {"head": head, "tags": tags, "preserved_refs": preserved, **hardening}


async def forget_pre_restore(repo: Path, *, job_tag: str) -> int:
    """Delete the refs one restore kept of the live history (when its rollback point expires).

    Without this, every restore adds a namespace of refs that later code
    backups carry forever. Returns how many refs were deleted.
    """
    if not await _is_repo(_real(repo)):
        return 0
    refs = await _git(repo, "for-each-ref", "--format=%(refname)", f"{PRE_RESTORE}/{job_tag}/")
    names = refs.split()
    for name in names:
        await _git(repo, "update-ref", "-d", name)
    return len(names)
