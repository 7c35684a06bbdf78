"""The HTTP API against hostile or unlucky input, and tokens kept apart (real services).

Each test is one reviewer's finding: NUL characters that PostgreSQL refuses,
SSE event ids past a bigint, idempotency keys shared between tokens, a
site-scoped token losing sight of its own backup deletion, unbounded metric
labels, signed URLs in job lists, a job list cut by `limit` before the
token's filter, another token's upload, and GET /sites without `read`.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from envrestore.pipelines.jobs.runtime import Runtime
from tests.support.api import api_client, bearer
from tests.support.driver import drive
from tests.support.environments import SiteEnv, add_env
from tests.support.producing import submit_backup

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


@pytest.fixture
async def world(runtime: Runtime, tmp_path: Any, make_postgres_db: Any) -> dict[str, SiteEnv]:
    """shop.dev (backed up) and blog.dev."""
    envs = {
        t: await add_env(runtime, tmp_path / "envs", t, make_postgres_db)
        for t in ("shop.dev", "blog.dev")
    }
    job = await submit_backup(runtime, "shop.dev")
    assert (await drive(runtime, job.job_id))["status"] == "succeeded"
    return envs


async def test_nul_characters_are_refused_with_422_not_500(
    settings: Any, runtime: Runtime, world: dict[str, SiteEnv]
) -> None:
    async with api_client(settings, runtime.pool) as http:
        admin = await bearer(runtime.pool, "admin", sites=None, scopes=["admin"])
        cases = [
            ("GET", "/sites/%00/envs", None),
            ("GET", "/jobs?env=%00", None),
            ("GET", "/jobs?site=a%00b", None),
            ("POST", "/sites/shop/envs/dev/restores", {"backup": "a\u0000b"}),
            ("POST", "/links", {"target": "shop.dev", "backup": "a\u0000b", "parts": ["code"]}),
        ]
        for method, path, body in cases:
            answer = await http.request(method, path, json=body, headers=admin)
            assert answer.status_code == 422, (method, path, answer.text)
            error = answer.json()["error"]
            assert error["code"] == "bad_input"
            assert "NUL" in error["message"], error
        # nothing was queued by them
        assert (await http.get("/jobs?site=shop", headers=admin)).json()[0]["kind"] == "backup"


async def test_sse_event_ids_past_a_bigint_are_422_before_the_stream(
    settings: Any, runtime: Runtime, world: dict[str, SiteEnv]
) -> None:
    async with api_client(settings, runtime.pool) as http:
        admin = await bearer(runtime.pool, "admin", sites=None, scopes=["admin"])
        [backup] = (await http.get("/sites/shop/envs/dev/backups", headers=admin)).json()
        events = f"/jobs/{backup['job_id']}/events"
        huge = "99999999999999999999"
        for params, headers in [({"after": huge}, admin), ({}, {**admin, "Last-Event-ID": huge})]:
            answer = await http.get(events, params=params, headers=headers)
            assert answer.status_code == 422, answer.text
            assert answer.json()["error"]["code"] == "bad_input"
        # the largest bigint is a valid id: the stream runs to its end (nothing after it)
        async with http.stream(
            "GET", events, params={"after": str(2**63 - 1)}, headers=admin
        ) as sse:
            assert sse.status_code == 200
            text = "".join([chunk async for chunk in sse.aiter_text()])
        assert text.endswith(
            f'event: end\ndata: {{"id":"{backup["job_id"]}","status":"succeeded"}}\n\n'
        )


async def test_idempotency_keys_belong_to_the_token_that_used_them(
    settings: Any, runtime: Runtime, world: dict[str, SiteEnv]
) -> None:
    async with api_client(settings, runtime.pool) as http:
        first = await bearer(runtime.pool, "first", sites=["shop"], scopes=["backup", "read"])
        second = await bearer(runtime.pool, "second", sites=["shop"], scopes=["backup", "read"])
        url = "/sites/shop/envs/dev/backups"
        made = await http.post(url, headers={**first, "Idempotency-Key": "nightly-1"}, json={})
        assert made.status_code == 202
        # another token, same key, another body: its own new job, not a 409 about first's
        other = await http.post(
            url, headers={**second, "Idempotency-Key": "nightly-1"}, json={"keep_days": 2}
        )
        assert other.status_code == 202, other.text
        assert other.json()["id"] != made.json()["id"]
        assert other.json()["requested_by"] == "token:second"
        # first's replay still gives first's job; first's own other body is still a 409
        again = await http.post(url, headers={**first, "Idempotency-Key": "nightly-1"}, json={})
        assert again.status_code == 200 and again.json()["id"] == made.json()["id"]
        clash = await http.post(
            url, headers={**first, "Idempotency-Key": "nightly-1"}, json={"keep_days": 2}
        )
        assert clash.status_code == 409


async def test_a_site_scoped_token_follows_its_own_backup_deletion(
    settings: Any, runtime: Runtime, world: dict[str, SiteEnv]
) -> None:
    async with api_client(settings, runtime.pool) as http:
        shop = await bearer(runtime.pool, "shop-ops", sites=["shop"], scopes=["backup", "read"])
        blog = await bearer(runtime.pool, "blog-ops", sites=["blog"], scopes=["admin"])
        [backup] = (await http.get("/sites/shop/envs/dev/backups", headers=shop)).json()
        deleted = await http.delete(f"/sites/shop/envs/dev/backups/{backup['id']}", headers=shop)
        assert deleted.status_code == 202, deleted.text
        location = deleted.headers["location"]
        polled = await http.get(location, headers=shop)
        assert polled.status_code == 200, polled.text
        assert polled.json()["kind"] == "delete_backup"
        listed = (await http.get("/jobs", headers=shop)).json()
        assert deleted.json()["id"] in [j["id"] for j in listed]
        # another site's token still sees nothing of it
        for method, path in [("GET", location), ("GET", f"{location}/events"),
                             ("POST", f"{location}/cancel")]:  # fmt: skip
            hidden = await http.request(method, path, headers=blog)
            assert hidden.status_code == 404, (method, path)
        assert deleted.json()["id"] not in [
            j["id"] for j in (await http.get("/jobs", headers=blog)).json()
        ]
        cancelled = await http.post(f"{location}/cancel", headers=shop)
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        async with http.stream("GET", f"{location}/events", headers=shop) as sse:
            assert sse.status_code == 200
            text = "".join([chunk async for chunk in sse.aiter_text()])
        assert '"status":"cancelled"' in text.rsplit("event: end", 1)[1]


async def test_metric_labels_are_bounded_methods_and_route_templates(
    settings: Any, runtime: Runtime, world: dict[str, SiteEnv]
) -> None:
    async with api_client(settings, runtime.pool) as http:
        admin = await bearer(runtime.pool, "admin", sites=None, scopes=["admin"])
        [backup] = (await http.get("/sites/shop/envs/dev/backups", headers=admin)).json()
        await http.request("BREWCOFFEE", "/sites", headers=admin)
        await http.get(f"/jobs/{backup['job_id']}", headers=admin)
        await http.get(f"/no/such/{uuid.uuid4()}", headers=admin)
        text = (await http.get("/metrics")).text
    lines = [line for line in text.splitlines() if line.startswith("envrestore_http")]
    assert lines
    assert not any("BREWCOFFEE" in line for line in lines)
    assert any('method="OTHER"' in line and 'route="/sites"' in line for line in lines)
    assert any('route="/jobs/{job_id}"' in line for line in lines)
    assert any('route="unmatched"' in line for line in lines)
    assert not any(backup["job_id"] in line or "/no/such" in line for line in lines)


async def test_job_list_hides_url_signatures_and_filters_by_site_before_the_limit(
    settings: Any, runtime: Runtime, world: dict[str, SiteEnv]
) -> None:
    async with api_client(settings, runtime.pool) as http:
        admin = await bearer(runtime.pool, "admin", sites=None, scopes=["admin"])
        shop = await bearer(runtime.pool, "shop-reader", sites=["shop"], scopes=["read", "import"])
        imported = await http.post(
            "/sites/shop/envs/dev/imports",
            headers=shop,
            json={"parts": [{"element": "files",
                             "url": "https://files.example.test/f.tar?X-Amz-Signature=abc"}]},
        )  # fmt: skip
        assert imported.status_code == 202, imported.text
        for _ in range(3):  # newer jobs of a site the token may not see
            queued = await http.post("/sites/blog/envs/dev/backups", headers=admin, json={})
            assert queued.status_code == 202
        listed = await http.get("/jobs", params={"limit": 2}, headers=shop)
        assert listed.status_code == 200
        jobs = listed.json()
        assert [j["kind"] for j in jobs] == ["import", "backup"]
        assert {j["site"] for j in jobs} == {"shop"}
        assert jobs[0]["params"]["parts"][0]["url"] == "https://files.example.test/f.tar"
        assert "X-Amz-Signature" not in listed.text


async def test_get_sites_needs_the_read_scope(
    settings: Any, runtime: Runtime, world: dict[str, SiteEnv]
) -> None:
    async with api_client(settings, runtime.pool) as http:
        backup_only = await bearer(runtime.pool, "backup-only", sites=["shop"], scopes=["backup"])
        reader = await bearer(runtime.pool, "reader", sites=["shop"], scopes=["read"])
        refused = await http.get("/sites", headers=backup_only)
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "forbidden"
        assert [s["name"] for s in (await http.get("/sites", headers=reader)).json()] == ["shop"]


async def test_only_the_token_that_started_an_upload_or_an_admin_completes_it(
    settings: Any, runtime: Runtime, world: dict[str, SiteEnv]
) -> None:
    settings = settings.model_copy(update={"api_upload_part_size_mb": 5})
    async with api_client(settings, runtime.pool) as http:
        starter = await bearer(runtime.pool, "starter", sites=["shop"], scopes=["import"])
        other = await bearer(runtime.pool, "other", sites=["shop"], scopes=["import"])
        admin = await bearer(runtime.pool, "shop-admin", sites=["shop"], scopes=["admin"])
        started = await http.post(
            "/sites/shop/envs/dev/uploads",
            headers=starter,
            json={"element": "files", "size": 10, "filename": "f.tar"},
        )
        assert started.status_code == 201, started.text
        complete = f"/sites/shop/envs/dev/uploads/{started.json()['id']}/complete"
        body = {"parts": [{"number": 1, "etag": "x"}], "sha256": "0" * 64}
        refused = await http.post(complete, headers=other, json=body)
        assert refused.status_code == 404, refused.text
        assert refused.json()["error"]["message"].endswith("does not exist")
        # the starter and an admin reach the upload itself (its part was never PUT)
        for headers in (starter, admin):
            reached = await http.post(complete, headers=headers, json=body)
            assert reached.status_code == 422, reached.text
            assert "part 1" in reached.json()["error"]["message"]

        # a big upload gets bigger parts: one request never signs more than 1000 URLs
        big = 5 * MIB * 2500
        answer = await http.post(
            "/sites/shop/envs/dev/uploads",
            headers=starter,
            json={"element": "files", "size": big, "filename": "big.tar"},
        )
        assert answer.status_code == 201, answer.text
        plan = answer.json()
        assert len(plan["parts"]) <= 1000
        assert plan["part_size"] >= 5 * MIB * 2.5
        assert sum(p["size"] for p in plan["parts"]) == big
        too_big = await http.post(
            "/sites/shop/envs/dev/uploads",
            headers=starter,
            json={"element": "files", "size": 5 * 1024**4, "filename": "huge.tar"},
        )
        assert too_big.status_code == 422
        assert "--file" in too_big.json()["error"]["message"]
