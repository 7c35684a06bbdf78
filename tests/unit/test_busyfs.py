"""Rollback-point deletes wait for extractions on the same filesystem; extractions never wait."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from envrestore.pipelines.errors import TransientError
from envrestore.pipelines.restore import busyfs


async def test_a_delete_waits_until_the_extraction_on_its_filesystem_ends(tmp_path: Path) -> None:
    state, tree = tmp_path / "state", tmp_path / "rollback"
    tree.mkdir()
    order: list[str] = []

    async def delete() -> None:
        async with busyfs.no_extraction(state, tree, poll=0.01):
            order.append("delete")

    with busyfs.extracting(state, tmp_path / "staging-not-made-yet"):
        assert busyfs.extraction_running(state, tree)
        task = asyncio.create_task(delete())
        await asyncio.sleep(0.2)
        assert order == []  # held back while the extraction runs
        order.append("extraction over")
    await asyncio.wait_for(task, 5)
    assert order == ["extraction over", "delete"]
    assert not busyfs.extraction_running(state, tree)


async def test_an_extraction_starts_at_once_even_while_a_delete_runs(tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with busyfs.no_extraction(state, tmp_path, poll=0.01):
        with busyfs.extracting(state, tmp_path / "dest"):  # does not block
            pass
        assert busyfs.extraction_running(state, tmp_path)  # the delete holds the lock


async def test_two_extractions_run_side_by_side(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with busyfs.extracting(state, tmp_path / "a"), busyfs.extracting(state, tmp_path / "b"):
        assert busyfs.extraction_running(state, tmp_path)
    assert not busyfs.extraction_running(state, tmp_path)


async def test_a_delete_kept_waiting_too_long_is_retried_later(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with busyfs.extracting(state, tmp_path), pytest.raises(TransientError, match="deferred"):
        async with busyfs.no_extraction(state, tmp_path, poll=0.01, max_wait=0.05):
            pytest.fail("deleted beside an extraction")


def test_another_filesystem_has_its_own_lock(tmp_path: Path) -> None:
    other = Path("/dev/shm")
    if not other.is_dir() or other.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second filesystem here")
    state = tmp_path / "state"
    assert busyfs.lock_path(state, other) != busyfs.lock_path(state, tmp_path)
    with busyfs.extracting(state, tmp_path):
        assert not busyfs.extraction_running(state, other)
