"""Code strategies: move live's branch forward instead of putting the backup's repository live.

- `code_revert`: one commit whose tree is the backup's HEAD tree (same site);
- `code_overwrite`: one commit whose tree is another site's HEAD tree;
- `code_merge`: a merge of another site's HEAD history (`--allow-unrelated-histories`).

Each works in `dest`, a `cp -a` of the live directory (all refs, tags, config,
hooks, reflogs and ignored files; CoW where the filesystem can, never hardlinks),
which the existing `switch` puts live; the live directory is only read, by `cp`.
On failure `dest` is left for the caller to discard. Git runs with `HARDENED`
flags and a clean environment (no `GIT_*`, no system or global config: the
worker's ~/.gitconfig must not shape a site's history), the caller's identity,
no signing, fixed messages. The incoming repository is disarmed first, and only
its HEAD's objects are read: its working files (ignored secrets), tags and other
refs never reach `dest`. Decisions:

- uncommitted or untracked changes, a detached HEAD or an unborn branch in live
  are refused (`Conflict`): no strategy silently drops work;
- revert and merge keep live's ignored files, as a deploy's checkout does;
  overwrite leaves exactly the commit's tree (live's ignored files are removed);
- submodules (gitlinks), symlinks out of the tree and odd paths in the incoming
  tree are refused (`UnsafeInput`): a gitlink would go live as an empty folder;
- revert and overwrite fetch only the HEAD tree's objects (no other history lands
  in live's object store); merge fetches HEAD's history without tags (another
  site's deploy tags).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from envrestore.pipelines.archives.code_restore import _check_layout
from envrestore.pipelines.archives.git_hardening import HARDENED, harden_repository
from envrestore.pipelines.archives.naming import printable
from envrestore.pipelines.archives.tarpolicy import _escapes
from envrestore.pipelines.errors import (
    BadInput,
    Conflict,
    EnvrestoreError,
    IntegrityError,
    UnsafeInput,
)
from envrestore.pipelines.streams import classify_failure

log = structlog.get_logger(__name__)

#: On top of HARDENED: no signing, no rerere, cheap status on a copied tree (cp -a
#: keeps mtimes, not inodes or ctimes), fetching the incoming HEAD tree by its id.
FLAGS = (
    *HARDENED,
    "-c", "commit.gpgSign=false",
    "-c", "rerere.enabled=false",
    "-c", "core.checkStat=minimal",
    "-c", "core.trustCtime=false",
    "-c", "protocol.version=2",
    "-c", "uploadpack.allowAnySHA1InWant=true",
)  # fmt: skip

#: Default cap on the bytes the incoming tree checks out to (pass the part's bomb cap).
DEFAULT_MAX_TREE_BYTES = 64 * 1024**3
MAX_TREE_ENTRIES = 2_000_000
#: Paths named in an error: dirty files (at most 20), conflicts (at most 50).
SHOWN_DIRTY = 20
SHOWN_CONFLICTS = 50
_MAX_OUTPUT = 256 * 1024**2
_TMP_REF = "refs/envrestore/incoming"
_FETCH = ("--quiet", "--no-tags", "--no-write-fetch-head", "--recurse-submodules=no",
          "--no-auto-maintenance")  # fmt: skip
#: Every option a live config could turn on is turned off: no editor, hooks, log, autostash.
_MERGE = ("--quiet", "--no-ff", "--allow-unrelated-histories", "--no-edit", "--no-verify",
          "--no-log", "--no-stat", "--no-gpg-sign", "--no-autostash", "--no-verify-signatures",
          "--no-rerere-autoupdate")  # fmt: skip
_MAX_LINK = 4096
_KEPT_ENV = ("PATH", "TMPDIR")
_BAD_IDENTITY = re.compile(r"[<>\x00-\x1f\x7f]")


@dataclass(frozen=True)
class _Git:
    """Runs git with FLAGS, a clean environment, and the worker's paths named in messages."""

    env: Mapping[str, str]
    names: Mapping[str, str]  # worker path -> how messages name it

    async def raw(self, repo: Path, *args: str, stdin: bytes = b"") -> bytes:
        argv = ["git", "-C", str(repo), *FLAGS, *args]
        return await _run(argv, self.env, self.names, stdin, label=f"git {args[0]}")

    async def __call__(self, repo: Path, *args: str) -> str:
        return (await self.raw(repo, *args)).decode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class _Work:
    """One strategy's checked inputs: the copy, its branch and the incoming HEAD."""

    git: _Git
    dest: Path
    incoming: Path
    branch: str
    old_head: str
    old_tree: str
    incoming_head: str
    incoming_tree: str


