"""Code strategies on real repositories of two sites: revert, overwrite, merge.

Site A is live (branches, annotated tags, an ignored wp-config.php, hooks that
would write canaries); site B is another site with an unrelated history. Every
strategy works in a new `dest`: the live directory must be byte for byte what
it was (files, .git, HEAD, refs), and nothing from B, the worker's own git
config or its `GIT_*` environment may run or leak.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from envrestore.pipelines.archives import code_strategies
from envrestore.pipelines.archives.code_strategies import code_merge, code_overwrite, code_revert
from envrestore.pipelines.errors import (
    BadInput,
    Conflict,
    IntegrityError,
    PermanentError,
    UnsafeInput,
)
from tests.support.sites import git, make_repo, tags_of, tree_digest
from tests.unit.test_git_hardening import arm, canaries, script

IDENTITY = ("envrestore", "envrestore@localhost")
LIVE_HOOKS = (
    "pre-commit",
    "commit-msg",
    "post-commit",
    "pre-merge-commit",
    "post-merge",
    "post-checkout",
    "post-rewrite",
    "reference-transaction",
    "pre-auto-gc",
)


# --- the two sites -----------------------------------------------------------


def commit(repo: Path, files: dict[str, str], message: str) -> str:
    for rel, text in files.items():
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def make_live(root: Path) -> tuple[Path, Path]:
    """Site A, and a backup of it taken two commits ago (a copy of the whole repository)."""
    live = make_repo(root / "live", commits=2)
    local = {".gitignore": "wp-config.php\ncache/\n", ".gitattributes": "*.php filter=x\n"}
    commit(live, local, "ignore local files; a filter no config defines")
    (live / "wp-config.php").write_text("<?php define('DB_PASSWORD', 'live');\n")
    (live / "cache").mkdir()
    (live / "cache" / "page.html").write_text("<html>cached</html>\n")
    backup = root / "backup"
    shutil.copytree(live, backup, symlinks=True)
    commit(live, {"index.php": "<?php // release 3\n", "module_3.php": "<?php // 3\n"}, "release 3")
    git(live, "tag", "-a", "v3.0", "-m", "version 3")
    git(live, "branch", "feature", "HEAD~1")
    commit(live, {"module_4.php": "<?php // 4\n"}, "release 4")
    return live, backup


def make_other(path: Path, releases: list[dict[str, str]]) -> Path:
    """Site B: an unrelated history, one annotated tag per release, an untracked secret."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    for index, files in enumerate(releases, 1):
        commit(path, files, f"blog release {index}")
        git(path, "tag", "-a", f"blog-{index}", "-m", f"blog {index}")
    (path / "secret-b.php").write_text("<?php // blog's own secret, never committed\n")
    return path


DISJOINT = [
    {"blog/index.php": "<?php // blog 1\n", "blog/.gitattributes": "* filter=x\n"},
    {"blog/index.php": "<?php // blog 2\n", "blog/README.md": "the blog\n"},
]
OVERLAPPING = [
    {"index.php": "<?php // blog front\n", "blog/.gitattributes": "* filter=x\n"},
    {"module_1.php": "<?php // the blog's module 1\n", "blog/feed.php": "<?php // feed\n"},
]


def part(repo: Path, root: Path) -> Path:
    """The repository as a restore extracts it: a copy in a staging directory of its own."""
    incoming = root / "incoming" / repo.name
    shutil.copytree(repo, incoming, symlinks=True)
    return incoming


def hook_live(live: Path, fired: Path) -> None:
    for hook in LIVE_HOOKS:
        script(live / ".git" / "hooks" / hook, fired / f"live-{hook}")


def state(repo: Path) -> tuple[object, ...]:
    """Everything of a repository directory a strategy must leave alone."""
    modes = {str(p.relative_to(repo)): p.lstat().st_mode for p in repo.rglob("*")}
    refs = git(repo, "for-each-ref", "--format=%(refname) %(objectname)")
    return tree_digest(repo), modes, git(repo, "rev-parse", "HEAD"), refs


def blob(repo: Path, oid: str) -> bytes:
    return subprocess.run(
        ["git", "-C", str(repo), "cat-file", "blob", oid], check=True, capture_output=True
    ).stdout


