"""A restored repository keeps nothing that runs on a developer's later plain git command.

Each armed repository writes canary files from hooks, config commands and
drivers; after `harden_repository`, git is run the way a developer would (no
hardening flags, an empty HOME) and no canary may appear. A control test shows
the same repository, not hardened, does fire them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from envrestore.pipelines.archives.code_restore import prepare_code
from envrestore.pipelines.archives.git_hardening import DISABLED_HOOKS, harden_repository, printable
from envrestore.pipelines.errors import IntegrityError, UnsafeInput
from tests.support.sites import GIT_ENV, make_repo

HOOKS = ("post-checkout", "post-merge", "pre-commit", "reference-transaction", "pre-push")

ALLOWED_PREFIXES = ("remote.", "branch.", "user.", "submodule.")
ALLOWED_KEYS = {
    "core.repositoryformatversion",
    "core.filemode",
    "core.bare",
    "core.logallrefupdates",
    "core.ignorecase",
    "core.precomposeunicode",
    "core.symlinks",
    "extensions.objectformat",
    "extensions.refstorage",
}


def dev_env(home: Path) -> dict[str, str]:
    """A developer's shell: no envrestore flags, no system or user config of the worker."""
    home.mkdir(exist_ok=True)
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        **GIT_ENV,
    }


def dev_git(repo: Path, home: Path, *args: str, check: bool = True) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args],
        capture_output=True,
        text=True,
        env=dev_env(home),
        check=False,
        timeout=60,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"git {args} failed: {done.stderr}")
    return done.stdout


def script(path: Path, canary: Path) -> Path:
    path.write_text(f"#!/bin/sh\ntouch '{canary}'\ncat >/dev/null 2>&1 || true\nexit 0\n")
    path.chmod(0o755)
    return path


def canaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def arm(repo: Path, tmp: Path, *, breaking: bool = True) -> Path:
    """Hooks and config commands that write canaries in the returned folder.

    `breaking` adds keys that change where git works (core.worktree, includes)
    and so would make the control test meaningless.
    """
    fired = tmp / "fired"
    fired.mkdir(exist_ok=True)
    tools = tmp / "tools"
    tools.mkdir(exist_ok=True)
    dot_git = repo / ".git"
    for hook in HOOKS:
        script(dot_git / "hooks" / hook, fired / f"hook-{hook}")
    outside_hooks = tools / "hooks"
    outside_hooks.mkdir(exist_ok=True)
    script(outside_hooks / "post-checkout", fired / "hookspath-post-checkout")

    def cfg(key: str, value: str) -> None:
        subprocess.run(
            ["git", "config", "--file", str(dot_git / "config"), "--add", key, value], check=True
        )

    cfg("core.fsmonitor", str(script(tools / "fsmonitor", fired / "fsmonitor")))
    cfg("core.pager", f"touch '{fired / 'pager'}'; cat")
    cfg("core.editor", f"touch '{fired / 'editor'}'; true")
    cfg("core.sshCommand", f"touch '{fired / 'ssh'}'")
    cfg("sequence.editor", f"touch '{fired / 'seq'}'")
    cfg("gpg.program", str(script(tools / "gpg", fired / "gpg")))
    cfg("filter.x.smudge", f"touch '{fired / 'smudge'}'; cat")
    cfg("filter.x.clean", f"touch '{fired / 'clean'}'; cat")
    cfg("filter.x.process", f"touch '{fired / 'process'}'")
    cfg("diff.external", str(script(tools / "diff", fired / "diff-external")))
    cfg("diff.x.textconv", f"touch '{fired / 'textconv'}'; cat")
    cfg("credential.helper", f"!touch '{fired / 'credential'}'")
    cfg("uploadpack.packObjectsHook", str(script(tools / "pack", fired / "pack-objects")))
    cfg("alias.st", f"!touch '{fired / 'alias'}'")
    cfg("merge.x.driver", f"touch '{fired / 'merge-driver'}'")
    cfg("url.ext::sh -c touch% /tmp/x.insteadOf", "https://")
    cfg("remote.origin.url", "https://example.invalid/site.git")
    cfg("remote.origin.fetch", "+refs/heads/*:refs/remotes/origin/*")
    cfg("remote.origin.uploadpack", f"touch '{fired / 'uploadpack'}'")
    cfg("remote.evil.url", f"ext::sh -c touch% {fired / 'ext'}")
    cfg("branch.main.remote", "origin")
    cfg("branch.main.merge", "refs/heads/main")
    cfg("branch.main.rebase", "true")
    cfg("user.name", "Site Developer")
    cfg("user.email", "dev@example.invalid")
    (dot_git / "info").mkdir(exist_ok=True)
    (dot_git / "info" / "attributes").write_text("* filter=x diff=x merge=x\n")
    (dot_git / "info" / "exclude").write_text("*.log\n")
    if breaking:
        script(outside_hooks / "pre-commit", fired / "hookspath-pre-commit")
        cfg("core.hooksPath", str(outside_hooks))
        cfg("core.worktree", str(tmp / "elsewhere"))
        included = tools / "included.cfg"
        included.write_text(f"[core]\n\tfsmonitor = {tools / 'fsmonitor'}\n")
        cfg("include.path", str(included))
        cfg("includeIf.gitdir:/.path", str(included))
        cfg("core.repositoryformatversion", "1")
        cfg("extensions.worktreeConfig", "true")
        cfg("extensions.partialClone", "origin")
        (dot_git / "config.worktree").write_text(f"[core]\n\tfsmonitor = {tools / 'fsmonitor'}\n")
        (dot_git / "worktrees" / "w").mkdir(parents=True)
        (dot_git / "worktrees" / "w" / "config.worktree").write_text("[core]\n\tbare = true\n")
    return fired


