"""A files part through a real restore and a real import: modes, emptiness, top folder, format.

The files part is untrusted (anyone with write access to the bucket can forge
one, ledger and manifest included: `forge_part`; anyone can upload one to an
import). What a user would check: the restored files' modes and owner, and —
for a refused part — that the job failed on its first attempt with an error
naming what was wrong, and that the environment is exactly as it was.

An import differs by design where a backup's strict rules come from our own
naming: an imported archive's format is found from its bytes (a plain tar or a
zip is fine) and it may have any layout (a sole `files/` or `files_<env>/`
folder is unwrapped, members at the root are taken as they are). Its errors
name "the imported files part".
"""

# ruff: noqa: F811 - `backed_up` is a fixture imported from test_restore_job

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_restore_job import (  # noqa: F401 - backed_up is a fixture
    backed_up,
    change_everything,
)
from tests.support import evil_archives as evil
from tests.support.content import snapshot
from tests.support.driver import drive
from tests.support.producing import submit_restore
from tests.support.routes import ROUTES, forge_part, run_hostile
from tests.support.sites import git

pytestmark = pytest.mark.integration


def modes(root: Path) -> dict[str, int]:
    """Relative path → permission bits (setuid/setgid/sticky included); the root is "."."""
    out = {".": root.stat().st_mode & 0o7777}
    for path in root.rglob("*"):
        out[str(path.relative_to(root))] = path.lstat().st_mode & 0o7777
    return out


def step(view: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in view["steps"] if s["name"] == name)


async def _restore(runtime, **options: Any) -> dict[str, Any]:
    job = await submit_restore(runtime, "shop.dev", **options)
    return await drive(runtime, job.job_id)


@pytest.mark.parametrize("backed_up", ["mariadb"], indirect=True)
@pytest.mark.parametrize("route", ROUTES)
async def test_setuid_and_world_writable_files_are_restored_0644_0755_owned_by_the_worker(
    runtime, backed_up, route
):
    site = backed_up
    data = evil.gzipped(evil.odd_modes("files_dev"))
    view = await run_hostile(runtime, site, "files", data, route=route, elements="all")
    assert view["status"] == "succeeded", view["error"]
    assert (site["files"] / "run.sh").read_bytes() == b"#!\n"  # the canary: it is the forged part
    assert modes(site["files"]) == {
        ".": 0o755,
        "run.sh": 0o755,
        "world.txt": 0o644,
        "g.sh": 0o755,
        "private.sh": 0o755,
        "secret.txt": 0o644,
        "open": 0o755,
        "open/readonly.txt": 0o644,
    }
    everything = [site["files"], *site["files"].rglob("*")]
    assert {(p.lstat().st_uid, p.lstat().st_gid) for p in everything} == {
        (os.getuid(), os.getgid())
    }
    # The code part went through the same extraction: git still reads every object.
    assert git(site["code"], "rev-parse", "HEAD") == site["before"].head
    git(site["code"], "fsck", "--no-dangling")
    objects = [p for p in (site["code"] / ".git" / "objects").rglob("*") if p.is_file()]
    assert objects and all(p.stat().st_mode & 0o7777 in (0o644, 0o755) for p in objects)


@pytest.mark.parametrize("backed_up", ["mariadb"], indirect=True)
@pytest.mark.parametrize("route", ROUTES)
async def test_keep_policy_keeps_0750_but_never_setuid(runtime, backed_up, route):
    site = backed_up
    settings = runtime.settings.model_copy(update={"files_mode_policy": "keep"})
    rt = dataclasses.replace(runtime, settings=settings)
    data = evil.gzipped(evil.odd_modes("files_dev"))
    view = await run_hostile(rt, site, "files", data, route=route, elements="all")
    assert view["status"] == "succeeded", view["error"]
    found = modes(site["files"])
    assert found["private.sh"] == 0o750
    assert found["g.sh"] == 0o750  # was 02750: setgid gone
    assert found["run.sh"] == 0o755  # was 04755: setuid gone
    assert found["open"] == 0o777  # was 01777: sticky gone
    assert found["secret.txt"] == 0o600
    assert not [name for name, mode in found.items() if mode & 0o7000]
    assert all(p.lstat().st_uid == os.getuid() for p in site["files"].rglob("*"))