def tree_files(repo: Path, rev: str) -> dict[str, str]:
    """What a checkout of `rev` holds, in `tree_digest`'s shape (directories left out)."""
    out: dict[str, str] = {}
    for line in git(repo, "ls-tree", "-r", rev).splitlines():
        meta, path = line.split("\t", 1)
        mode, _kind, oid = meta.split()
        data = blob(repo, oid)
        out[path] = (
            "link:" + data.decode() if mode == "120000" else hashlib.sha256(data).hexdigest()
        )
    return out


def worktree(repo: Path) -> dict[str, str]:
    return {k: v for k, v in tree_digest(repo).items() if k != ".git" and not k.startswith(".git/")}


def ls_tree(repo: Path, rev: str) -> str:
    return git(repo, "ls-tree", "-r", rev)


def parents(repo: Path, rev: str) -> list[str]:
    return git(repo, "rev-list", "--parents", "-n", "1", rev).split()[1:]


@pytest.fixture
def hostile_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The worker's own environment and ~/.gitconfig, armed: none of it may reach our git."""
    fired = tmp_path / "fired"
    fired.mkdir(exist_ok=True)
    home = tmp_path / "home"
    home.mkdir()
    gpg = script(tmp_path / "gpg-canary", fired / "global-gpg")
    (home / ".gitconfig").write_text(
        f"[commit]\n\tgpgSign = true\n[gpg]\n\tprogram = {gpg}\n"
        f"[filter \"x\"]\n\tsmudge = touch '{fired / 'global-smudge'}'; cat\n"
        f"[user]\n\tname = Leaked Global\n\temail = global@example.invalid\n"
    )
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "filter.x.clean")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", f"touch '{fired / 'env-clean'}'; cat")
    monkeypatch.setenv("GIT_AUTHOR_NAME", "Leaked Env")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "env@example.invalid")
    return fired


@pytest.fixture
def sites(tmp_path: Path) -> dict[str, Path]:
    live, backup = make_live(tmp_path / "a")
    fired = tmp_path / "fired"
    fired.mkdir(exist_ok=True)
    return {
        "live": live,
        "backup": backup,
        "disjoint": make_other(tmp_path / "b" / "blog", DISJOINT),
        "overlapping": make_other(tmp_path / "b2" / "blog", OVERLAPPING),
        "fired": fired,
        "root": tmp_path,
    }


async def run(strategy: str, live: Path, incoming: Path, dest: Path) -> dict:
    if strategy == "revert":
        return await code_revert(live, incoming, dest, message="r", identity=IDENTITY)
    if strategy == "overwrite":
        return await code_overwrite(live, incoming, dest, source="blog.dev", identity=IDENTITY)
    return await code_merge(live, incoming, dest, source="blog.dev", identity=IDENTITY)


def identity_of(repo: Path, rev: str) -> str:
    return git(repo, "log", "-1", "--format=%an <%ae> / %cn <%ce> / %G?", rev)


# --- revert -------------------------------------------------------------------


async def test_revert_is_one_commit_with_the_backups_exact_tree(sites, hostile_env, monkeypatch):
    live, root = sites["live"], sites["root"]
    hook_live(live, hostile_env)
    before = state(live)
    old_head = git(live, "rev-parse", "HEAD")
    incoming = part(sites["backup"], root)
    dest = root / ".live.envrestore-staging-j1"

    result = await code_revert(
        live, incoming, dest, message="Revert code to backup 2026-11-20 (abc)", identity=IDENTITY
    )
    monkeypatch.undo()  # the test's own git calls below run in the usual environment

    assert json.loads(json.dumps(result)) == result
    head = result["head"]
    assert result["strategy"] == "revert" and not result["unchanged"]
    assert result["commits_added"] == 1 and result["previous_head"] == old_head
    assert result["files_changed"] == 3  # index.php, module_3.php, module_4.php
    assert git(dest, "rev-parse", "HEAD") == head
    assert git(dest, "symbolic-ref", "HEAD") == "refs/heads/main"
    assert parents(dest, head) == [old_head]  # linear: one parent, live's HEAD
    assert ls_tree(dest, head) == ls_tree(sites["backup"], "HEAD")
    assert git(dest, "log", "-1", "--format=%B", head) == "Revert code to backup 2026-11-20 (abc)"
    assert (
        identity_of(dest, head)
        == "envrestore <envrestore@localhost> / envrestore <envrestore@localhost> / N"
    )
    # The working tree is the commit's, plus live's ignored files; status is clean.
    expected = tree_files(dest, head)
    expected |= {
        k: v for k, v in worktree(live).items() if k in ("wp-config.php", "cache/page.html")
    }
    assert worktree(dest) == expected
    assert git(dest, "status", "--porcelain") == ""
    # Everything else of live is there: tags, branches, hooks (kept, never run).
    assert tags_of(dest) == tags_of(live)
    assert git(dest, "rev-parse", "feature") == git(live, "rev-parse", "feature")
    assert git(dest, "for-each-ref", "refs/envrestore") == ""
    assert (dest / ".git" / "hooks" / "post-checkout").stat().st_mode & 0o111
    assert state(live) == before
    assert canaries(hostile_env) == []


