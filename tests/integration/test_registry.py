"""The ledger's migrations and the site/environment registry on the real PostgreSQL."""

from __future__ import annotations

import pytest

from envrestore.pipelines import registry
from envrestore.pipelines.errors import BadInput, NotFound
from envrestore.pipelines.ledger.connection import connect
from envrestore.pipelines.ledger.migrate import available_migrations, migrate
from tests.support.sites import make_repo

pytestmark = pytest.mark.integration


async def test_migrate_twice_applies_nothing_the_second_time(ledger_url):
    conn = await connect(ledger_url)
    try:
        assert await migrate(conn) == []  # the template was migrated already
        versions = [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")]
        assert sorted(versions) == [m.version for m in available_migrations()]
        assert sorted(versions) == list(range(1, len(versions) + 1))  # none skipped
    finally:
        await conn.close()


def write_registry(tmp_path, entries: str):
    for env in ("dev", "live"):
        (tmp_path / env / "files").mkdir(parents=True)
        make_repo(tmp_path / env / "code", commits=1)
    path = tmp_path / "envs.toml"
    path.write_text(entries)
    return path


ENTRIES = """
[[env]]
target = "shop.dev"
db = "mariadb://root@127.0.0.1:3306/shop_dev"
files = "dev/files"
code = "dev/code"
url = "https://Dev.Shop.example/"

[[env]]
site = "shop"
env = "live"
db = "postgresql://app@127.0.0.1/shop?password_env=SHOP_DB_PASSWORD"
files = "live/files"
code = "live/code"
"""


async def test_registry_file_registers_all_and_live_is_protected(runtime, tmp_path):
    specs = registry.read_registry_file(write_registry(tmp_path, ENTRIES))
    await registry.add_site(runtime.pool, "shop")
    for spec in specs:
        await registry.add_environment(
            runtime.pool,
            spec.target,
            db=spec.db,
            files=spec.files,
            code=spec.code,
            protected=spec.protected,
            url=spec.url,
        )
    envs = {e.target: e for e in await registry.list_environments(runtime.pool)}
    assert set(envs) == {"shop.dev", "shop.live"}
    assert envs["shop.dev"].url == "https://dev.shop.example"  # host lower-cased, no slash
    assert envs["shop.live"].url is None
    # Registering again without a URL keeps the recorded one; a bad one is refused.
    dev = specs[0]
    again, created = await registry.add_environment(
        runtime.pool, dev.target, db=dev.db, files=dev.files, code=dev.code
    )
    assert (created, again.url) == (False, "https://dev.shop.example")
    for bad in ("ftp://dev.shop.example", "dev.shop.example", "https://x/?a=1", "https://"):
        with pytest.raises(BadInput, match="base URL"):
            await registry.add_environment(
                runtime.pool, dev.target, db=dev.db, files=dev.files, code=dev.code, url=bad
            )
    assert envs["shop.live"].protected
    assert not envs["shop.dev"].protected
    assert envs["shop.dev"].engine == "mariadb"
    assert envs["shop.dev"].files_dir == tmp_path / "dev" / "files"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[[env]]\ntarget = 'shop.dev'\n", "missing db, files, code"),
        ("[[env]]\ntarget = 'shop'\ndb='mariadb://h/d'\nfiles='f'\ncode='c'\n", "SITE.ENV"),
        ("[[env]]\ntarget = 'shop.dev'\ndb='sqlite:///x'\nfiles='f'\ncode='c'\n", "sqlite"),
        ("not toml [", "not valid TOML"),
        ("title = 'no envs'\n", "no [[env]]"),
    ],
)
def test_bad_registry_files_are_refused_whole(tmp_path, text, problem):
    path = tmp_path / "envs.toml"
    path.write_text(text)
    with pytest.raises(BadInput, match=problem.replace("[", r"\[").replace("]", r"\]")):
        registry.read_registry_file(path)


async def test_an_environment_needs_its_site(runtime, tmp_path):
    with pytest.raises(NotFound, match="site add shop"):
        await registry.add_environment(
            runtime.pool,
            "shop.dev",
            db="mariadb://root@127.0.0.1/x",
            files=tmp_path,
            code=tmp_path,
        )
