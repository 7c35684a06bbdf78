"""The Pantheon backup fixture writes what Pantheon writes: names, top folders, gzip.

Listings come from the system `tar`, the tool a user would check a real backup with.
"""

from __future__ import annotations

import gzip
import subprocess
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.support.pantheon import make_pantheon_backup, pantheon_base_name
from tests.support.sites import git, make_files, make_repo, tags_of

MOMENT = datetime(2026, 11, 26, 10, 33, 0, tzinfo=UTC)
DUMP = b"-- MariaDB dump 10.19  Distrib 10.6.12-MariaDB, for Linux (x86_64)\n--\n-- Host: 10.0.0.1    Database: pantheon\nCREATE TABLE `t` (`id` int);\n"


@pytest.fixture
def backup(tmp_path: Path) -> dict[str, Path]:
    return make_pantheon_backup(
        tmp_path / "out",
        site="shop-2",
        env="live",
        moment=MOMENT,
        code_repo=make_repo(tmp_path / "repo"),
        files_dir=make_files(tmp_path / "files"),
        dump_sql=DUMP,
    )


def tar_list(archive: Path, *, verbose: bool = False) -> list[str]:
    flags = "-tvzf" if verbose else "-tzf"
    out = subprocess.run(["tar", flags, str(archive)], check=True, capture_output=True, text=True)
    return out.stdout.splitlines()


def test_the_three_files_are_named_as_pantheon_names_them(backup: dict[str, Path]) -> None:
    assert {part: path.name for part, path in backup.items()} == {
        "code": "shop-2_live_2026-11-26T10-33-00_UTC_code.tar.gz",
        "database": "shop-2_live_2026-11-26T10-33-00_UTC_database.sql.gz",
        "files": "shop-2_live_2026-11-26T10-33-00_UTC_files.tar.gz",
    }
    assert len({path.parent for path in backup.values()}) == 1


def test_the_time_in_the_names_is_utc() -> None:
    paris = timezone(timedelta(hours=1))
    moment = datetime(2026, 11, 26, 11, 33, 0, tzinfo=paris)
    assert pantheon_base_name("shop", "dev", moment) == "shop_dev_2026-11-26T10-33-00_UTC"


def test_the_code_archive_holds_the_working_tree_and_git_under_its_own_name(
    backup: dict[str, Path],
) -> None:
    names = tar_list(backup["code"])
    top = "shop-2_live_2026-11-26T10-33-00_UTC_code"
    assert {name.split("/", 1)[0] for name in names} == {top}
    assert f"{top}/index.php" in names
    assert f"{top}/.git/HEAD" in names
    assert any(name.startswith(f"{top}/.git/objects/") for name in names)


def test_the_code_archive_is_a_repository_git_can_use_as_it_is(
    backup: dict[str, Path], tmp_path: Path
) -> None:
    """Extracted with tar alone: same HEAD, same tags, a clean working tree."""
    target = tmp_path / "extracted"
    target.mkdir()
    subprocess.run(["tar", "-xzf", str(backup["code"]), "-C", str(target)], check=True)
    repo = target / "shop-2_live_2026-11-26T10-33-00_UTC_code"
    source = tmp_path / "repo"
    assert git(repo, "rev-parse", "HEAD") == git(source, "rev-parse", "HEAD")
    assert tags_of(repo) == tags_of(source)
    assert git(repo, "status", "--porcelain") == ""


def test_the_files_archive_holds_the_uploads_under_files_env(backup: dict[str, Path]) -> None:
    names = tar_list(backup["files"])
    assert {name.split("/", 1)[0] for name in names} == {"files_live"}
    assert "files_live/2026/11/photo one.jpg" in names
    assert "files_live/styles/thumb.png" in names
    link = next(line for line in tar_list(backup["files"], verbose=True) if "latest.jpg" in line)
    assert link.endswith("files_live/latest.jpg -> 2026/11/photo one.jpg")


def test_the_database_part_is_the_dump_gzipped(backup: dict[str, Path], tmp_path: Path) -> None:
    raw = backup["database"].read_bytes()
    assert raw[:2] == b"\x1f\x8b"
    assert gzip.decompress(raw) == DUMP
    dump_file = tmp_path / "dump.sql"
    dump_file.write_bytes(DUMP * 3)
    again = make_pantheon_backup(
        tmp_path / "again",
        site="shop",
        env="dev",
        moment=MOMENT,
        code_repo=tmp_path / "repo",
        files_dir=tmp_path / "files",
        dump_sql=dump_file,
    )
    unpacked = subprocess.run(
        ["gzip", "-dc", str(again["database"])], check=True, capture_output=True
    ).stdout
    assert unpacked == DUMP * 3


@pytest.mark.parametrize(("site", "env"), [("Shop", "dev"), ("shop", "de v"), ("shop", "../x")])
def test_names_pantheon_would_not_allow_are_refused(site: str, env: str) -> None:
    with pytest.raises(ValueError, match="not a Pantheon name"):
        pantheon_base_name(site, env, MOMENT)


def test_a_code_directory_without_git_is_refused(tmp_path: Path) -> None:
    (tmp_path / "code").mkdir()
    (tmp_path / "files").mkdir()
    with pytest.raises(ValueError, match="git working tree"):
        make_pantheon_backup(
            tmp_path / "out",
            site="shop",
            env="dev",
            moment=MOMENT,
            code_repo=tmp_path / "code",
            files_dir=tmp_path / "files",
            dump_sql=DUMP,
        )