# --- running git -----------------------------------------------------------


def _environment(identity: tuple[str, str]) -> dict[str, str]:
    """Only PATH and TMPDIR of ours: no `GIT_*`, HOME or XDG config reach git."""
    for value in identity:
        if not value.strip() or len(value) > 200 or _BAD_IDENTITY.search(value):
            raise BadInput(f"commit identity {printable(value)!r} is not a valid name or email")
    env = {key: os.environ[key] for key in _KEPT_ENV if key in os.environ}
    env |= {"LC_ALL": "C", "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1"}
    env["GIT_CONFIG_GLOBAL"] = os.devnull
    for who in ("AUTHOR", "COMMITTER"):
        env[f"GIT_{who}_NAME"], env[f"GIT_{who}_EMAIL"] = identity
    return env


async def _read_capped(stream: asyncio.StreamReader, cap: int) -> bytes:
    data = bytearray()
    while chunk := await stream.read(1 << 16):
        data += chunk
        if len(data) > cap:
            raise BadInput(f"git printed more than {cap} bytes; the repository is too big")
    return bytes(data)


async def _run(
    argv: list[str],
    env: Mapping[str, str],
    names: Mapping[str, str],
    stdin: bytes = b"",
    *,
    label: str,
) -> bytes:
    """Run a command, return its stdout (capped); raise a classified error on failure."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env),
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    assert proc.stderr is not None

    async def feed() -> None:  # git may not need all of it: its exit code says the rest
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            proc.stdin.write(stdin)
            await proc.stdin.drain()
            proc.stdin.close()

    try:
        async with asyncio.TaskGroup() as group:  # one failing cancels the others
            group.create_task(feed())
            reading = group.create_task(_read_capped(proc.stdout, _MAX_OUTPUT))
            errors = group.create_task(_read_capped(proc.stderr, _MAX_OUTPUT))
        out, err = reading.result(), errors.result()
        code = await proc.wait()
    except ExceptionGroup as group_error:  # callers expect our errors, not a group
        raise group_error.exceptions[0] from None
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if code != 0:
        text = err.decode("utf-8", "replace")
        for path in sorted(names, key=len, reverse=True):  # the worker's paths stay out
            text = text.replace(path, names[path])
        tail = " | ".join(line.strip()[:300] for line in text.splitlines() if line.strip())
        tail = tail[-2000:] or "(no error output)"
        raise classify_failure(code, tail)(
            f"{label} exited with code {code}: {tail}",
            command=argv[0],
            returncode=code,
            stderr=tail,
        )
    return out


# --- checks ----------------------------------------------------------------


def _split_z(text: str) -> list[str]:
    return [item for item in text.split("\0") if item]


def _listed(paths: list[str], shown: int) -> str:
    names = ", ".join(printable(p) for p in paths[:shown])
    return names + (f" … and {len(paths) - shown} more" if len(paths) > shown else "")


def _refuse_tree(what: str, problem: str) -> UnsafeInput:
    return UnsafeInput(
        f"the code part's HEAD tree {what}; refusing the code archive", problem=problem
    )


async def _link_targets(git: _Git, repo: Path, ids: list[str]) -> list[str]:
    """The contents of the symlink blobs `ids`, in order (one `cat-file --batch`)."""
    raw = await git.raw(repo, "cat-file", "--batch", stdin="".join(f"{i}\n" for i in ids).encode())
    targets: list[str] = []
    pos = 0
    for _ in ids:
        end = raw.index(b"\n", pos)
        header = raw[pos:end].split()
        if len(header) != 3:
            raise IntegrityError("the code part's repository is missing a symlink's object")
        size = int(header[2])
        targets.append(raw[end + 1 : end + 1 + size].decode("utf-8", "surrogateescape"))
        pos = end + 1 + size + 1
    return targets


async def _inspect_tree(git: _Git, repo: Path, tree: str, max_bytes: int) -> None:
    """Refuse a tree that must not be checked out: gitlinks, links out, odd paths, bombs."""
    entries = _split_z(await git(repo, "ls-tree", "-r", "-l", "-z", tree))
    if len(entries) > MAX_TREE_ENTRIES:
        raise _refuse_tree(f"has {len(entries)} entries (at most {MAX_TREE_ENTRIES})", "too_many")
    total = 0
    gitlinks: list[str] = []
    links: list[tuple[tuple[str, ...], str]] = []
    for entry in entries:
        meta, _, path = entry.partition("\t")
        mode, _kind, oid, size = meta.split()
        parts = tuple(path.split("/"))
        if any(p in ("", ".", "..") or p.lower() == ".git" for p in parts):
            raise _refuse_tree(f"has the path {printable(path)!r}", "bad_path")
        if mode == "160000":
            gitlinks.append(path)
        elif mode == "120000":
            if int(size) > _MAX_LINK:
                raise _refuse_tree(f"has the symlink {printable(path)!r} of {size} bytes", "link")
            links.append((parts, oid))
        total += int(size) if size != "-" else 0
    if gitlinks:
        raise _refuse_tree(
            f"has {len(gitlinks)} submodule(s) ({_listed(gitlinks, SHOWN_DIRTY)}); code "
            "strategies take plain trees only (a submodule would go live as an empty folder): "
            "restore the whole repository instead",
            "submodule",
        )
    if total > max_bytes:
        raise _refuse_tree(f"checks out to {total} bytes (at most {max_bytes})", "too_big")
    targets = await _link_targets(git, repo, [oid for _, oid in links]) if links else []
    by_path = {parts: target for (parts, _), target in zip(links, targets, strict=True)}
    for parts, target in by_path.items():
        if not target or target.startswith("/") or _escapes(parts, target, by_path):
            raise _refuse_tree(
                f"has the symlink {printable('/'.join(parts))!r} to {printable(target)!r}, "
                "which resolves outside the code tree",
                "link_escapes",
            )


async def _refuse_uncommitted(git: _Git, dest: Path) -> None:
    """Uncommitted or untracked (not ignored) changes: the new commit would drop them."""
    out = await git(
        dest, "status", "--porcelain=v1", "-z", "--no-renames", "--untracked-files=normal"
    )
    paths = sorted(entry[3:] for entry in _split_z(out))
    if paths:
        raise Conflict(
            f"the live code has {len(paths)} uncommitted change(s): {_listed(paths, SHOWN_DIRTY)};"
            " commit or discard them first (the code would otherwise be replaced without them)",
            problem="uncommitted_changes",
            paths=[printable(p) for p in paths[:SHOWN_DIRTY]],
            count=len(paths),
        )


def _check_dirs(live: Path, incoming: Path, dest: Path) -> tuple[dict[str, str], Path]:
    """Check the three directories; returns how messages name them, and incoming's real path."""
    _check_layout(incoming)
    git_dir = live / ".git"
    if git_dir.is_symlink() or not git_dir.is_dir():
        raise BadInput(
            "the live code has no .git directory (not a repository, or a linked worktree or "
            "submodule whose objects live elsewhere); a code strategy needs a whole repository",
            problem="live_not_a_repository",
        )
    if dest.is_symlink() or (dest.exists() and (not dest.is_dir() or any(dest.iterdir()))):
        raise Conflict(
            f"the staging directory {dest.name} already exists and is not empty; "
            "discard it before running the code strategy again",
            problem="dest_exists",
        )
    labels = ((live, "<live code>"), (incoming, "<code part>"), (dest, "<new code>"))
    names = {form: label for path, label in labels for form in (str(path), os.path.realpath(path))}
    return names, Path(os.path.realpath(incoming))


