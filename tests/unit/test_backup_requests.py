"""Typed requests of a backup's life: `--element` backups and deletes, as stored and read back."""

from __future__ import annotations

import pytest

from envrestore.pipelines.backup.delete import DELETE_BACKUP, backup_prefix
from envrestore.pipelines.backup.job import BACKUP
from envrestore.pipelines.errors import BadInput
from envrestore.pipelines.requests import (
    BackupRequest,
    DeleteBackupRequest,
    parse_elements,
    to_params,
)


def test_a_backup_of_some_elements_plans_only_their_steps():
    request = BackupRequest("shop.dev", elements=parse_elements("code,database"))
    params = to_params(request)
    assert BackupRequest.from_params(params) == request
    assert request.elements == ("database", "code")  # always in the canonical order
    plan = BACKUP.plan_for(params)
    assert plan.names == ("dump_db", "archive_code", "record_backup", "discard_backup")
    record = next(s for s in plan.steps if s.name == "record_backup")
    assert record.depends_on == ("dump_db", "archive_code")


def test_backups_queued_before_elements_existed_back_up_everything():
    old = {"target": "shop.dev", "keep_days": 30, "backup_kind": "manual", "backup_id": "x"}
    assert BackupRequest.from_params(old).elements == ("database", "files", "code")
    assert BACKUP.plan_for(old).names == BACKUP.plan.names


@pytest.mark.parametrize("element", ["", "db", "database,everything"])
def test_unknown_elements_are_refused(element):
    with pytest.raises(BadInput, match="--element"):
        parse_elements(element)
    with pytest.raises(BadInput):
        BackupRequest("shop.dev", elements=(element,))


def test_a_delete_request_reads_back_and_refuses_ids_that_name_another_prefix():
    request = DeleteBackupRequest("shop.dev", "20261126T103300Z-1a2b3c", reason="expired")
    assert DeleteBackupRequest.from_params(to_params(request)) == request
    assert DELETE_BACKUP.plan_for(to_params(request)).names[0] == "mark_deleting"
    for bad in ("", "..", "a/b", "."):
        with pytest.raises(BadInput, match="not a backup id"):
            DeleteBackupRequest("shop.dev", bad)
        with pytest.raises(BadInput):
            backup_prefix("shop", "dev", bad)
    with pytest.raises(BadInput, match="delete reason"):
        DeleteBackupRequest("shop.dev", "x", reason="because")
    assert backup_prefix("shop", "dev", "x") == "backups/shop/dev/x/"
