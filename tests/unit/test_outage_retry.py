"""Riding out outages: the ledger retry, its backoff, the reconciler's grace, the Redis client."""

from __future__ import annotations

import itertools
import time

import asyncpg
import pytest
import redis

from envrestore.config.settings import load_settings
from envrestore.pipelines.errors import Unavailable
from envrestore.pipelines.jobs.ledger_retry import backoff_delays, is_connection_error, retry_ledger
from envrestore.pipelines.jobs.reconciler import LedgerContact
from envrestore.workers.broker import redis_client
from envrestore.workers.broker_watch import UPTIME_SLACK_SECONDS, RedisStart
from tests.support.outages import free_port


def test_backoff_doubles_up_to_the_cap():
    assert list(itertools.islice(backoff_delays(1.0, first=0.1), 7)) == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    )
    assert list(itertools.islice(backoff_delays(0.05, first=0.1), 3)) == [0.05] * 3


def test_connection_errors_are_told_from_refusals_of_the_data():
    assert is_connection_error(ConnectionRefusedError(111, "refused"))
    assert is_connection_error(asyncpg.exceptions.ConnectionDoesNotExistError("gone"))
    assert is_connection_error(asyncpg.exceptions.CannotConnectNowError("shutting down"))
    assert is_connection_error(Unavailable("cannot reach the ledger"))
    assert not is_connection_error(asyncpg.exceptions.CharacterNotInRepertoireError("bad"))
    assert not is_connection_error(asyncpg.exceptions.DataError("bad argument"))
    assert not is_connection_error(RuntimeError("a bug"))


class Flaky:
    """Fails with `error` the first `times` calls, then answers."""

    def __init__(self, times: int, error: Exception) -> None:
        self.times = times
        self.error = error
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.times:
            raise self.error
        return "recorded"


async def test_a_call_is_repeated_until_the_ledger_answers():
    call = Flaky(4, ConnectionRefusedError(111, "refused"))
    assert await retry_ledger(call, what="t", give_up_after=10, max_delay=0.02) == "recorded"
    assert call.calls == 5


async def test_other_errors_are_raised_at_once():
    call = Flaky(1, asyncpg.exceptions.CharacterNotInRepertoireError("bad"))
    with pytest.raises(asyncpg.exceptions.CharacterNotInRepertoireError):
        await retry_ledger(call, what="t", give_up_after=10, max_delay=0.02)
    assert call.calls == 1


async def test_it_gives_up_after_its_time_with_the_last_error():
    call = Flaky(10**6, ConnectionRefusedError(111, "refused"))
    with pytest.raises(ConnectionRefusedError):
        await retry_ledger(call, what="t", give_up_after=0.3, max_delay=0.05)
    assert 3 <= call.calls < 20


async def test_it_gives_up_when_told_to_stop():
    call = Flaky(10**6, ConnectionRefusedError(111, "refused"))
    with pytest.raises(ConnectionRefusedError):
        await retry_ledger(
            call, what="t", give_up_after=60, max_delay=0.01, stop=lambda: call.calls >= 3
        )
    assert call.calls == 3


def test_the_reconciler_waits_a_stale_time_after_the_ledger_returns():
    now = [100.0]
    contact = LedgerContact(10.0, clock=lambda: now[0])
    assert not contact.may_expire  # a process that just started may have just seen it return
    now[0] += 10.0
    contact.reached()
    assert contact.may_expire
    contact.lost()
    assert not contact.may_expire
    now[0] += 30.0  # however long the outage lasted
    contact.reached()
    assert not contact.may_expire
    now[0] += 9.9
    contact.reached()
    assert not contact.may_expire
    now[0] += 0.2
    assert contact.may_expire


def test_redis_calls_time_out_and_fail_fast_while_redis_is_away():
    port = free_port()  # nobody listens there
    settings = load_settings(
        redis_url=f"redis://127.0.0.1:{port}/0",
        redis_socket_timeout=4,
        reconnect_max_delay_seconds=0.5,
    )
    client = redis_client(settings)
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 4
    assert kwargs["socket_connect_timeout"] == 4
    assert kwargs["retry"].get_retries() >= 1  # a connection Redis dropped is made again
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError):
        client.ping()
    # Each retry's pause is capped: the call fails in about a second, not in 14 s
    # (redis-py's own default backoff), so Dramatiq and the relay try again soon.
    assert time.monotonic() - started < 3


def test_after_a_redis_restart_the_cut_off_errs_towards_sending_again():
    # Redis may say a second more than it has run: the cut-off is later, never earlier.
    assert RedisStart("a", 10.0).lost_if_sent_before == pytest.approx(10.0 - UPTIME_SLACK_SECONDS)
    assert RedisStart("a", 10.0).lost_if_sent_before <= 9.0
    assert RedisStart("b", 0.0).lost_if_sent_before == 0.0