def act_like_a_developer(repo: Path, home: Path, *, check: bool = True) -> None:
    """Plain git commands a developer runs in a freshly restored site (all must work)."""
    dev_git(repo, home, "status", check=check)
    (repo / "index.php").write_text("<?php // local edit\n")
    dev_git(repo, home, "diff", check=check)
    dev_git(repo, home, "diff", "HEAD~1", check=check)
    dev_git(repo, home, "log", "-p", "-2", check=check)
    dev_git(repo, home, "-p", "log", "-1", check=check)
    dev_git(repo, home, "st", check=False)
    dev_git(repo, home, "stash", check=check)
    dev_git(repo, home, "checkout", "-q", "other", check=check)
    dev_git(repo, home, "checkout", "-q", "main", check=check)
    dev_git(repo, home, "merge", "-q", "--no-edit", "other", check=check)
    (repo / "index.php").write_text("<?php // committed edit\n")
    dev_git(repo, home, "commit", "-qam", "edit", check=check)
    dev_git(repo, home, "fetch", "-q", str(repo), "main:refs/heads/fetched", check=check)
    dev_git(repo, home, "fetch", "-q", "evil", check=False)
    dev_git(repo, home, "push", "-q", "evil", "main", check=False)


def armed_repo(tmp_path: Path) -> Path:
    repo = make_repo(tmp_path / "code", commits=3)
    subprocess.run(["git", "-C", str(repo), "branch", "other", "HEAD~1"], check=True)
    return repo


def test_control_an_armed_repository_fires_its_canaries(tmp_path: Path) -> None:
    repo = armed_repo(tmp_path)
    fired = arm(repo, tmp_path, breaking=False)
    act_like_a_developer(repo, tmp_path / "home", check=False)
    got = set(canaries(fired))
    assert {"fsmonitor", "alias", "hook-reference-transaction", "process"} <= got, got


def test_control_without_fsmonitor_and_process_hooks_and_drivers_fire(tmp_path: Path) -> None:
    repo = armed_repo(tmp_path)
    fired = arm(repo, tmp_path, breaking=False)
    for key in ("core.fsmonitor", "filter.x.process"):
        subprocess.run(["git", "-C", str(repo), "config", "--unset", key], check=True)
    act_like_a_developer(repo, tmp_path / "home", check=False)
    got = set(canaries(fired))
    expected = {"hook-post-checkout", "hook-pre-commit", "smudge", "clean", "diff-external"}
    assert expected <= got, got


