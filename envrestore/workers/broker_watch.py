"""Noticing that Redis restarted, so the messages it lost are sent again at once.

Redis without persistence (or with a snapshot older than its crash) comes back
without the messages that waited in it. Their steps stay pending and "sent",
and the reconciler re-sends such a step only after a minute, in case it is
merely waiting its turn in a long queue. A restart is recognised by the
server's `run_id`; every step sent before the server's start (its uptime,
measured by Redis itself, so no clocks are compared) is marked unsent, and the
reconciler sends it at its next pass. A message that did survive is then
delivered twice, which the step protocol absorbs.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

#: Redis counts its uptime in whole seconds of a clock it caches, so it can say up
#: to a second more than it has run. The cut-off is taken this much later than the
#: uptime says: a message sent shortly after the restart is sent again too (twice
#: is harmless, lost is not).
UPTIME_SLACK_SECONDS = 1.5


@dataclass(frozen=True)
class RedisStart:
    """One life of the Redis server: its id and how long it has been up."""

    run_id: str
    uptime_seconds: float

    @property
    def lost_if_sent_before(self) -> float:
        """Seconds ago: a message sent earlier than this may have been lost."""
        return max(self.uptime_seconds - UPTIME_SLACK_SECONDS, 0.0)


class BrokerRestarts:
    """Remembers the Redis server's run id this process has accounted for."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._seen: str | None = None

    def new_start(self) -> RedisStart | None:
        """The server's start if this process has not accounted for it yet (blocking:
        call it in a thread). The first call of a process always returns one."""
        info = self._client.info("server")
        start = RedisStart(str(info["run_id"]), float(info["uptime_in_seconds"]))
        return None if start.run_id == self._seen else start

    def accounted(self, start: RedisStart) -> None:
        """Its lost messages were marked unsent."""
        self._seen = start.run_id
