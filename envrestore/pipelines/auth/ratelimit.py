"""Failed-auth limiting per client, in the API process: guessing tokens stays slow.

A sliding window: a client (the API passes its address) that failed
`max_failures` times within `window_seconds` is refused until the oldest of
those failures leaves the window. Only failures count, so a client that
authenticates well is never slowed. A success does not forget failures: they
age out of the window, so a guesser holding one valid token cannot reset its
count by interleaving good requests.

Memory is bounded twice: a client keeps at most `max_failures` timestamps,
and at most `max_clients` clients are remembered (the one whose last failure
is oldest is forgotten first). The state is per process: with several API
processes each counts on its own, which bounds a guesser to
processes * max_failures a window, still far too few for a 256-bit secret.
A lock makes it safe from threads; nothing in it awaits, so it is safe on an
event loop too.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

import structlog

from envrestore.config.settings import Settings

log = structlog.get_logger(__name__)


class FailedAuthLimiter:
    """Counts failed authentications per client in a sliding window."""

    def __init__(
        self,
        *,
        max_failures: int = 10,
        window_seconds: float = 60.0,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_failures < 1 or window_seconds <= 0 or max_clients < 1:
            raise ValueError("max_failures, window_seconds and max_clients must be positive")
        self.max_failures = max_failures
        self.window_seconds = window_seconds
        self.max_clients = max_clients
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> FailedAuthLimiter:
        """The limiter ENVRESTORE_API_AUTH_FAILURES_PER_MINUTE and _MAX_CLIENTS describe."""
        return cls(
            max_failures=settings.api_auth_failures_per_minute,
            window_seconds=60.0,
            max_clients=settings.api_auth_max_clients,
        )

    def _recent(self, client: str, now: float) -> deque[float] | None:
        """The client's failures still in the window (forgets the client if none)."""
        times = self._failures.get(client)
        if times is None:
            return None
        horizon = now - self.window_seconds
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._failures[client]
            return None
        return times

    def blocked(self, client: str) -> float | None:
        """Seconds the client must wait before trying again, or None if it may try now."""
        with self._lock:
            now = self._clock()
            times = self._recent(client, now)
            if times is None or len(times) < self.max_failures:
                return None
            return max(times[0] + self.window_seconds - now, 0.001)

    def failed(self, client: str) -> None:
        """Record a failed authentication by `client`."""
        with self._lock:
            now = self._clock()
            times = self._recent(client, now)
            if times is None:
                times = deque(maxlen=self.max_failures)
                self._failures[client] = times
            times.append(now)
            self._failures.move_to_end(client)
            while len(self._failures) > self.max_clients:
                evicted, _ = self._failures.popitem(last=False)
                log.debug("auth.limiter_evicted", client=evicted)
            if len(times) >= self.max_failures:
                log.warning("auth.client_blocked", client=client, failures=len(times))

    def succeeded(self, client: str) -> None:
        """A good token from `client`: nothing changes (failures leave only with time)."""

    def __len__(self) -> int:
        """How many clients are remembered (for tests and metrics)."""
        with self._lock:
            return len(self._failures)