async def test_hardened_repository_runs_nothing_on_plain_git_commands(tmp_path: Path) -> None:
    repo = armed_repo(tmp_path)
    fired = arm(repo, tmp_path)
    report = await harden_repository(repo)
    act_like_a_developer(repo, tmp_path / "home")
    assert canaries(fired) == []

    # The config holds only allowlisted keys; remotes, branches and user survive.
    listed = dev_git(repo, tmp_path / "home", "config", "--local", "--list").splitlines()
    keys = {line.split("=", 1)[0] for line in listed}
    assert all(k in ALLOWED_KEYS or k.startswith(ALLOWED_PREFIXES) for k in keys), keys
    assert "remote.origin.url=https://example.invalid/site.git" in listed
    assert "remote.origin.fetch=+refs/heads/*:refs/remotes/origin/*" in listed
    assert "branch.main.merge=refs/heads/main" in listed
    assert "branch.main.rebase=true" in listed
    assert "user.name=Site Developer" in listed
    assert "core.bare=false" in listed
    assert not any(k.startswith("remote.evil") for k in keys)
    assert "remote.origin.uploadpack" not in keys

    dropped = report["git_dropped_config"]
    assert isinstance(dropped, list)
    for key in (
        "core.fsmonitor",
        "core.pager",
        "core.hookspath",
        "core.worktree",
        "include.path",
        "includeif.gitdir:/.path",
        "filter.x.smudge",
        "diff.external",
        "credential.helper",
        "uploadpack.packobjectshook",
        "alias.st",
        "remote.evil.url",
        "remote.origin.uploadpack",
        "url.ext::sh -c touch% /tmp/x.insteadof",
        "extensions.worktreeconfig",
        "extensions.partialclone",
    ):
        assert key in dropped, (key, dropped)
    assert set(report["git_hooks_disabled"]) == {f".git/hooks/{h}" for h in HOOKS}  # type: ignore[arg-type]
    assert {".git/info/attributes", ".git/config.worktree", ".git/worktrees"} <= set(
        report["git_removed_files"]  # type: ignore[arg-type]
    )
    assert str(tmp_path) not in json.dumps(report)  # names only, never values

    # Hooks are kept aside, renamed and not executable; info/exclude stays.
    aside = repo / ".git" / DISABLED_HOOKS
    moved = sorted(p.name for p in aside.iterdir())
    assert "post-checkout.disabled" in moved
    assert all(not os.access(p, os.X_OK) for p in aside.iterdir())
    assert list((repo / ".git" / "hooks").iterdir()) == []
    assert (repo / ".git" / "info" / "exclude").read_text() == "*.log\n"
    assert not (tmp_path / "elsewhere").exists()


async def test_hardening_twice_drops_nothing_more(tmp_path: Path) -> None:
    repo = armed_repo(tmp_path)
    arm(repo, tmp_path)
    await harden_repository(repo)
    config = (repo / ".git" / "config").read_text()
    again = await harden_repository(repo)
    assert again["git_dropped_config"] == []
    assert again["git_hooks_disabled"] == []
    assert again["git_removed_files"] == []
    assert (repo / ".git" / "config").read_text() == config


def _commit_gitmodules(repo: Path, text: str) -> None:
    (repo / ".gitmodules").write_text(text)
    subprocess.run(
        ["git", "-C", str(repo), "add", ".gitmodules"], check=True, env=dev_env(repo.parent / "h")
    )
    subprocess.run(
        ["git", "-C", str(repo), "commit", "-qm", "modules"],
        check=True,
        env=dev_env(repo.parent / "h"),
    )


@pytest.mark.parametrize(
    ("url", "transport"),
    [("ext::sh -c touch% /tmp/x", "ext"), ("fd::17", "fd"), ("file::/srv/other", "file")],
)
async def test_submodule_with_a_command_transport_is_refused(
    tmp_path: Path, url: str, transport: str
) -> None:
    repo = make_repo(tmp_path / "code", commits=1)
    _commit_gitmodules(repo, f'[submodule "evil"]\n\tpath = evil\n\turl = {url}\n')
    (repo / ".gitmodules").unlink()  # only HEAD has it
    with pytest.raises(UnsafeInput, match=rf"submodule 'evil' .* '{transport}'::") as caught:
        await harden_repository(repo)
    assert str(tmp_path) not in str(caught.value)
    assert caught.value.data["transport"] == transport


async def test_submodule_url_in_config_or_worktree_gitmodules_is_refused(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "code", commits=1)
    subprocess.run(
        ["git", "-C", str(repo), "config", "submodule.lib.url", "ext::sh -c id"], check=True
    )
    with pytest.raises(UnsafeInput, match="submodule 'lib'"):
        await harden_repository(repo)
    other = make_repo(tmp_path / "other", commits=1)
    (other / ".gitmodules").write_text('[submodule "w"]\n\tpath = w\n\turl = fd::3\n')
    with pytest.raises(UnsafeInput, match="submodule 'w'"):
        await harden_repository(other)


