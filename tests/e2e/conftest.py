"""The e2e `site` fixture: an environment backed up through real workers, then changed."""

from __future__ import annotations

import asyncio

import pytest

from envrestore.pipelines.dsn import Dsn
from tests.integration.test_backup_job import fill
from tests.support.content import snapshot
from tests.support.sites import git, make_files, make_repo
from tests.support.workers import run_cli


def dsn_text(dsn: Dsn) -> str:
    scheme = "mariadb" if dsn.engine == "mariadb" else "postgresql"
    return f"{scheme}://{dsn.user}@{dsn.host}:{dsn.port}/{dsn.database}"


def snap(site):
    return asyncio.run(snapshot(site["dsn"], site["files"], site["code"]))


@pytest.fixture(params=["mariadb", "postgresql"])
def site(request, cli_env, worker_pool, tmp_path, make_mariadb_db, make_postgres_db):
    """shop.dev registered through the CLI, backed up through a worker, then changed."""
    dsn = make_mariadb_db() if request.param == "mariadb" else make_postgres_db()
    asyncio.run(fill(dsn))
    files = make_files(tmp_path / "site" / "files")
    code = make_repo(tmp_path / "site" / "code")
    assert run_cli(cli_env, "db", "migrate").returncode == 0
    assert run_cli(cli_env, "site", "add", "shop").returncode == 0
    added = run_cli(
        cli_env,
        "env",
        "add",
        "shop.dev",
        "--db",
        dsn_text(dsn),
        "--files",
        str(files),
        "--code",
        str(code),
    )
    assert added.returncode == 0, added.stderr
    worker_pool.start()
    backed = run_cli(cli_env, "backup", "create", "shop.dev", "--wait", "--json")
    assert backed.returncode == 0, backed.stderr
    site = {"dsn": dsn, "files": files, "code": code}
    site["before"] = snap(site)
    # The user's changes after the backup.
    (files / "later.txt").write_text("after the backup\n")
    (files / "styles" / "thumb.png").unlink()
    (code / "index.php").write_text("<?php // later\n")
    git(code, "commit", "-qam", "later")
    site["changed"] = snap(site)
    assert site["changed"] != site["before"]
    return site
