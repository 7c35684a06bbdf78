"""The registry commands as an operator types them: messages, exit codes, no tracebacks.

The CLI runs as a subprocess against this test's ledger, stdin not a terminal
(so a command that would ask is refused unless it says --yes).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support.sites import make_files, make_repo
from tests.support.workers import ENVRESTORE

pytestmark = pytest.mark.integration

DB = "mariadb://root@127.0.0.1:3306/shop_dev"


@pytest.fixture
def shell(cli_env, tmp_path):
    env = dict(cli_env)
    env["ENVRESTORE_STATE_DIR"] = str(tmp_path / "state")
    env["COLUMNS"] = "80"
    (tmp_path / "state").mkdir()
    return env


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ENVRESTORE, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def refused(done: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    """Exit `code`, one line on stderr naming `words`, no traceback."""
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def site_dirs(root: Path) -> tuple[Path, Path]:
    return make_files(root / "files"), make_repo(root / "code", commits=1)


def test_env_add_refuses_dangerous_directories_in_one_line(shell, tmp_path):
    assert cli(shell, "site", "add", "shop").returncode == 0
    files, code = site_dirs(tmp_path / "dev")
    (code / "uploads").mkdir()
    link = tmp_path / "etc-link"
    link.symlink_to("/etc")
    for bad_files, bad_code, code_, words in (
        ("/", code, 2, ("root directory",)),
        ("/etc", code, 2, ("/etc", "system directory")),
        (str(link), code, 2, ("(= /etc)", "system directory")),
        ("/var/lib/mysql", code, 2, ("system directory",)),
        (str(files), "/usr/local", 2, ("code directory /usr/local",)),
        (str(code / "uploads"), code, 2, ("is inside the code directory",)),
        (str(tmp_path / "state" / "f"), code, 2, ("state directory",)),
    ):
        done = cli(
            shell,
            "env",
            "add",
            "shop.dev",
            "--db",
            DB,
            "--files",
            str(bad_files),
            "--code",
            str(bad_code),
        )
        refused(done, code_, *words)
    ok = cli(
        shell, "env", "add", "shop.dev", "--db", DB, "--files", str(files), "--code", str(code)
    )
    assert ok.returncode == 0, ok.stderr
    live_code = make_repo(tmp_path / "live" / "code", commits=1)
    done = cli(
        shell,
        "env",
        "add",
        "shop.live",
        "--db",
        DB,
        "--files",
        str(files),
        "--code",
        str(live_code),
    )
    refused(done, 4, "is the files directory of shop.dev")


def test_site_and_env_commands_end_to_end(shell, tmp_path):
    assert cli(shell, "site", "add", "shop").returncode == 0
    assert cli(shell, "site", "add", "blog").returncode == 0
    files, code = site_dirs(tmp_path / "dev")
    assert (
        cli(
            shell, "env", "add", "shop.dev", "--db", DB, "--files", str(files), "--code", str(code)
        ).returncode
        == 0
    )

    listed = json.loads(cli(shell, "site", "list", "--json").stdout)
    assert [(s["name"], s["environments"]) for s in listed] == [("blog", []), ("shop", ["dev"])]
    table = cli(shell, "site", "list").stdout
    assert "shop" in table and "dev" in table and max(map(len, table.splitlines())) <= 80

    done = cli(shell, "env", "set", "shop.dev", "--url", "https://dev.shop.example", "--protected")
    assert done.returncode == 0, done.stderr
    assert "updated: url, protected" in done.stdout
    [env] = json.loads(cli(shell, "env", "list", "shop", "--json").stdout)
    assert (env["url"], env["protected"], env["files"]) == (
        "https://dev.shop.example",
        True,
        str(files),
    )
    refused(cli(shell, "env", "set", "shop.dev"), 2, "nothing to change")
    refused(cli(shell, "env", "set", "shop.dev", "--files", "/boot"), 2, "system directory")
    refused(cli(shell, "env", "set", "shop.nope", "--protected"), 3, "shop.nope")
    refused(
        cli(shell, "env", "set", "shop.dev", "--files", str(tmp_path / "missing")),
        2,
        "does not exist",
    )

    # Removing asks; off a terminal it needs --yes.
    refused(cli(shell, "site", "remove", "shop"), 2, "--yes")
    refused(cli(shell, "site", "remove", "shop", "--yes"), 4, "still has environments", "--cascade")
    done = cli(shell, "env", "remove", "shop.dev", "--yes")
    assert done.returncode == 0, done.stderr
    assert "left as they are" in done.stdout
    assert (files / "2026" / "11" / "notes.txt").is_file() and (code / ".git").is_dir()
    assert cli(shell, "site", "remove", "shop", "--yes").returncode == 0
    refused(cli(shell, "site", "remove", "shop", "--yes"), 3, "shop")
    assert [s["name"] for s in json.loads(cli(shell, "site", "list", "--json").stdout)] == ["blog"]


def test_env_load_checks_every_entry_before_writing_any(shell, tmp_path):
    assert cli(shell, "site", "add", "shop").returncode == 0
    dev_files, dev_code = site_dirs(tmp_path / "dev")
    live_files, live_code = site_dirs(tmp_path / "live")
    path = tmp_path / "envs.toml"
    path.write_text(
        f'[[env]]\ntarget = "shop.dev"\ndb = "{DB}"\nfiles = "{dev_files}"\ncode = "{dev_code}"\n'
        f'[[env]]\ntarget = "shop.live"\ndb = "{DB}"\nfiles = "{dev_files}"\ncode = "{live_code}"\n'
    )
    refused(
        cli(shell, "env", "load", str(path)), 4, "shop.dev: files", "files directory of shop.live"
    )
    assert json.loads(cli(shell, "env", "list", "--json").stdout) == []
    path.write_text(
        path.read_text().replace(
            f'files = "{dev_files}"\ncode = "{live_code}"', f'files = "/proc"\ncode = "{live_code}"'
        )
    )
    refused(cli(shell, "env", "load", str(path)), 2, "/proc", "system directory")
    path.write_text(path.read_text().replace('files = "/proc"', f'files = "{live_files}"'))
    done = cli(shell, "env", "load", str(path))
    assert done.returncode == 0, done.stderr
    assert len(json.loads(cli(shell, "env", "list", "--json").stdout)) == 2
