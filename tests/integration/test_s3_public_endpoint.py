"""ENVRESTORE_S3_PUBLIC_ENDPOINT_URL: presigned URLs name the host clients reach.

In compose and Kubernetes the workers and the API reach the object store on
an internal name (http://seaweedfs:8333) that a browser or a dashboard
backend cannot resolve. The host is part of an S3v4 signature, so URLs must
be signed for the public name, while every other call still goes to the
internal one; and a link we issued on the public host is still ours.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlsplit

import pytest

from envrestore.config.settings import Settings
from envrestore.pipelines.backup.service import list_backups
from envrestore.pipelines.jobs.principal import Principal
from envrestore.pipelines.jobs.runtime import Runtime
from envrestore.pipelines.objectstore import open_object_store
from envrestore.pipelines.sources.links import check_link, issue_links, own_store_key
from tests.support.driver import drive
from tests.support.environments import add_env
from tests.support.producing import submit_backup

pytestmark = pytest.mark.integration

PUBLIC = "https://files.example.test:9443"


def _public(settings: Settings) -> Settings:
    return settings.model_copy(update={"s3_public_endpoint_url": PUBLIC})


async def test_presigned_urls_name_the_public_host_while_calls_go_to_the_endpoint(
    settings: Settings,
) -> None:
    public = _public(settings)
    key = f"tests/{uuid.uuid4()}/object"
    async with open_object_store(public) as store:
        await store.put_bytes(key, b"hello")  # the internal endpoint answers
        assert (await store.head(key)) is not None
        get_url = await store.presign_get(key, 60)
        upload = await store.client.create_multipart_upload(Bucket=store.bucket, Key=key + ".up")
        part_url = await store.presign(
            "upload_part",
            {"Bucket": store.bucket, "Key": key + ".up", "UploadId": upload["UploadId"],
             "PartNumber": 1},
            60,
        )  # fmt: skip
        await store.abort_upload(key + ".up", upload["UploadId"])
        await store.delete(key)
    for url in (get_url, part_url):
        assert url.startswith(f"{PUBLIC}/{settings.s3_bucket}/"), url
        assert "X-Amz-Signature=" in url
    # without the setting, URLs name the endpoint itself
    async with open_object_store(settings) as store:
        plain = await store.presign_get(key, 60)
    assert settings.s3_endpoint_url is not None
    assert urlsplit(plain).netloc == urlsplit(settings.s3_endpoint_url).netloc


def test_a_url_into_our_bucket_is_ours_on_either_endpoint_and_no_other(
    settings: Settings,
) -> None:
    public = _public(settings)
    bucket = settings.s3_bucket
    assert own_store_key(f"{PUBLIC}/{bucket}/backups/a%20b?X=1", public) == "backups/a b"
    assert own_store_key(f"{settings.s3_endpoint_url}/{bucket}/backups/x", public) == "backups/x"
    assert own_store_key(f"{PUBLIC}/other/backups/x", public) is None
    assert own_store_key(f"https://elsewhere.test:9443/{bucket}/backups/x", public) is None
    # without the setting the public host is just another host
    assert own_store_key(f"{PUBLIC}/{bucket}/backups/x", settings) is None


async def test_a_link_issued_on_the_public_host_is_recognised_as_ours(
    settings: Settings, runtime: Runtime, tmp_path: Any, make_postgres_db: Any
) -> None:
    await add_env(runtime, tmp_path / "envs", "shop.dev", make_postgres_db)
    job = await submit_backup(runtime, "shop.dev")
    assert (await drive(runtime, job.job_id))["status"] == "succeeded"
    [backup] = await list_backups(runtime.pool, "shop.dev")
    public = _public(settings)
    async with open_object_store(public) as store:
        [link] = await issue_links(
            runtime.pool, store, backup, ("database",), ttl=60, principal=Principal.operator()
        )
    assert link.url.startswith(f"{PUBLIC}/"), link.url
    key = own_store_key(link.url, public)
    assert key is not None
    row = await check_link(runtime.pool, link.url, key)
    assert row["key"] == key
    # the same link with its path changed is not one we issued
    with pytest.raises(Exception, match="not one envrestore issued"):
        await check_link(
            runtime.pool, link.url.replace("X-Amz-Signature=", "X-Amz-Signature=0"), key
        )


async def test_a_part_linked_twice_in_one_second_is_one_link(
    runtime: Runtime, tmp_path: Any, make_postgres_db: Any
) -> None:
    """A presigned URL is a function of the key, the TTL and the second it is made:
    two clicks on "link" within a second get the same URL, not a ledger error."""
    await add_env(runtime, tmp_path / "envs", "shop.dev", make_postgres_db)
    job = await submit_backup(runtime, "shop.dev")
    assert (await drive(runtime, job.job_id))["status"] == "succeeded"
    [backup] = await list_backups(runtime.pool, "shop.dev")
    async with open_object_store(runtime.settings) as store:
        for _ in range(5):  # a second may tick between the two; five tries make it rare
            first, second = await issue_links(
                runtime.pool,
                store,
                backup,
                ("database", "database"),
                ttl=60,
                principal=Principal.operator(),
            )
            if first.url == second.url:
                break
        assert first.url == second.url
        key = own_store_key(second.url, runtime.settings)
        assert key is not None
        assert (await check_link(runtime.pool, second.url, key))["key"] == key
