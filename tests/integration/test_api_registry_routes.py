"""The registry, schedules and rollback points over HTTP, on the real ledger and services.

What `envrestore site|env|schedule|rollback` do, as a dashboard backend does it:
an all-sites admin token adds a site and registers, changes and forgets an
environment; a token for `shop` cannot see `blog` (404, exactly as a missing
site) nor add sites; a token without the scope gets 403; a dangerous or
relative directory is refused with a JSON 4xx before anything is written;
a DSN's password never comes back.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from envrestore.pipelines import registry
from envrestore.pipelines.jobs.runtime import Runtime
from envrestore.pipelines.schedule.store import get_schedule
from tests.support.api import api_client, bearer
from tests.support.driver import drive
from tests.support.environments import add_env
from tests.support.producing import submit_backup
from tests.support.sites import make_files, make_repo

pytestmark = pytest.mark.integration

SECRET = "s3cret-pass"


def _error(answer: httpx.Response, status: int, code: str) -> str:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    error = answer.json()["error"]
    assert error["code"] == code, answer.text
    assert "Traceback" not in answer.text
    return str(error["message"])


@pytest.fixture
async def dirs(tmp_path: Path) -> dict[str, str]:
    return {
        "files": str(make_files(tmp_path / "blog" / "files")),
        "code": str(make_repo(tmp_path / "blog" / "code", commits=1)),
    }


async def test_an_admin_adds_a_site_registers_changes_and_forgets_an_environment(
    settings: Any, runtime: Runtime, dirs: dict[str, str]
) -> None:
    async with api_client(settings, runtime.pool) as http:
        admin = await bearer(runtime.pool, "admin", sites=None, scopes=["admin"])
        made = await http.post("/sites", headers=admin, json={"name": "blog"})
        assert made.status_code == 201, made.text
        assert made.json()["name"] == "blog" and made.headers["location"] == "/sites/blog/envs"
        _error(await http.post("/sites", headers=admin, json={"name": "blog"}), 409, "conflict")
        _error(
            await http.post("/sites", headers=admin, json={"name": "Bad Name"}), 422, "bad_input"
        )

        dsn = f"postgresql://someone:{SECRET}@127.0.0.1:5432/blogdb"
        body = {"db": dsn, **dirs, "url": "https://dev.blog.test"}
        put = await http.put("/sites/blog/envs/dev", headers=admin, json=body)
        assert put.status_code == 201, put.text
        assert put.headers["location"] == "/sites/blog/envs/dev"
        assert SECRET not in put.text and put.json()["db"].startswith("postgresql://someone:")
        assert put.json()["files"] == dirs["files"] and put.json()["protected"] is False
        again = await http.put(
            "/sites/blog/envs/dev", headers=admin, json={**body, "url": "https://b.test"}
        )
        assert again.status_code == 200 and again.json()["url"] == "https://b.test"
        # a DSN refused is named with its password masked
        bad = {**body, "db": f"postgresql://someone:{SECRET}@127.0.0.1:notaport/blogdb"}
        answer = await http.put("/sites/blog/envs/dev", headers=admin, json=bad)
        assert "port" in _error(answer, 422, "bad_input") and SECRET not in answer.text
        # the ledger holds it, as `env list` shows it
        stored = await registry.get_environment(runtime.pool, "blog.dev")
        assert stored.url == "https://b.test" and stored.db_dsn == dsn

        patched = await http.patch("/sites/blog/envs/dev", headers=admin, json={"protected": True})
        assert patched.status_code == 200, patched.text
        assert patched.json()["changed"] == ["protected"] and patched.json()["protected"] is True
        assert SECRET not in patched.text
        assert (await registry.get_environment(runtime.pool, "blog.dev")).protected
        _error(await http.patch("/sites/blog/envs/dev", headers=admin, json={}), 422, "bad_input")

        # a site with an environment is kept unless cascade
        message = _error(await http.delete("/sites/blog", headers=admin), 409, "conflict")
        assert "blog.dev" in message
        forgot = await http.delete("/sites/blog/envs/dev", headers=admin)
        assert forgot.status_code == 200 and forgot.json()["env"] == "dev"
        assert SECRET not in forgot.text
        _error(await http.get("/sites/blog/envs/dev", headers=admin), 404, "not_found")
        assert Path(dirs["files"]).is_dir()  # nothing on disk is touched

        await http.put("/sites/blog/envs/test", headers=admin, json=body | {"url": None})
        gone = await http.delete("/sites/blog?cascade=true", headers=admin)
        assert gone.status_code == 200, gone.text
        assert gone.json() == {"site": "blog", "removed_environments": ["blog.test"]}
        assert [s["name"] for s in (await http.get("/sites", headers=admin)).json()] == []


async def test_dangerous_or_relative_directories_are_refused_before_anything_is_written(
    settings: Any, runtime: Runtime, dirs: dict[str, str], tmp_path: Path
) -> None:
    await registry.add_site(runtime.pool, "blog")
    plain = tmp_path / "not-a-repo"
    plain.mkdir()
    async with api_client(settings, runtime.pool) as http:
        admin = await bearer(runtime.pool, "admin", sites=None, scopes=["admin"])
        db = "postgresql://u@127.0.0.1:5432/blogdb"
        refused = [
            ({"files": "/etc"}, "files"),
            ({"files": "/"}, "files"),
            ({"code": "/usr"}, "code"),
            ({"files": "files/rel"}, "absolute"),
            ({"code": "../code"}, "absolute"),
            ({"files": str(settings.state_dir.absolute())}, "files"),
            ({"files": dirs["code"], "code": dirs["code"]}, ""),
            ({"code": str(plain)}, "git"),
            ({"files": str(tmp_path / "missing")}, "does not exist"),
        ]
        for change, says in refused:
            body = {"db": db, **dirs, **change}
            answer = await http.put("/sites/blog/envs/dev", headers=admin, json=body)
            assert 400 <= answer.status_code < 500, (change, answer.text)
            assert answer.json()["error"]["code"] in ("bad_input", "conflict"), answer.text
            assert says in answer.json()["error"]["message"], (change, answer.text)
        _error(await http.get("/sites/blog/envs/dev", headers=admin), 404, "not_found")

        # the same rules when changing one field of a registered environment
        assert (
            await http.put("/sites/blog/envs/dev", headers=admin, json={"db": db, **dirs})
        ).status_code == 201
        for change in ({"files": "/etc"}, {"code": "/"}, {"files": "rel"}):
            answer = await http.patch("/sites/blog/envs/dev", headers=admin, json=change)
            assert 400 <= answer.status_code < 500, (change, answer.text)
        assert (
            str((await registry.get_environment(runtime.pool, "blog.dev")).files_dir)
            == (dirs["files"])
        )


@pytest.fixture
async def two_sites(runtime: Runtime, tmp_path: Path, make_postgres_db: Any) -> None:
    for target in ("shop.dev", "blog.dev"):
        await add_env(runtime, tmp_path / "envs", target, make_postgres_db)


def _site_routes(site: str) -> list[tuple[str, str, Any]]:
    base = f"/sites/{site}/envs/dev"
    return [
        ("DELETE", f"/sites/{site}", None),
        ("PUT", base, {"db": "postgresql://u@127.0.0.1/x", "files": "/x/f", "code": "/x/c"}),
        ("PATCH", base, {"protected": True}),
        ("DELETE", base, None),
        ("GET", f"{base}/schedule", None),
        ("PUT", f"{base}/schedule", {"hour": 4}),
        ("DELETE", f"{base}/schedule", None),
        ("GET", f"{base}/rollback-points", None),
        ("DELETE", f"{base}/rollback-points/{uuid.uuid4()}", None),
    ]


async def test_a_token_for_another_site_gets_404_and_a_site_token_cannot_add_sites(
    settings: Any, runtime: Runtime, two_sites: None
) -> None:
    async with api_client(settings, runtime.pool) as http:
        shop = await bearer(runtime.pool, "shop-admin", sites=["shop"], scopes=["admin"])
        for method, path, body in _site_routes("blog"):
            answer = await http.request(method, path, json=body, headers=shop)
            assert _error(answer, 404, "not_found") == "site 'blog' is not registered", path
            nowhere = await http.request(
                method, path.replace("/blog", "/nosuch"), json=body, headers=shop
            )
            assert _error(nowhere, 404, "not_found") == "site 'nosuch' is not registered"
        # blog is untouched
        assert (await registry.get_environment(runtime.pool, "blog.dev")).protected is False
        message = _error(
            await http.post("/sites", headers=shop, json={"name": "new"}), 403, "forbidden"
        )
        assert "every site" in message
        # its own site it may change
        own = await http.patch("/sites/shop/envs/dev", headers=shop, json={"url": "https://s.test"})
        assert own.status_code == 200, own.text


async def test_a_token_without_the_scope_gets_403_and_reads_what_it_may(
    settings: Any, runtime: Runtime, two_sites: None
) -> None:
    async with api_client(settings, runtime.pool) as http:
        reader = await bearer(runtime.pool, "reader", sites=["shop"], scopes=["read"])
        for method, path, body in _site_routes("shop"):
            answer = await http.request(method, path, json=body, headers=reader)
            if method == "GET":
                assert answer.status_code == 200, (path, answer.text)
            else:
                _error(answer, 403, "forbidden")
        backer = await bearer(runtime.pool, "backer", sites=["shop"], scopes=["backup"])
        assert (
            await http.put("/sites/shop/envs/dev/schedule", headers=backer, json={"hour": 3})
        ).status_code == 200
        for method, path, body in _site_routes("shop"):
            if "schedule" not in path:
                answer = await http.request(method, path, json=body, headers=backer)
                _error(answer, 403, "forbidden")
        all_admin_free = await bearer(runtime.pool, "all-reader", sites=None, scopes=["read"])
        _error(
            await http.post("/sites", headers=all_admin_free, json={"name": "x"}), 403, "forbidden"
        )


async def test_a_schedule_is_read_set_and_turned_off(
    settings: Any, runtime: Runtime, two_sites: None
) -> None:
    async with api_client(settings, runtime.pool) as http:
        shop = await bearer(runtime.pool, "shop", sites=["shop"], scopes=["read", "backup"])
        path = "/sites/shop/envs/dev/schedule"
        first = await http.get(path, headers=shop)
        assert first.status_code == 200 and first.json()["hour_is_default"] is True
        put = await http.put(path, headers=shop, json={"hour": 5, "weekly_day": "monday"})
        assert put.status_code == 200, put.text
        view = (await http.get(path, headers=shop)).json()
        assert view["enabled"] is True and view["hour_utc"] == 5
        assert view["weekly_day_name"].lower().startswith("mon") and view["next_slot"]
        stored = await get_schedule(runtime.pool, settings, "shop.dev")
        assert stored.enabled and stored.hour == 5 and stored.own_hour
        _error(await http.put(path, headers=shop, json={"hour": 24}), 422, "bad_input")
        _error(await http.put(path, headers=shop, json={"weekly_day": "someday"}), 422, "bad_input")
        off = await http.delete(path, headers=shop)
        assert off.status_code == 200 and off.json()["enabled"] is False
        assert not (await get_schedule(runtime.pool, settings, "shop.dev")).enabled
        _error(await http.get("/sites/shop/envs/nope/schedule", headers=shop), 404, "not_found")


async def test_rollback_points_are_listed_and_one_is_dropped_by_a_job(
    settings: Any, runtime: Runtime, tmp_path: Path, make_postgres_db: Any
) -> None:
    for target in ("shop.dev", "shop.test"):
        await add_env(runtime, tmp_path / "envs", target, make_postgres_db)
    backup = await submit_backup(runtime, "shop.dev")
    assert (await drive(runtime, backup.job_id))["status"] == "succeeded"
    async with api_client(settings, runtime.pool) as http:
        shop = await bearer(runtime.pool, "shop", sites=["shop"], scopes=["read", "restore"])
        [made] = (await http.get("/sites/shop/envs/dev/backups", headers=shop)).json()
        restored = await http.post(
            "/sites/shop/envs/test/restores",
            headers=shop,
            json={"source": "shop.dev", "backup": made["id"], "search_replace": False},
        )
        restore_id = restored.json()["id"]
        assert (await drive(runtime, uuid.UUID(restore_id)))["status"] == "succeeded"

        listed = await http.get("/sites/shop/envs/test/rollback-points", headers=shop)
        assert listed.status_code == 200
        [point] = listed.json()
        assert point["job_id"] == restore_id and point["target"] == "shop.test"
        assert point["disk_bytes"] > 0
        assert (await http.get("/sites/shop/envs/dev/rollback-points", headers=shop)).json() == []

        # the point is test's: asked under dev it is not found, and nothing is queued
        wrong = await http.delete(
            f"/sites/shop/envs/dev/rollback-points/{restore_id}", headers=shop
        )
        assert "no rollback point of shop.dev" in _error(wrong, 404, "not_found")
        _error(
            await http.delete("/sites/shop/envs/test/rollback-points/nope", headers=shop),
            422,
            "bad_input",
        )
        dropped = await http.delete(
            f"/sites/shop/envs/test/rollback-points/{restore_id}", headers=shop
        )
        assert dropped.status_code == 202, dropped.text
        assert dropped.json()["kind"] == "expire_rollback"
        assert dropped.headers["location"] == f"/jobs/{dropped.json()['id']}"
        assert (await drive(runtime, uuid.UUID(dropped.json()["id"])))["status"] == "succeeded"
        assert (await http.get("/sites/shop/envs/test/rollback-points", headers=shop)).json() == []
        again = await http.delete(
            f"/sites/shop/envs/test/rollback-points/{restore_id}", headers=shop
        )
        assert "already" in _error(again, 409, "conflict")
