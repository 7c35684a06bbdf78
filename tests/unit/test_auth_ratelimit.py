"""Failed-auth limiting: the window, forgiveness on success, bounded memory."""

from __future__ import annotations

import threading

import pytest

from envrestore.config.settings import Settings
from envrestore.pipelines.auth.ratelimit import FailedAuthLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_a_client_is_blocked_after_max_failures_until_the_oldest_leaves_the_window(clock):
    limiter = FailedAuthLimiter(max_failures=3, window_seconds=60, clock=clock)
    for _ in range(2):
        limiter.failed("10.0.0.1")
        clock.now += 10
    assert limiter.blocked("10.0.0.1") is None  # two failures: may still try
    limiter.failed("10.0.0.1")  # third, at t+20
    wait = limiter.blocked("10.0.0.1")
    assert wait == pytest.approx(40)  # the first failure (t+0) leaves at t+60
    clock.now += 39.5
    assert limiter.blocked("10.0.0.1") == pytest.approx(0.5)
    clock.now += 1
    assert limiter.blocked("10.0.0.1") is None  # sliding: two failures left in the window
    limiter.failed("10.0.0.1")
    assert limiter.blocked("10.0.0.1") == pytest.approx(9.5)  # now t+10 is the oldest


def test_clients_are_counted_apart(clock):
    limiter = FailedAuthLimiter(max_failures=2, window_seconds=60, clock=clock)
    limiter.failed("a")
    limiter.failed("a")
    assert limiter.blocked("a") is not None
    assert limiter.blocked("b") is None


def test_a_success_does_not_reset_the_window_failures_age_out(clock):
    # A guesser holding one valid token must not reset its count by interleaving it.
    limiter = FailedAuthLimiter(max_failures=2, window_seconds=60, clock=clock)
    limiter.failed("a")
    limiter.succeeded("a")
    clock.now += 10
    limiter.failed("a")
    limiter.succeeded("a")
    assert limiter.blocked("a") == pytest.approx(50)
    clock.now += 50.5
    assert limiter.blocked("a") is None  # the first failure left the window


def test_failures_older_than_the_window_are_forgotten_with_the_client(clock):
    limiter = FailedAuthLimiter(max_failures=2, window_seconds=60, clock=clock)
    limiter.failed("a")
    clock.now += 61
    assert limiter.blocked("a") is None
    assert len(limiter) == 0


def test_memory_is_bounded_the_longest_quiet_client_is_evicted(clock):
    limiter = FailedAuthLimiter(max_failures=2, window_seconds=60, max_clients=3, clock=clock)
    for client in ("a", "b", "c"):
        limiter.failed(client)
        limiter.failed(client)
        clock.now += 1
    limiter.failed("a")  # a is now the most recent
    limiter.failed("d")
    assert len(limiter) == 3
    assert limiter.blocked("b") is None  # b was the longest quiet: evicted
    assert limiter.blocked("a") is not None
    assert limiter.blocked("c") is not None


def test_a_client_keeps_at_most_max_failures_timestamps(clock):
    limiter = FailedAuthLimiter(max_failures=3, window_seconds=60, clock=clock)
    for _ in range(1000):
        limiter.failed("a")
    assert len(limiter._failures["a"]) == 3


def test_threads_do_not_lose_failures():
    limiter = FailedAuthLimiter(max_failures=100_000, window_seconds=600, max_clients=50)

    def hammer() -> None:
        for index in range(2000):
            limiter.failed(f"c{index % 40}")
            limiter.blocked(f"c{index % 40}")

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(limiter) == 40
    assert sum(len(times) for times in limiter._failures.values()) == 8000


def test_the_settings_describe_the_limiter(monkeypatch):
    monkeypatch.setenv("ENVRESTORE_API_AUTH_FAILURES_PER_MINUTE", "4")
    monkeypatch.setenv("ENVRESTORE_API_AUTH_MAX_CLIENTS", "7")
    limiter = FailedAuthLimiter.from_settings(Settings())
    assert (limiter.max_failures, limiter.window_seconds, limiter.max_clients) == (4, 60.0, 7)


def test_nonsense_limits_are_refused():
    with pytest.raises(ValueError, match="positive"):
        FailedAuthLimiter(max_failures=0)