async def _rev(git: _Git, repo: Path, spec: str) -> str:
    return (await git(repo, "rev-parse", "--verify", "--end-of-options", spec)).strip()


async def _start(
    live: Path, incoming: Path, dest: Path, identity: tuple[str, str], max_bytes: int
) -> _Work:
    """Disarm and check the incoming repository, copy live, check the copy's branch."""
    names, incoming = _check_dirs(live, incoming, dest)
    git = _Git(_environment(identity), names)
    await harden_repository(incoming)
    try:
        head = await _rev(git, incoming, "HEAD^{commit}")
        tree = await _rev(git, incoming, f"{head}^{{tree}}")
    except EnvrestoreError as exc:
        raise IntegrityError(
            f"the code part's repository has no valid HEAD commit ({exc}); the code archive "
            "is damaged",
        ) from exc
    await _inspect_tree(git, incoming, tree, max_bytes)
    # cp -a: every ref, reflog, hook, config and ignored file of live, and no hardlink
    # (an edit in place in the new live would change the rollback copy too).
    argv = ["cp", "-a", "--reflink=auto", "-T", "--", str(live), str(dest)]
    await _run(argv, git.env, git.names, label="copying the live code")
    try:
        ref = (await git(dest, "symbolic-ref", "-q", "HEAD")).strip()
    except EnvrestoreError:
        ref = ""
    if not ref.startswith("refs/heads/"):
        raise Conflict(
            "the live code has a detached HEAD (no branch checked out); check out the branch "
            "the new commit should go on first",
            problem="detached_head",
        )
    try:
        old = await _rev(git, dest, "HEAD^{commit}")
    except EnvrestoreError as exc:
        raise Conflict(
            f"the live code's branch {printable(ref[11:])!r} has no commit yet; restore the "
            "whole repository instead",
            problem="unborn_branch",
        ) from exc
    old_tree = await _rev(git, dest, f"{old}^{{tree}}")
    await _refuse_uncommitted(git, dest)
    return _Work(git, dest, incoming, ref, old, old_tree, head, tree)


