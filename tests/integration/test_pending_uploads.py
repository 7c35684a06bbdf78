"""Listing and aborting unfinished multipart uploads, against the real SeaweedFS S3 gateway.

No `list` shows them, yet their parts take storage: the orphan sweep finds
them only through `list_pending_uploads`, which must see every page and say
when each began.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from envrestore.pipelines.objectstore.s3 import S3ObjectStore

pytestmark = pytest.mark.integration


async def test_every_unfinished_upload_is_listed_across_pages_and_aborted(
    object_store: S3ObjectStore,
):
    before = datetime.now(UTC) - timedelta(minutes=1)
    keys = ["backups/a/b/id1/x.sql.gz", "backups/a/b/id1/x.sql.gz", "backups/a/b/id2/y", "zz/z"]
    started = {(key, await object_store._create_multipart(key, None)) for key in keys}
    await object_store._upload_part(
        keys[0], next(u for k, u in started if k == keys[0]), 1, b"x" * 1024
    )

    listed = [u async for u in object_store.list_pending_uploads("backups/", page_size=1)]

    assert {(u.key, u.upload_id) for u in listed} == {p for p in started if p[0] != "zz/z"}
    assert len(listed) == 3  # no page repeated or skipped
    for upload in listed:
        assert upload.initiated is not None
        assert before < upload.initiated < datetime.now(UTC) + timedelta(minutes=1)
    assert await object_store.list_pending_uploads("backups/", page_size=1).__anext__()
    assert [k async for k in object_store.list("backups/")] == []  # invisible to list

    for upload in listed:
        await object_store.abort_upload(upload.key, upload.upload_id)
    await object_store.abort_upload(listed[0].key, listed[0].upload_id)  # twice is fine

    assert [u async for u in object_store.list_pending_uploads("backups/")] == []
    assert [u.key async for u in object_store.list_pending_uploads("")] == ["zz/z"]


async def test_aborting_a_stale_upload_keeps_the_finished_object_of_the_same_key(
    object_store: S3ObjectStore,
):
    # A backup step killed mid-upload, then retried to completion: same key, two uploads.
    key = "backups/a/b/id1/shop_files.tar.gz"
    stale = await object_store._create_multipart(key, None)
    await object_store._upload_part(key, stale, 1, b"first attempt")
    await object_store.put_bytes(key, b"the finished part")

    await object_store.abort_upload(key, stale)

    assert await object_store.get_bytes(key, max_size=1024) == b"the finished part"
    assert [u async for u in object_store.list_pending_uploads("backups/")] == []