async def test_revert_refuses_uncommitted_changes_and_names_them(sites):
    live, root = sites["live"], sites["root"]
    (live / "index.php").write_text("<?php // hot fix on the server\n")
    (live / "notes.txt").write_text("todo\n")
    (live / "module_1.php").unlink()
    hook_live(live, sites["fired"])
    before = state(live)
    with pytest.raises(Conflict) as caught:
        await code_revert(
            live, part(sites["backup"], root), root / "dest", message="r", identity=IDENTITY
        )
    error = caught.value
    assert isinstance(error, PermanentError)
    assert "3 uncommitted change(s): index.php, module_1.php, notes.txt" in str(error)
    assert error.data["paths"] == ["index.php", "module_1.php", "notes.txt"]
    assert str(root) not in str(error)
    assert state(live) == before
    assert canaries(sites["fired"]) == []


async def test_revert_names_at_most_twenty_changes(sites):
    live, root = sites["live"], sites["root"]
    for index in range(25):
        (live / f"new-{index:02}.txt").write_text("x\n")
    with pytest.raises(Conflict) as caught:
        await code_revert(
            live, part(sites["backup"], root), root / "dest", message="r", identity=IDENTITY
        )
    assert "25 uncommitted change(s)" in str(caught.value)
    assert "new-19.txt … and 5 more" in str(caught.value)
    assert len(caught.value.data["paths"]) == 20


async def test_revert_refuses_a_detached_head(sites):
    live, root = sites["live"], sites["root"]
    git(live, "checkout", "-q", "--detach", "HEAD~1")
    hook_live(live, sites["fired"])
    before = state(live)
    with pytest.raises(Conflict, match="detached HEAD") as caught:
        await code_revert(
            live, part(sites["backup"], root), root / "dest", message="r", identity=IDENTITY
        )
    assert caught.value.data["problem"] == "detached_head"
    assert state(live) == before
    assert canaries(sites["fired"]) == []


async def test_revert_to_the_live_tree_commits_nothing(sites):
    live, root = sites["live"], sites["root"]
    same = part(live, root)  # a backup taken just now
    hook_live(live, sites["fired"])
    before = state(live)
    head = git(live, "rev-parse", "HEAD")
    result = await code_revert(live, same, root / "dest", message="r", identity=IDENTITY)
    assert result["unchanged"] is True
    assert (result["head"], result["commits_added"], result["files_changed"]) == (head, 0, 0)
    assert git(root / "dest", "rev-parse", "HEAD") == head
    assert state(live) == before
    assert canaries(sites["fired"]) == []


async def test_a_used_staging_directory_is_refused(sites):
    root = sites["root"]
    dest = root / "dest"
    dest.mkdir()
    (dest / "left-over").write_text("x")
    with pytest.raises(Conflict, match="discard it"):
        await code_revert(
            sites["live"], part(sites["backup"], root), dest, message="r", identity=IDENTITY
        )


# --- overwrite ------------------------------------------------------------------