# --- moving the branch -----------------------------------------------------


async def _fetch(work: _Work, what: str) -> None:
    """Bring `what` (a tree, or a commit with its history) from the incoming repository."""
    await work.git(work.dest, "fetch", *_FETCH, str(work.incoming), f"+{what}:{_TMP_REF}")


async def _commit(work: _Work, strategy: str, message: str) -> str:
    """One commit of the incoming tree on live's branch; the working tree follows."""
    git, dest = work.git, work.dest
    await _fetch(work, work.incoming_tree)
    new = await git(
        dest, "commit-tree", "--no-gpg-sign", "-p", work.old_head, "-m", message, work.incoming_tree
    )
    new = new.strip()
    await git(
        dest, "update-ref", "-m", f"envrestore: code {strategy}", work.branch, new, work.old_head
    )
    await git(dest, "reset", "--quiet", "--hard", new)
    return new


async def _report(work: _Work, strategy: str, new: str, **extra: Any) -> dict[str, Any]:
    git, dest, old = work.git, work.dest, work.old_head
    await git(dest, "update-ref", "-d", _TMP_REF)
    changed = await git(dest, "diff-tree", "-r", "-z", "--name-only", "--no-renames", old, new)
    added = await git(dest, "rev-list", "--count", f"{old}..{new}")
    result: dict[str, Any] = {
        "strategy": strategy,
        "head": new,
        "previous_head": old,
        "branch": work.branch.removeprefix("refs/heads/"),
        "incoming_head": work.incoming_head,
        "unchanged": new == old,
        "commits_added": int(added),
        "files_changed": len(_split_z(changed)),
        **extra,
    }
    log.info("code.strategy_done", **{k: v for k, v in result.items() if k != "removed"})
    return result


