"""The scheduler's leader lease: one row in the ledger, held until it is not renewed.

Times are the ledger's (`now()` in PostgreSQL), never a scheduler's own clock:
two hosts with skewed clocks still agree on who leads. A leader renews the
lease every tick; one that crashes stops renewing, and the first follower to
tick after `expires_at` takes it. A leader that stops cleanly deletes the row,
so a follower takes over at its next tick.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from envrestore.pipelines.ledger.queries import sql


def new_holder_id() -> str:
    """host-pid-random: unique per process, readable in `schedule show` and logs."""
    host = "".join(c if c.isalnum() or c in "-." else "-" for c in socket.gethostname())[:40]
    return f"{host or 'host'}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class LeaseState:
    """Who holds the lease and until when (`live`: not expired yet)."""

    holder: str
    acquired_at: datetime
    expires_at: datetime
    live: bool


@dataclass
class LeaderLease:
    """This process's hold on the scheduler lease."""

    pool: asyncpg.Pool
    holder: str
    ttl_seconds: float

    async def take(self) -> bool:
        """Take or renew the lease; True while this process leads."""
        row = await self.pool.fetchrow(sql("scheduler_take_lease"), self.holder, self.ttl_seconds)
        return row is not None

    async def release(self) -> None:
        """Give the lease up at once (a clean stop), so a follower need not wait out the TTL."""
        await self.pool.execute(sql("scheduler_release_lease"), self.holder)


async def current_lease(pool: asyncpg.Pool | asyncpg.Connection) -> LeaseState | None:
    row = await pool.fetchrow(sql("scheduler_lease"))
    if row is None:
        return None
    return LeaseState(row["holder"], row["acquired_at"], row["expires_at"], bool(row["live"]))
