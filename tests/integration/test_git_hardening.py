"""A restore or an import disarms the code part's repository before it goes live.

The code part is an armed repository (hooks, fsmonitor, filters, includes…
that write canary files), forged into a real backup or uploaded to an import;
after the job a developer's plain git commands in the live code directory fire
none of them, and the `apply_code` step reports what was dropped. An ext::
submodule fails the job and leaves the environment exactly as it was.
"""

from __future__ import annotations

import gzip
import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.integration.test_restore_job import backed_up, change_everything
from tests.support.content import snapshot
from tests.support.routes import ROUTES, run_hostile
from tests.unit.test_git_hardening import act_like_a_developer, arm, canaries, dev_git

pytestmark = pytest.mark.integration

__all__ = ["backed_up"]  # the fixture, shared with test_restore_job


def _code_part(repo: Path) -> bytes:
    """A code part as envrestore writes it: the whole repository under `code_dev/`."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(repo, arcname="code_dev")
    return gzip.compress(buffer.getvalue())


def _armed_copy(site: dict, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the backed-up repository (same HEAD), armed; returns it and the canary folder."""
    copy = tmp_path / "forged" / "code_dev"
    shutil.copytree(site["code"], copy, symlinks=True)
    subprocess.run(["git", "-C", str(copy), "branch", "other", "HEAD~1"], check=True)
    return copy, arm(copy, tmp_path)


@pytest.mark.parametrize("backed_up", ["postgresql"], indirect=True)
@pytest.mark.parametrize("route", ROUTES)
async def test_restored_repository_runs_nothing_on_plain_git(runtime, backed_up, tmp_path, route):
    site = backed_up
    armed, fired = _armed_copy(site, tmp_path)
    await change_everything(site)

    view = await run_hostile(runtime, site, "code", _code_part(armed), route=route, elements="all")
    assert view["status"] == "succeeded", view
    assert canaries(fired) == []  # envrestore's own git calls ran nothing
    code = site["code"]
    assert dev_git(code, tmp_path / "home", "rev-parse", "HEAD").strip() == site["before"].head

    act_like_a_developer(code, tmp_path / "home")
    assert canaries(fired) == []
    assert (code / ".git" / "hooks-disabled-by-envrestore" / "post-checkout.disabled").is_file()
    listed = dev_git(code, tmp_path / "home", "config", "--local", "--list")
    assert "fsmonitor" not in listed and "include" not in listed
    assert "remote.origin.url=https://example.invalid/site.git" in listed.splitlines()

    outputs = {s["name"]: s["outputs"] for s in view["steps"]}["apply_code"]
    for key in ("core.fsmonitor", "include.path", "filter.x.smudge", "alias.st", "core.worktree"):
        assert key in outputs["git_dropped_config"], outputs
    assert ".git/hooks/post-checkout" in outputs["git_hooks_disabled"]
    assert ".git/info/attributes" in outputs["git_removed_files"]
    assert str(tmp_path) not in str(outputs["git_dropped_config"])


@pytest.mark.parametrize("backed_up", ["postgresql"], indirect=True)
@pytest.mark.parametrize("route", ROUTES)
async def test_ext_submodule_fails_the_restore_and_changes_nothing(
    runtime, backed_up, tmp_path, route
):
    site = backed_up
    armed, fired = _armed_copy(site, tmp_path)
    (armed / ".gitmodules").write_text(
        f'[submodule "evil"]\n\tpath = evil\n\turl = ext::sh -c touch% {fired / "ext"}\n'
    )
    await change_everything(site)
    changed = await snapshot(site["dsn"], site["files"], site["code"])

    view = await run_hostile(runtime, site, "code", _code_part(armed), route=route, elements="all")
    assert view["status"] == "failed"
    assert view["error_step"] == "apply_code"
    assert "submodule 'evil'" in view["error"] and "'ext'::" in view["error"]
    assert "envrestore-staging" not in view["error"] and str(tmp_path) not in view["error"]
    assert await snapshot(site["dsn"], site["files"], site["code"]) == changed
    assert canaries(fired) == []
    leftovers = [p.name for p in site["code"].parent.iterdir() if "envrestore" in p.name]
    assert leftovers == []
