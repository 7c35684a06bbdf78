"""The rules for an environment's directories (pipelines/paths.py), on a real filesystem."""

from __future__ import annotations

from pathlib import Path

import pytest

from envrestore.pipelines.errors import BadInput, Conflict
from envrestore.pipelines.paths import UsedPaths, check_dangerous, check_environment_paths


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/etc",
        "/etc/nginx",
        "/usr",
        "/usr/local/share/site",
        "/bin",
        "/sbin",
        "/lib",
        "/lib64",
        "/boot",
        "/dev",
        "/proc",
        "/sys",
        "/run/site",
        "/var/lib",
        "/var/lib/mysql",
        "/var/log/site",
        "/root",
        "/home",
        "/srv",
        "/var",
        "/var/www",
        "/tmp",
        "/opt",
        "/etc/../etc",
    ],
)
def test_system_and_broad_directories_are_refused(path):
    with pytest.raises(BadInput, match="files directory"):
        check_dangerous(Path(path), role="files")


@pytest.mark.parametrize(
    "path", ["/srv/shop/dev/files", "/var/www/shop/code", "/home/alice/sites/shop", "/opt/shop/x"]
)
def test_a_sites_own_directory_is_accepted(path):
    check_dangerous(Path(path), role="files")


def test_a_home_directory_itself_is_refused_but_not_what_is_inside():
    home = Path("~").expanduser()
    if str(home) in ("/", ""):
        pytest.skip("this user has no home directory")
    with pytest.raises(BadInput):
        check_dangerous(home, role="code")
    check_dangerous(home / "sites" / "shop", role="code")
    with pytest.raises(BadInput, match="home directory"):
        check_dangerous(Path("/home/someone-not-in-passwd"), role="code")


def test_symbolic_links_are_resolved_first(tmp_path):
    link = tmp_path / "innocent"
    link.symlink_to("/etc")
    with pytest.raises(BadInput, match=r"innocent \(= /etc\) is a system directory"):
        check_dangerous(link, role="files")
    inside = tmp_path / "to-root"
    inside.symlink_to("/")
    with pytest.raises(BadInput, match="root directory"):
        check_dangerous(inside, role="code")


@pytest.mark.parametrize(
    ("files", "code", "how"),
    [
        ("site", "site", "is the code directory"),
        ("site/code/files", "site/code", "is inside the code directory"),
        ("site", "site/code", "contains the code directory"),
    ],
)
def test_files_and_code_must_be_separate_trees(tmp_path, files, code, how):
    with pytest.raises(BadInput, match=how):
        check_environment_paths("shop.dev", tmp_path / files, tmp_path / code)


def test_files_and_code_apart_are_accepted(tmp_path):
    check_environment_paths("shop.dev", tmp_path / "site" / "files", tmp_path / "site" / "code")


def test_directories_of_another_environment_are_refused(tmp_path):
    live = UsedPaths("shop.live", tmp_path / "live" / "files", tmp_path / "live" / "code")
    code = tmp_path / "dev" / "code"
    for files, how in (
        (tmp_path / "live" / "files", "is the files directory of shop.live"),
        (tmp_path / "live" / "files" / "dev", "is inside the files directory of shop.live"),
        (tmp_path / "live", "contains the files directory of shop.live"),
    ):
        with pytest.raises(Conflict, match=how):
            check_environment_paths("shop.dev", files, code, others=[live])
    with pytest.raises(Conflict, match=r"the code directory of shop\.live"):
        check_environment_paths(
            "shop.dev", tmp_path / "dev" / "files", tmp_path / "live" / "code", others=[live]
        )
    # The environment's own recorded directories are not "another's" (env add updates).
    check_environment_paths("shop.live", live.files, live.code, others=[live])


def test_a_link_to_another_environments_directory_is_refused(tmp_path):
    live = UsedPaths("shop.live", tmp_path / "live" / "files", tmp_path / "live" / "code")
    live.files.mkdir(parents=True)
    alias = tmp_path / "alias"
    alias.symlink_to(live.files)
    with pytest.raises(Conflict, match=r"shop\.live"):
        check_environment_paths("shop.dev", alias, tmp_path / "dev" / "code", others=[live])


def test_the_state_directory_is_refused_inside_and_around(tmp_path):
    state = tmp_path / "run" / "state"
    code = tmp_path / "site" / "code"
    for files, how in (
        (state, "is envrestore's state directory"),
        (state / "pg" / "data", "is inside envrestore's state directory"),
        (tmp_path / "run", "contains envrestore's state directory"),
    ):
        with pytest.raises(BadInput, match=how):
            check_environment_paths("shop.dev", files, code, state_dir=state)
    with pytest.raises(BadInput, match="code directory"):
        check_environment_paths("shop.dev", tmp_path / "f", state / "code", state_dir=state)
    # `make demo` builds its site under <state>/demo/: that subtree is the exception.
    check_environment_paths(
        "demo.dev",
        state / "demo" / "dev" / "files",
        state / "demo" / "dev" / "code",
        state_dir=state,
    )
    check_environment_paths("shop.dev", tmp_path / "site" / "files", code, state_dir=state)