async def test_submodule_repositories_are_hardened_too(tmp_path: Path) -> None:
    home = tmp_path / "home"
    lib = make_repo(tmp_path / "lib", commits=2)
    repo = make_repo(tmp_path / "code", commits=1)
    dev_git(
        repo, home, "-c", "protocol.file.allow=always", "submodule", "-q", "add", str(lib), "lib"
    )
    dev_git(repo, home, "commit", "-qm", "add lib")
    module = repo / ".git" / "modules" / "lib"
    assert (module / "HEAD").is_file()
    fired = tmp_path / "fired"
    fired.mkdir()
    script(module / "hooks" / "post-checkout", fired / "module-hook")
    subprocess.run(
        ["git", "config", "--file", str(module / "config"), "core.fsmonitor",
         str(script(tmp_path / "fsm", fired / "module-fsmonitor"))],
        check=True,
    )  # fmt: skip
    # A vendored checkout with its own .git directory.
    vendored = make_repo(repo / "vendor" / "pkg", commits=1)
    script(vendored / ".git" / "hooks" / "post-checkout", fired / "vendor-hook")
    subprocess.run(
        ["git", "-C", str(vendored), "config", "core.fsmonitor", str(tmp_path / "fsm")], check=True
    )

    report = await harden_repository(repo)
    dev_git(repo, home, "status")
    (repo / "lib" / "index.php").write_text("<?php // edit in the submodule\n")
    dev_git(repo, home, "status")
    dev_git(repo / "lib", home, "status")
    dev_git(repo / "lib", home, "checkout", "-q", "-b", "topic")
    dev_git(repo / "vendor" / "pkg", home, "status")
    dev_git(repo / "vendor" / "pkg", home, "checkout", "-q", "-b", "topic")
    assert canaries(fired) == []
    assert (
        dev_git(repo / "lib", home, "rev-parse", "HEAD").strip()
        == dev_git(lib, home, "rev-parse", "HEAD").strip()
    )
    assert ".git/modules/lib:core.fsmonitor" in report["git_dropped_config"]  # type: ignore[operator]
    assert ".git/modules/lib:core.worktree" in report["git_dropped_config"]  # type: ignore[operator]
    assert "vendor/pkg/.git:core.fsmonitor" in report["git_dropped_config"]  # type: ignore[operator]
    assert ".git/modules/lib/hooks/post-checkout" in report["git_hooks_disabled"]  # type: ignore[operator]
    assert "vendor/pkg/.git/hooks/post-checkout" in report["git_hooks_disabled"]  # type: ignore[operator]


async def test_a_git_file_pointing_outside_is_refused(tmp_path: Path) -> None:
    elsewhere = make_repo(tmp_path / "other-site", commits=1)
    repo = make_repo(tmp_path / "code", commits=1)
    (repo / "nested").mkdir()
    (repo / "nested" / ".git").write_text(f"gitdir: {elsewhere / '.git'}\n")
    with pytest.raises(UnsafeInput, match="pointing outside") as caught:
        await harden_repository(repo)
    assert str(tmp_path) not in str(caught.value)


async def test_a_symlinked_nested_git_is_refused(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "code", commits=1)
    (repo / "nested").mkdir()
    (repo / "nested" / ".git").symlink_to("../.git")
    with pytest.raises(UnsafeInput, match=r"symlinked \.git"):
        await harden_repository(repo)


async def test_a_symlinked_hooks_folder_is_moved_not_followed(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "code", commits=1)
    fired = tmp_path / "fired"
    fired.mkdir()
    (repo / "scripts").mkdir()
    script(repo / "scripts" / "post-checkout", fired / "hook")
    hooks = repo / ".git" / "hooks"
    for entry in hooks.iterdir():
        entry.unlink()
    hooks.rmdir()
    hooks.symlink_to("../scripts")
    report = await harden_repository(repo)
    assert hooks.is_dir() and not hooks.is_symlink()
    assert (repo / ".git" / DISABLED_HOOKS / "hooks.disabled").is_symlink()
    assert os.access(repo / "scripts" / "post-checkout", os.X_OK)  # the tracked file is untouched
    assert report["git_hooks_disabled"] == [".git/hooks"]
    dev_git(repo, tmp_path / "home", "checkout", "-q", "-b", "x")
    assert canaries(fired) == []


async def test_a_symlinked_info_folder_is_dropped_not_followed(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "code", commits=1)
    (repo / "docs").mkdir()
    (repo / "docs" / "attributes").write_text("* filter=x\n")
    shutil.rmtree(repo / ".git" / "info")
    (repo / ".git" / "info").symlink_to("../docs")
    report = await harden_repository(repo)
    assert not (repo / ".git" / "info").exists()
    assert (repo / "docs" / "attributes").is_file()  # a working-tree file, left alone
    assert report["git_removed_files"] == [".git/info"]


async def test_prepare_code_messages_do_not_name_the_staging_path(tmp_path: Path) -> None:
    staging = tmp_path / ".code.envrestore-staging-j1"
    staging.mkdir()
    with pytest.raises(UnsafeInput, match=r"the code part's repository has no \.git") as caught:
        await prepare_code(staging, None, job_tag="j1")
    assert str(tmp_path) not in str(caught.value)
    repo = make_repo(tmp_path / "code", commits=1)
    for obj in (repo / ".git" / "objects").glob("??/*"):
        obj.unlink()  # every object gone: HEAD names a missing commit
    with pytest.raises(IntegrityError, match="the code part's repository") as damaged:
        await prepare_code(repo, None, job_tag="j2")
    assert str(tmp_path) not in str(damaged.value)


def test_reported_names_are_escaped_and_capped() -> None:
    assert printable("remote.a\x1b[31mb.url") == "remote.a\\x1b[31mb.url"
    assert len(printable("x" * 1000)) == 200