REFUSED = {
    # case → (the files part as stored, what the error must start with, and contain)
    "another_environments_files": (
        lambda: evil.gzipped(evil.wrong_top("files_live")),
        "the files part's top folder is files_live/, but this is a backup of dev: "
        "expected files_dev/",
        "files_live/",
    ),
    "no_top_folder": (
        lambda: evil.gzipped(evil.no_top_folder()),
        "the files part has no top folder",
        "files_dev/",
    ),
    "top_folder_only": (
        lambda: evil.gzipped(evil.only_top("files_dev")),
        "the files part is empty: restoring it would delete every file",
        "",
    ),
    "empty_tar": (
        lambda: evil.gzipped(b"\0" * 10240),
        "the files part is empty: restoring it would delete every file",
        "",
    ),
    "zip_gzipped": (
        lambda: evil.gzipped(evil.zip_bytes()),
        "the files part is not a tar archive: found a zip archive",
        "tar -czf",
    ),
    "zip_not_gzipped": (
        evil.zip_bytes,
        "the files part is not a tar archive: found a zip archive",
        "tar -czf",
    ),
    "sql_dump_as_files": (
        lambda: evil.gzipped(b"-- MySQL dump 10.13\n\nCREATE TABLE t (i INT);\n" * 30),
        "the files part is not a tar archive: found what looks like an SQL dump",
        "tar -czf",
    ),
    "uncompressed_tar": (
        lambda: evil.wrong_top("files_dev"),
        "the files part is not gzip-compressed: found an uncompressed tar archive",
        "tar -czf",
    ),
}


#: Refused in a backup, imported as they are: the files the imported tree holds.
#: A backup's files part is a gzip of a tar under `files_<env>/` because that is
#: how we make it, so anything else is not ours. An import's format is found from
#: its bytes (a plain tar, a zip) and it may have any layout: a sole `files_<x>/`
#: folder is unwrapped whatever the environment (`files_live/` into dev is how a
#: user copies live's uploads), members at the root are taken as they are.
IMPORTED_AS_IS = {
    "another_environments_files": {"a.txt"},
    "no_top_folder": {"a.txt", "2026/b.jpg"},
    "zip_not_gzipped": {"a.txt"},
    "uncompressed_tar": {"a.txt"},
}
#: How each route's errors name the part (the reason after it is the same).
LABEL = {"restore": "the files part", "import": "the imported files part"}


def _files_of(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("backed_up", ["mariadb"], indirect=True)
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("case", sorted(REFUSED))
async def test_wrong_files_part_fails_on_the_first_attempt_and_leaves_the_environment(
    runtime, backed_up, case, route
):
    site = backed_up
    build, starts, contains = REFUSED[case]
    await change_everything(site)
    changed = await snapshot(site["dsn"], site["files"], site["code"])
    view = await run_hostile(runtime, site, "files", build(), route=route, elements="all")
    if route == "import" and case in IMPORTED_AS_IS:
        assert view["status"] == "succeeded", view["error"]
        assert _files_of(site["files"]) == IMPORTED_AS_IS[case]
        after = await snapshot(site["dsn"], site["files"], site["code"])
        assert (after.rows, after.head) == (site["before"].rows, site["before"].head)
        assert all(m & 0o7000 == 0 for m in modes(site["files"]).values())
        return
    assert view["status"] == "failed"
    assert view["error_step"] == "import_files"
    error = step(view, "import_files")["error"]
    reason = starts.removeprefix(LABEL["restore"])
    assert error.startswith(LABEL[route] + reason), error
    assert contains in error
    assert str(site["files"].parent) not in error and "envrestore" not in error  # no paths
    assert step(view, "import_files")["attempts"] == 1  # permanent: not retried
    assert step(view, "switch")["status"] == "skipped"
    assert await snapshot(site["dsn"], site["files"], site["code"]) == changed
    leftovers = [p.name for p in site["files"].parent.iterdir() if "envrestore" in p.name]
    assert leftovers == []


# Restore only: an import always builds beside the live content (no in-place mode),
# so there is no wipe for its checks to come before.
@pytest.mark.parametrize("backed_up", ["mariadb"], indirect=True)
@pytest.mark.parametrize("case", ["another_environments_files", "top_folder_only", "zip_gzipped"])
async def test_in_place_restore_refuses_a_wrong_files_part_before_wiping(runtime, backed_up, case):
    site = backed_up
    build, starts, _contains = REFUSED[case]
    await change_everything(site)
    changed = await snapshot(site["dsn"], site["files"], site["code"])
    await forge_part(runtime, site["backup"], "files", build())
    view = await _restore(runtime, in_place=True)
    assert view["status"] == "failed"
    assert view["error_step"] == "verify"
    assert starts in view["error"]
    assert step(view, "verify")["attempts"] == 1
    assert await snapshot(site["dsn"], site["files"], site["code"]) == changed