async def test_overwrite_replaces_the_code_with_the_other_sites_tree(
    sites, hostile_env, monkeypatch
):
    live, root, blog = sites["live"], sites["root"], sites["overlapping"]
    hook_live(live, hostile_env)
    before = state(live)
    old_head = git(live, "rev-parse", "HEAD")
    dest = root / "dest"
    source = "blog.dev (backup 2026-11-20T10-00-00)"

    result = await code_overwrite(live, part(blog, root), dest, source=source, identity=IDENTITY)
    monkeypatch.undo()  # the test's own git calls below run in the usual environment

    head = result["head"]
    blog_head = git(blog, "rev-parse", "HEAD")
    assert json.loads(json.dumps(result)) == result
    assert result["strategy"] == "overwrite" and result["commits_added"] == 1
    assert parents(dest, head) == [old_head]
    assert ls_tree(dest, head) == ls_tree(blog, "HEAD")
    message = git(dest, "log", "-1", "--format=%B", head)
    assert message.splitlines()[0] == f"Overwrite code with {source}, commit {blog_head[:12]}"
    assert f"Source-Commit: {blog_head}" in message
    assert identity_of(dest, head).startswith("envrestore <envrestore@localhost> / envrestore")
    # Exactly the commit's tree: A's own files and ignored files are gone, B's
    # untracked secret and B's .git never came.
    assert worktree(dest) == tree_files(blog, "HEAD")
    assert not (dest / "module_4.php").exists() and not (dest / "wp-config.php").exists()
    assert not (dest / "secret-b.php").exists()
    assert not [p for p in dest.rglob(".git") if p != dest / ".git"]
    assert result["removed"] == ["cache/", "wp-config.php"] and result["removed_count"] == 2
    # Only B's tree came: not its history, not its tags.
    present = subprocess.run(["git", "-C", str(dest), "cat-file", "-e", blog_head], check=False)
    assert present.returncode != 0
    assert tags_of(dest) == tags_of(live)
    assert state(live) == before
    assert canaries(hostile_env) == []


# --- merge ----------------------------------------------------------------------


async def test_merge_brings_in_the_other_history_without_its_tags(sites, hostile_env, monkeypatch):
    live, root, blog = sites["live"], sites["root"], sites["disjoint"]
    hook_live(live, hostile_env)
    before = state(live)
    old_head = git(live, "rev-parse", "HEAD")
    blog_head = git(blog, "rev-parse", "HEAD")
    dest = root / "dest"

    result = await code_merge(
        live, part(blog, root), dest, source="blog.dev (backup 2026-11-20)", identity=IDENTITY
    )
    monkeypatch.undo()  # the test's own git calls below run in the usual environment

    head = result["head"]
    assert json.loads(json.dumps(result)) == result
    assert result["strategy"] == "merge" and result["merged_from"] == blog_head
    assert result["commits_merged"] == 2 and result["commits_added"] == 3
    assert result["files_changed"] == 3
    assert parents(dest, head) == [old_head, blog_head]
    for reachable in (old_head, blog_head, git(blog, "rev-list", "--max-parents=0", "HEAD")):
        git(dest, "merge-base", "--is-ancestor", reachable, head)
    assert git(dest, "log", "-1", "--format=%s", head) == (
        f"Merge code of blog.dev (backup 2026-11-20), commit {blog_head[:12]}"
    )
    assert tags_of(dest) == tags_of(live)  # no blog-1, blog-2
    assert git(dest, "for-each-ref", "refs/envrestore") == ""
    assert git(dest, "status", "--porcelain") == ""
    assert (dest / "blog" / "README.md").read_text() == "the blog\n"
    assert (dest / "wp-config.php").exists()  # live's ignored file is kept
    assert state(live) == before
    assert canaries(hostile_env) == []


async def test_merging_history_live_already_has_commits_nothing(sites):
    live, root = sites["live"], sites["root"]
    head = git(live, "rev-parse", "HEAD")
    result = await code_merge(
        live, part(sites["backup"], root), root / "dest", source="shop.dev", identity=IDENTITY
    )
    assert result["unchanged"] is True and result["head"] == head
    assert (result["commits_added"], result["commits_merged"], result["files_changed"]) == (0, 0, 0)


async def test_merge_conflict_fails_permanently_and_lists_the_paths(sites):
    live, root = sites["live"], sites["root"]
    hook_live(live, sites["fired"])
    before = state(live)
    with pytest.raises(Conflict) as caught:
        await code_merge(
            live,
            part(sites["overlapping"], root),
            root / "dest",
            source="blog.dev",
            identity=IDENTITY,
        )
    error = caught.value
    assert isinstance(error, PermanentError)
    assert "conflicts in 2 path(s): index.php, module_1.php;" in str(error)
    assert error.data["paths"] == ["index.php", "module_1.php"] and error.data["count"] == 2
    assert str(root) not in str(error)
    assert state(live) == before
    assert canaries(sites["fired"]) == []


