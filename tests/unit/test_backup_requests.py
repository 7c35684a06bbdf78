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


@pytest.mark.parametrize("keep", [0, 36501, 4_000_000])
async def test_a_retention_out_of_range_is_refused_before_any_job(keep):
    from envrestore.config.settings import Settings
    from envrestore.pipelines.backup.service import prepare_backup

    # No ledger nor store is reached: the refusal comes first.
    with pytest.raises(BadInput, match=f"--keep-for must be 1 to 36500 days .*not {keep}"):
        await prepare_backup(None, Settings(), None, BackupRequest("shop.dev", keep_days=keep))


def test_a_default_retention_out_of_range_is_a_settings_error():
    from pydantic import ValidationError

    from envrestore.config.settings import Settings

    assert Settings(backup_keep_days=36500).backup_keep_days == 36500
    with pytest.raises(ValidationError, match="backup_keep_days"):
        Settings(backup_keep_days=4_000_000)
