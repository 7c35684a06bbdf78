"""Uploads straight to SeaweedFS through presigned part URLs, then their import (real services).

The client PUTs each part to the URL the API gave (the API process never
sees a byte), completes with the ETags SeaweedFS answered, and the import
job run by the in-process driver replaces the environment's files with the
archive's: every file's sha256 is compared.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from envrestore.pipelines.jobs.runtime import Runtime
from tests.support.api import api_client, bearer
from tests.support.driver import drive
from tests.support.environments import add_env
from tests.support.sites import tree_digest

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


@pytest.fixture
def settings(settings: Any) -> Any:
    return settings.model_copy(update={"api_upload_part_size_mb": 16})


def _archive(root: Path) -> tuple[Path, Path]:
    """A 100 MiB incompressible file and a small one, in a .tar; returns (tar, content dir)."""
    content = root / "content"
    content.mkdir(parents=True)
    with (content / "big.bin").open("wb") as fh:
        for _ in range(100):
            fh.write(os.urandom(MIB))
    (content / "readme.txt").write_text("uploaded through presigned parts\n")
    tar = root / "files.tar"
    with tarfile.open(tar, "w") as archive:
        for name in ("big.bin", "readme.txt"):
            archive.add(content / name, arcname=name)
    return tar, content


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


async def _put_parts(tar: Path, parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    etags = []
    async with httpx.AsyncClient(timeout=120) as s3:
        with tar.open("rb") as fh:
            for part in parts:
                assert urlsplit(part["url"]).hostname == "127.0.0.1"
                fh.seek(part["start"])
                answer = await s3.put(part["url"], content=fh.read(part["size"]))
                assert answer.status_code == 200, answer.text
                etags.append({"number": part["number"], "etag": answer.headers["etag"]})
    return etags


async def test_a_100_mb_upload_through_presigned_parts_is_imported(
    settings: Any, runtime: Runtime, tmp_path: Path, make_postgres_db: Any
) -> None:
    env = await add_env(runtime, tmp_path / "envs", "shop.dev", make_postgres_db)
    tar, content = _archive(tmp_path / "upload")
    size = tar.stat().st_size
    async with api_client(settings, runtime.pool) as http:
        shop = await bearer(runtime.pool, "uploader", sites=["shop"], scopes=["import", "read"])
        started = await http.post(
            "/sites/shop/envs/dev/uploads",
            headers=shop,
            json={"element": "files", "size": size, "filename": "files.tar"},
        )
        assert started.status_code == 201, started.text
        upload = started.json()
        assert upload["part_size"] == 16 * MIB
        assert len(upload["parts"]) == -(-size // (16 * MIB)) == 7
        assert sum(p["size"] for p in upload["parts"]) == size

        # completing before the parts are there is refused; nothing is queued
        early = await http.post(
            f"/sites/shop/envs/dev/uploads/{upload['id']}/complete",
            headers=shop,
            json={"parts": [{"number": n, "etag": "x"} for n in range(1, 8)],
                  "sha256": _sha256(tar)},
        )  # fmt: skip
        assert early.status_code == 422 and early.json()["error"]["code"] == "bad_input"

        etags = await _put_parts(tar, upload["parts"])
        wrong = [dict(e) for e in etags]
        wrong[3]["etag"] = '"0123456789abcdef0123456789abcdef"'
        refused = await http.post(
            f"/sites/shop/envs/dev/uploads/{upload['id']}/complete",
            headers=shop,
            json={"parts": wrong, "sha256": _sha256(tar)},
        )
        assert refused.status_code == 422, refused.text
        # another environment of the same site does not find it
        elsewhere = await http.post(
            f"/sites/shop/envs/test/uploads/{upload['id']}/complete",
            headers=shop,
            json={"parts": etags, "sha256": _sha256(tar)},
        )
        assert elsewhere.status_code == 404

        body = {"parts": etags, "sha256": _sha256(tar)}
        done = await http.post(
            f"/sites/shop/envs/dev/uploads/{upload['id']}/complete", headers=shop, json=body
        )
        assert done.status_code == 202, done.text
        assert done.headers["location"] == f"/jobs/{done.json()['id']}"
        assert done.json()["kind"] == "import"
        assert done.json()["requested_by"] == "token:uploader"
        # a retried complete gets the same job
        again = await http.post(
            f"/sites/shop/envs/dev/uploads/{upload['id']}/complete", headers=shop, json=body
        )
        assert again.status_code == 200 and again.json()["id"] == done.json()["id"]

        view = await drive(runtime, uuid.UUID(done.json()["id"]), timeout=300)
        assert view["status"] == "succeeded", view
        assert tree_digest(env.files) == tree_digest(content)
        polled = await http.get(done.headers["location"], headers=shop)
        assert polled.json()["status"] == "succeeded"


async def test_a_wrong_sha256_fails_the_import_and_leaves_the_files(
    settings: Any, runtime: Runtime, tmp_path: Path, make_postgres_db: Any
) -> None:
    env = await add_env(runtime, tmp_path / "envs", "shop.dev", make_postgres_db)
    before = tree_digest(env.files)
    tar = tmp_path / "small.tar"
    with tarfile.open(tar, "w") as archive:
        (tmp_path / "x.txt").write_text("x\n")
        archive.add(tmp_path / "x.txt", arcname="x.txt")
    async with api_client(settings, runtime.pool) as http:
        shop = await bearer(runtime.pool, "uploader", sites=["shop"], scopes=["import"])
        upload = (
            await http.post(
                "/sites/shop/envs/dev/uploads",
                headers=shop,
                json={"element": "files", "size": tar.stat().st_size, "filename": "../../x.tar"},
            )
        ).json()
        [part] = upload["parts"]
        etags = await _put_parts(tar, [part])
        done = await http.post(
            f"/sites/shop/envs/dev/uploads/{upload['id']}/complete",
            headers=shop,
            json={"parts": etags, "sha256": "ab" * 32},
        )
        assert done.status_code == 202
        view = await drive(runtime, uuid.UUID(done.json()["id"]))
        assert view["status"] == "failed"
        assert tree_digest(env.files) == before
    key = await runtime.pool.fetchval("SELECT key FROM api_uploads")
    assert key.startswith("staging/uploads/") and ".." not in key