def _checked(text: str, what: str) -> str:
    if not text.strip() or re.search(r"[\x00-\x08\x0b-\x1f\x7f]", text) or len(text) > 10_000:
        raise BadInput(f"the {what} is empty, too long or holds control characters")
    return text.strip()


async def code_revert(
    live: Path,
    incoming: Path,
    dest: Path,
    *,
    message: str,
    identity: tuple[str, str],
    max_tree_bytes: int = DEFAULT_MAX_TREE_BYTES,
) -> dict[str, Any]:
    """Same site: one new commit on live's branch with the backup's HEAD tree, in `dest`.

    History stays linear for later deploys; live's ignored files are kept. When
    the tree is already live's, nothing is committed (`unchanged: true`).
    """
    message = _checked(message, "revert message")
    work = await _start(live, incoming, dest, identity, max_tree_bytes)
    new = work.old_head
    if work.incoming_tree != work.old_tree:
        new = await _commit(work, "revert", message)
    return await _report(work, "revert", new)


async def code_overwrite(
    live: Path,
    incoming: Path,
    dest: Path,
    *,
    source: str,
    identity: tuple[str, str],
    max_tree_bytes: int = DEFAULT_MAX_TREE_BYTES,
) -> dict[str, Any]:
    """Another site's code: its HEAD tree becomes one commit on live's branch, in `dest`.

    `source` says where it came from (e.g. "blog.dev (backup 2026-11-20T10-00-00)").
    The working tree ends exactly the commit's tree: live's ignored files belong
    to the old code and are removed (`removed`: the first 20, `removed_count`).
    """
    source = printable(_checked(source, "source"), 300)
    work = await _start(live, incoming, dest, identity, max_tree_bytes)
    new = work.old_head
    if work.incoming_tree != work.old_tree:
        subject = f"Overwrite code with {source}, commit {work.incoming_head[:12]}"
        new = await _commit(work, "overwrite", f"{subject}\n\nSource-Commit: {work.incoming_head}")
    others = sorted(_split_z(await work.git(dest, "ls-files", "-z", "--others", "--directory")))
    await work.git(dest, "clean", "-q", "-ffdx")
    removed = [printable(p) for p in others[:SHOWN_DIRTY]]
    return await _report(work, "overwrite", new, removed=removed, removed_count=len(others))


async def code_merge(
    live: Path,
    incoming: Path,
    dest: Path,
    *,
    source: str,
    identity: tuple[str, str],
    max_tree_bytes: int = DEFAULT_MAX_TREE_BYTES,
) -> dict[str, Any]:
    """Merge another site's HEAD history into live's branch, in `dest`; its tags stay behind.

    A conflict raises `Conflict` naming the paths (the job fails; live is untouched).
    `commits_added` counts every commit new on the branch (the merge commit
    included), `commits_merged` those brought in from the incoming history.
    """
    source = printable(_checked(source, "source"), 300)
    work = await _start(live, incoming, dest, identity, max_tree_bytes)
    git, old, theirs = work.git, work.old_head, work.incoming_head
    await _fetch(work, theirs)  # the very commit whose tree was checked
    merged = int(await git(dest, "rev-list", "--count", f"{old}..{theirs}"))
    message = f"Merge code of {source}, commit {theirs[:12]}\n\nSource-Commit: {theirs}"
    try:
        await git(dest, "merge", *_MERGE, "-m", message, theirs)
    except EnvrestoreError as exc:
        unmerged = _split_z(await git(dest, "ls-files", "-u", "-z"))
        paths = sorted({entry.partition("\t")[2] for entry in unmerged})
        if not paths:
            raise
        raise Conflict(
            f"merging {source} into the live code conflicts in {len(paths)} path(s): "
            f"{_listed(paths, SHOWN_CONFLICTS)}; merge it in git and deploy the result, or "
            "choose another strategy",
            problem="merge_conflict",
            paths=[printable(p) for p in paths[:SHOWN_CONFLICTS]],
            count=len(paths),
        ) from exc
    new = (await git(dest, "rev-parse", "--verify", "HEAD^{commit}")).strip()
    return await _report(work, "merge", new, merged_from=theirs, commits_merged=merged)