# --- hostile incoming repositories -------------------------------------------------


@pytest.mark.parametrize("strategy", ["revert", "overwrite", "merge", "merge-conflict"])
async def test_an_armed_incoming_repository_runs_nothing(sites, strategy):
    """B's hooks, fsmonitor, filter, diff and merge drivers, and a .gitattributes naming them."""
    live, root = sites["live"], sites["root"]
    blog = sites["overlapping" if strategy == "merge-conflict" else "disjoint"]
    commit(blog, {"blog/.gitattributes": "* filter=x diff=x merge=x\n"}, "attributes")
    incoming = part(blog, root)
    (root / "armed").mkdir()
    fired = arm(incoming, root / "armed")
    hook_live(live, fired)
    before = state(live)
    dest = root / "dest"
    if strategy == "merge-conflict":
        with pytest.raises(Conflict):
            await run("merge", live, incoming, dest)
    else:
        await run(strategy, live, incoming, dest)
    assert canaries(fired) == []
    assert (incoming / ".git" / "hooks-disabled-by-envrestore").is_dir()  # disarmed by the call
    if strategy != "merge-conflict":
        assert (dest / "blog/.gitattributes").read_text() == "* filter=x diff=x merge=x\n"
        assert "filter.x" not in git(dest, "config", "--local", "--list")
    assert state(live) == before


def _forge_tree(blog: Path, entries: list[str], message: str) -> None:
    """Commit index entries git would not make from a working tree (`mode,oid,path`)."""
    for entry in entries:
        git(blog, "update-index", "--add", "--cacheinfo", entry)
    git(blog, "commit", "-q", "-m", message)


def _link(blog: Path, target: str) -> str:
    return subprocess.run(
        ["git", "-C", str(blog), "hash-object", "-w", "--stdin"],
        input=target, text=True, check=True, capture_output=True,
    ).stdout.strip()  # fmt: skip


@pytest.mark.parametrize("strategy", ["revert", "overwrite", "merge"])
@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("160000,{head},vendor/lib", "submodule"),
        ("120000,{abs},leak.txt", "link_escapes"),
        ("120000,{up},blog/up", "link_escapes"),
    ],
)
async def test_unsafe_incoming_trees_are_refused_before_live_is_copied(
    sites, strategy, entry, problem
):
    live, root, blog = sites["live"], sites["root"], sites["disjoint"]
    oids = {
        "head": git(blog, "rev-parse", "HEAD"),
        "abs": _link(blog, "/etc/passwd"),
        "up": _link(blog, "../../other-site/wp-config.php"),
    }
    _forge_tree(blog, [entry.format(**oids)], "forged")
    before = state(live)
    with pytest.raises(UnsafeInput) as caught:
        await run(strategy, live, part(blog, root), root / "dest")
    assert caught.value.data["problem"] == problem
    assert not (root / "dest").exists()
    assert state(live) == before


async def test_a_symlink_inside_the_tree_is_fine(sites):
    live, root, blog = sites["live"], sites["root"], sites["disjoint"]
    _forge_tree(blog, [f"120000,{_link(blog, 'blog/index.php')},latest.php"], "link")
    result = await code_overwrite(
        live, part(blog, root), root / "dest", source="b", identity=IDENTITY
    )
    assert (root / "dest" / "latest.php").readlink() == Path("blog/index.php")
    assert result["commits_added"] == 1


async def test_an_incoming_repository_without_head_is_damaged(sites):
    root = sites["root"]
    incoming = part(sites["disjoint"], root)
    (incoming / ".git" / "HEAD").write_text("ref: refs/heads/gone\n")
    with pytest.raises(IntegrityError, match="no valid HEAD commit") as caught:
        await run("overwrite", sites["live"], incoming, root / "dest")
    assert str(root) not in str(caught.value)
    assert not (root / "dest").exists()


async def test_too_much_git_output_is_our_error_not_a_group(sites, monkeypatch):
    monkeypatch.setattr(code_strategies, "_MAX_OUTPUT", 100)  # HEAD fits, the tree not
    root = sites["root"]
    with pytest.raises(BadInput, match="printed more than 100 bytes"):
        await run("revert", sites["live"], part(sites["backup"], root), root / "dest")
