"""The HTTP API on the real ledger, SeaweedFS and site databases: every route, as a client sees it.

A dashboard backend's view: 202 with the job and a Location it can poll,
an ETag that answers 304 while nothing changed, the content of the
environment really replaced, errors as `{"error": {"code", "message"}}`.
Tokens: one for site `shop` may do everything there and nothing anywhere
else; a site it may not see answers exactly like a site that does not exist.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from envrestore.pipelines import registry
from envrestore.pipelines.jobs.runtime import Runtime
from tests.support.api import api_client, bearer
from tests.support.driver import drive
from tests.support.environments import SiteEnv, add_env
from tests.support.producing import submit_backup

pytestmark = pytest.mark.integration

SECRET = "s3cret-pass"


@pytest.fixture
def settings(settings: Any) -> Any:
    return settings.model_copy(update={"api_auth_failures_per_minute": 3})


@pytest.fixture
async def world(runtime: Runtime, tmp_path: Any, make_postgres_db: Any) -> dict[str, Any]:
    """shop.dev (backed up), shop.test, blog.dev; one environment with a password in its DSN."""
    envs = {
        t: await add_env(runtime, tmp_path / "envs", t, make_postgres_db)
        for t in ("shop.dev", "shop.test", "blog.dev")
    }
    job = await submit_backup(runtime, "shop.dev")
    assert (await drive(runtime, job.job_id))["status"] == "succeeded"
    (tmp_path / "pw" / "f").mkdir(parents=True)
    (tmp_path / "pw" / "c").mkdir(parents=True)
    await registry.add_environment(
        runtime.pool,
        "shop.secret",
        db=f"postgresql://someone:{SECRET}@127.0.0.1:5432/nowhere",
        files=tmp_path / "pw" / "f",
        code=tmp_path / "pw" / "c",
    )
    return envs


def _routes(site: str, env: str, backup_id: str, job_id: str) -> list[tuple[str, str, Any]]:
    """Every site-scoped route, with a valid body, for `site`."""
    base = f"/sites/{site}/envs/{env}"
    return [
        ("GET", f"/sites/{site}/envs", None),
        ("GET", base, None),
        ("GET", f"{base}/backups", None),
        ("GET", f"{base}/backups/{backup_id}", None),
        ("POST", f"{base}/backups", {}),
        ("DELETE", f"{base}/backups/{backup_id}", None),
        ("POST", f"{base}/restores", {"backup": backup_id}),
        (
            "POST",
            f"{base}/imports",
            {"parts": [{"element": "files", "url": "https://x.test/f.tar"}]},
        ),
        ("POST", f"{base}/clones", {"source": f"{site}.{env}"}),
        ("POST", f"{base}/rollbacks", {"job_id": job_id}),
        ("POST", f"{base}/uploads", {"element": "files", "size": 10, "filename": "f.tar"}),
        (
            "POST",
            f"{base}/uploads/{uuid.uuid4()}/complete",
            {"parts": [{"number": 1, "etag": "x"}], "sha256": "0" * 64},
        ),
        ("POST", "/links", {"target": f"{site}.{env}", "parts": ["database"]}),
        ("GET", f"/jobs/{job_id}", None),
        ("POST", f"/jobs/{job_id}/cancel", None),
        ("GET", f"/jobs/{job_id}/events", None),
    ]


async def _call(
    http: httpx.AsyncClient, method: str, path: str, body: Any, headers: Any
) -> httpx.Response:
    return await http.request(method, path, json=body, headers=headers)


async def test_a_token_for_another_site_gets_404_on_every_route_as_for_a_missing_site(
    settings: Any, runtime: Runtime, world: dict[str, SiteEnv]
) -> None:
    async with api_client(settings, runtime.pool) as http:
        admin = await bearer(runtime.pool, "admin", sites=None, scopes=["admin"])
        blog = await bearer(runtime.pool, "blog-admin", sites=["blog"], scopes=["admin"])
        [backup] = (await http.get("/sites/shop/envs/dev/backups", headers=admin)).json()
        queued = await http.post("/sites/shop/envs/dev/backups", headers=admin, json={})
        job_id = queued.json()["id"]

        assert [s["name"] for s in (await http.get("/sites", headers=blog)).json()] == ["blog"]
        assert (await http.get("/jobs", headers=blog)).json() == []
        finished = backup["job_id"]
        for method, path, body in _routes("shop", "dev", backup["id"], finished):
            answer = await _call(http, method, path, body, blog)
            assert answer.status_code == 404, (method, path, answer.text)
            error = answer.json()["error"]
            assert error["code"] == "not_found", (method, path)
            if path.startswith("/jobs/"):
                assert error["message"] == f"job {finished} does not exist"
                missing = await http.get(f"/jobs/{uuid.uuid4()}", headers=blog)
                assert missing.json()["error"]["message"].endswith(" does not exist")
            else:
                assert error["message"] == "site 'shop' is not registered", (method, path)
            # a site that does not exist at all answers the same
            if not path.startswith("/jobs/") and path != "/links":
                nowhere = await _call(http, method, path.replace("/shop/", "/nosuch/"), body, blog)
                assert nowhere.status_code == 404
                assert nowhere.json()["error"]["message"] == "site 'nosuch' is not registered"
        # a backup of shop named from blog's own routes is as missing as one that never was
        for method, path, body in [
            ("POST", "/sites/blog/envs/dev/restores", {"backup": backup["id"]}),
            ("POST", "/links", {"target": "blog.dev", "backup": backup["id"], "parts": ["code"]}),
        ]:
            answer = await _call(http, method, path, body, blog)
            assert answer.status_code == 404, answer.text
            assert answer.json()["error"]["message"] == f"backup {backup['id']!r} does not exist"
            assert "shop" not in answer.text
        # nothing was queued by those calls
        assert (await http.get(f"/jobs/{job_id}", headers=admin)).json()["status"] == "queued"
        jobs = (await http.get("/jobs?site=shop", headers=admin)).json()
        assert len(jobs) == 2


async def test_a_token_without_the_action_gets_403_and_can_still_read(
    settings: Any, runtime: Runtime, world: dict[str, SiteEnv]
) -> None:
    async with api_client(settings, runtime.pool) as http:
        admin = await bearer(runtime.pool, "admin", sites=None, scopes=["admin"])
        reader = await bearer(runtime.pool, "shop-reader", sites=["shop"], scopes=["read"])
        [backup] = (await http.get("/sites/shop/envs/dev/backups", headers=admin)).json()
        job_id = (await http.post("/sites/shop/envs/dev/backups", headers=admin, json={})).json()[
            "id"
        ]
        for method, path, body in _routes("shop", "dev", backup["id"], backup["job_id"]):
            answer = await _call(http, method, path, body, reader)
            if method == "GET":
                assert answer.status_code == 200, (path, answer.text)
            else:
                assert answer.status_code == 403, (method, path, answer.text)
                assert answer.json()["error"]["code"] == "forbidden"
        restorer = await bearer(runtime.pool, "shop-restorer", sites=["shop"], scopes=["restore"])
        # cancelling a backup needs the backup scope, not restore
        refused = await http.post(f"/jobs/{job_id}/cancel", headers=restorer)
        assert refused.status_code == 403


async def test_every_route_does_its_work_and_records_the_token(
    settings: Any, runtime: Runtime, world: dict[str, SiteEnv]
) -> None:
    dev, test = world["shop.dev"], world["shop.test"]
    async with api_client(settings, runtime.pool) as http:
        shop = await bearer(runtime.pool, "shop-admin", sites=["shop"], scopes=["admin"])

        sites = (await http.get("/sites", headers=shop)).json()
        assert sites == [
            {"name": "shop", "created_at": sites[0]["created_at"],
             "environments": ["dev", "secret", "test"]}
        ]  # fmt: skip
        envs = (await http.get("/sites/shop/envs", headers=shop)).json()
        assert sorted(e["env"] for e in envs) == ["dev", "secret", "test"]
        secret_env = (await http.get("/sites/shop/envs/secret", headers=shop)).json()
        assert SECRET not in str(envs) and SECRET not in str(secret_env)
        assert "someone" in secret_env["db"]
        [backup] = (await http.get("/sites/shop/envs/dev/backups", headers=shop)).json()
        one = await http.get(f"/sites/shop/envs/dev/backups/{backup['id']}", headers=shop)
        assert one.json()["id"] == backup["id"] and one.json()["elements"] == [
            "database", "files", "code"
        ]  # fmt: skip
        other_env = await http.get(f"/sites/shop/envs/test/backups/{backup['id']}", headers=shop)
        assert other_env.status_code == 404

        # a backup: 202, Location, the token recorded, ETag/304 until it changes
        made = await http.post("/sites/shop/envs/dev/backups", headers=shop, json={"keep_days": 3})
        assert made.status_code == 202
        assert made.headers["location"] == f"/jobs/{made.json()['id']}"
        assert made.json()["requested_by"] == "token:shop-admin"
        polled = await http.get(made.headers["location"], headers=shop)
        etag = polled.headers["etag"]
        assert polled.json()["progress"]["status"] == "queued"
        same = await http.get(made.headers["location"], headers={**shop, "If-None-Match": etag})
        assert same.status_code == 304 and same.content == b""
        assert (await drive(runtime, uuid.UUID(made.json()["id"])))["status"] == "succeeded"
        done = await http.get(made.headers["location"], headers={**shop, "If-None-Match": etag})
        assert done.status_code == 200 and done.headers["etag"] != etag
        assert done.json()["progress"]["steps_done"] == done.json()["progress"]["steps_total"]

        # a restore of dev's backup into test: test's content becomes dev's
        before = await dev.snapshot()
        restored = await http.post(
            "/sites/shop/envs/test/restores",
            headers=shop,
            json={"source": "shop.dev", "backup": backup["id"], "search_replace": False},
        )
        assert restored.status_code == 202, restored.text
        assert (await drive(runtime, uuid.UUID(restored.json()["id"])))["status"] == "succeeded"
        after = await test.snapshot()
        assert after.rows == before.rows and after.files == before.files

        # its rollback brings test's own content back
        test_before_restore = restored.json()["id"]
        rolled = await http.post(
            "/sites/shop/envs/test/rollbacks", headers=shop, json={"job_id": test_before_restore}
        )
        assert rolled.status_code == 202, rolled.text
        assert (await drive(runtime, uuid.UUID(rolled.json()["id"])))["status"] == "succeeded"
        assert (await test.snapshot()).rows != before.rows
        wrong_env = await http.post(
            "/sites/shop/envs/dev/rollbacks", headers=shop, json={"job_id": test_before_restore}
        )
        assert wrong_env.status_code == 404

        # a clone of dev's live content into test
        cloned = await http.post(
            "/sites/shop/envs/test/clones",
            headers=shop,
            json={"source": "shop.dev", "search_replace": False},
        )
        assert cloned.status_code == 202, cloned.text
        assert (await drive(runtime, uuid.UUID(cloned.json()["id"])))["status"] == "succeeded"
        assert (await test.snapshot()).rows == (await dev.snapshot()).rows

        # links to the backup's parts, recorded with the token
        links = await http.post(
            "/links", headers=shop, json={"target": "shop.dev", "backup": backup["id"],
                                           "parts": ["database", "files"]}
        )  # fmt: skip
        assert links.status_code == 201
        assert [link["part"] for link in links.json()] == ["database", "files"]
        recorded = await runtime.pool.fetch("SELECT requested_by FROM links")
        assert {r["requested_by"] for r in recorded} == {"token:shop-admin"}

        # an import from a URL: accepted and queued (the URL checks run on the worker)
        imported = await http.post(
            "/sites/shop/envs/test/imports",
            headers=shop,
            json={"parts": [{"element": "files",
                             "url": "https://files.example.test/f.tar?X-Amz-Signature=abc"}]},
        )  # fmt: skip
        assert imported.status_code == 202, imported.text
        assert imported.json()["kind"] == "import"
        # a link's signature is a credential: jobs are shown without URL queries
        assert imported.json()["params"]["parts"][0]["url"] == "https://files.example.test/f.tar"

        # cancel: a queued job is cancelled; again is a conflict
        cancelled = await http.post(f"/jobs/{imported.json()['id']}/cancel", headers=shop)
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        again = await http.post(f"/jobs/{imported.json()['id']}/cancel", headers=shop)
        assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"

        # delete a backup
        deleted = await http.delete(f"/sites/shop/envs/dev/backups/{backup['id']}", headers=shop)
        assert deleted.status_code == 202 and deleted.json()["kind"] == "delete_backup"

        # events of a finished job, as SSE, ending with the job's status
        async with http.stream("GET", f"/jobs/{made.json()['id']}/events", headers=shop) as sse:
            assert sse.headers["content-type"].startswith("text/event-stream")
            text = "".join([chunk async for chunk in sse.aiter_text()])
        assert text.endswith(
            f'event: end\ndata: {{"id":"{made.json()["id"]}","status":"succeeded"}}\n\n'
        )
        assert "event: progress" in text

        jobs = (await http.get("/jobs", headers=shop)).json()
        assert {j["requested_by"] for j in jobs} >= {"token:shop-admin"}


async def test_idempotency_key_replays_the_job_and_refuses_another_body(
    settings: Any, runtime: Runtime, world: dict[str, SiteEnv]
) -> None:
    async with api_client(settings, runtime.pool) as http:
        shop = await bearer(
            runtime.pool, "shop", sites=["shop"], scopes=["read", "backup", "restore"]
        )
        keyed = {**shop, "Idempotency-Key": "nightly-42"}
        first = await http.post("/sites/shop/envs/dev/backups", headers=keyed, json={})
        again = await http.post("/sites/shop/envs/dev/backups", headers=keyed, json={})
        assert first.status_code == 202 and again.status_code == 200
        assert first.json()["id"] == again.json()["id"]
        assert again.headers["location"] == first.headers["location"]
        other = await http.post(
            "/sites/shop/envs/dev/backups", headers=keyed, json={"elements": ["database"]}
        )
        assert other.status_code == 409
        assert other.json()["error"]["code"] == "conflict"
        restore_key = {**shop, "Idempotency-Key": "restore-1"}
        body = {"source": "shop.dev", "search_replace": False}
        r1 = await http.post("/sites/shop/envs/test/restores", headers=restore_key, json=body)
        r2 = await http.post("/sites/shop/envs/test/restores", headers=restore_key, json=body)
        assert (r1.status_code, r2.status_code) == (202, 200)
        assert r1.json()["id"] == r2.json()["id"]
        changed = await http.post(
            "/sites/shop/envs/test/restores",
            headers=restore_key,
            json={**body, "elements": ["files"]},
        )
        assert changed.status_code == 409
        jobs = await runtime.pool.fetchval("SELECT count(*) FROM jobs WHERE site = 'shop'")
        assert jobs == 3  # the fixture's backup, one keyed backup, one keyed restore


async def test_errors_are_json_with_stable_codes_and_no_internals(
    settings: Any, runtime: Runtime, world: dict[str, SiteEnv]
) -> None:
    async with api_client(settings, runtime.pool) as http:
        shop = await bearer(runtime.pool, "shop", sites=["shop"], scopes=["admin"])
        cases = [
            (await http.get("/sites"), 401, "unauthorized"),
            (await http.get("/sites/shop/envs/nope", headers=shop), 404, "not_found"),
            (await http.get("/jobs/not-a-uuid", headers=shop), 404, "not_found"),
            (
                await http.post(
                    "/sites/shop/envs/dev/backups", headers=shop, json={"elements": ["disk"]}
                ),
                422,
                "bad_input",
            ),
            (
                await http.post(
                    "/sites/shop/envs/dev/restores", headers=shop, json={"surprise": True}
                ),
                422,
                "bad_input",
            ),
            (
                await http.post(
                    "/sites/shop/envs/secret/backups", headers=shop, json={}
                ),
                None,
                None,
            ),
            (
                await http.post(
                    "/sites/shop/envs/dev/restores", headers=shop, json={"backup": "no-such"}
                ),
                404,
                "not_found",
            ),
            (await http.delete("/sites", headers=shop), 405, "method_not_allowed"),
            (await http.get("/jobs/1/events", headers={**shop, "Last-Event-ID": "x"}), 404,
             "not_found"),
        ]  # fmt: skip
        for answer, status, code in cases:
            body = answer.json()
            assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
            if status is not None:
                assert (answer.status_code, body["error"]["code"]) == (status, code), answer.text
            assert "Traceback" not in answer.text and SECRET not in answer.text
        # the backup of an environment whose database is unreachable: refused, password hidden
        unreachable = cases[5][0]
        assert 400 <= unreachable.status_code < 600 and unreachable.status_code != 500

        # failed authentication is limited per client: 429 with Retry-After
        wrong = {"Authorization": "Bearer envr_0000000000000000_nope"}
        codes = [(await http.get("/sites", headers=wrong)).status_code for _ in range(4)]
        assert codes == [401, 401, 401, 429]
        blocked = await http.get("/sites", headers=shop)
        assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) >= 1
        assert blocked.json()["error"]["code"] == "rate_limited"
