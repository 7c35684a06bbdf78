"""Typed requests: what is stored is what steps read back, and bad requests never become jobs."""

from __future__ import annotations

import json

import pytest

from envrestore.pipelines.errors import BadInput
from envrestore.pipelines.jobs.principal import Principal
from envrestore.pipelines.requests import (
    BackupRequest,
    CloneRequest,
    ImportRequest,
    PartInput,
    RestoreRequest,
    RollbackRequest,
    parse_elements,
    parse_pairs,
    to_params,
)

UPLOAD = PartInput("files", upload_key="staging/uploads/ab/files.zip", size=3, sha256="0" * 64)

ROUND_TRIPS = [
    RestoreRequest(
        "shop.test",
        backup="20261201T000000Z-abcdef",
        source="blog.dev",
        elements=("code", "database"),
        code_strategy="merge",
        replace_pairs=(("Old", "New"),),
    ),
    ImportRequest(
        "shop.dev",
        (UPLOAD, PartInput("database", url="https://example.com/d.sql.gz?X-Amz-Signature=1")),
        search_replace=False,
    ),
    CloneRequest("shop.dev", "shop.live", elements=("files",), keep_snapshot=True),
    BackupRequest("shop.dev", keep_days=3),
    RollbackRequest("0b7e2c5e-93a4-4c47-9a8e-4a1f7d5f0a11"),
]


@pytest.mark.parametrize("request_", ROUND_TRIPS, ids=lambda r: type(r).__name__)
def test_stored_parameters_read_back_as_the_same_request(request_):
    stored = json.loads(json.dumps(to_params(request_)))  # what the ledger's jsonb gives back
    assert type(request_).from_params(stored) == request_


def test_parts_are_kept_in_element_order_and_once_each():
    request = ImportRequest("shop.dev", (UPLOAD, PartInput("database", url="https://x/d")))
    assert request.elements == ("database", "files")
    with pytest.raises(BadInput, match="once"):
        ImportRequest("shop.dev", (UPLOAD, UPLOAD))
    with pytest.raises(BadInput, match="at least one part"):
        ImportRequest("shop.dev", ())


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"element": "files"}, "exactly one"),
        ({"element": "files", "url": "https://x", "upload_key": "staging/uploads/a/b"}, "exactly"),
        ({"element": "files", "upload_key": "staging/uploads/a/b"}, "size and sha256"),
        # An upload key must stay in the uploads area: never another site's backup.
        (
            {"element": "files", "upload_key": "backups/blog/dev/x/f.tar.gz", "size": 1,
             "sha256": "0" * 64},
            "staging/uploads/",
        ),
        (
            {"element": "files", "upload_key": "staging/uploads/../../backups/x", "size": 1,
             "sha256": "0" * 64},
            "staging/uploads/",
        ),
        ({"element": "theme", "url": "https://x"}, "database, files or code"),
    ],
)  # fmt: skip
def test_bad_parts_are_refused(fields, reason):
    with pytest.raises(BadInput, match=reason):
        PartInput(**fields)


def test_jobs_queued_before_typed_requests_still_read():
    old = {"backup_id": "20261101T000000Z-aaaaaa", "elements": ["database"], "in_place": True}
    request = RestoreRequest.from_params(old)
    assert (request.backup, request.elements, request.in_place) == (
        "20261101T000000Z-aaaaaa",
        ("database",),
        True,
    )
    backup = BackupRequest.from_params({"kind": "automatic", "keep_days": 7, "backup_id": "b"})
    assert (backup.backup_kind, backup.keep_days, backup.backup_id) == ("automatic", 7, "b")


def test_options_are_checked_when_the_request_is_made():
    assert parse_elements("files,database") == ("database", "files")
    with pytest.raises(BadInput, match="--element"):
        parse_elements("files,themes")
    with pytest.raises(BadInput, match="--code-strategy"):
        RestoreRequest("shop.dev", code_strategy="rebase")
    with pytest.raises(BadInput, match="OLD=NEW"):
        parse_pairs(["no-equals-sign"])
    with pytest.raises(BadInput, match="OLD=NEW"):
        parse_pairs(["=empty-old"])
    assert parse_pairs(["a=b=c"]) == (("a", "b=c"),)
    with pytest.raises(BadInput, match="copies the database and files"):
        CloneRequest("shop.dev", "shop.live", elements=("database", "code"))
    with pytest.raises(BadInput, match="not a job id"):
        RollbackRequest("nope")


def test_the_principal_is_a_safe_name():
    assert str(Principal.operator("alice")) == "operator:alice"
    assert str(Principal.operator("bad name\n")) == "operator:bad_name_"
    with pytest.raises(BadInput):
        Principal("token", "has space")
