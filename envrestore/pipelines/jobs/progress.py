"""Progress of a running step: bytes done and total, flushed by the heartbeat."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Progress:
    """Counters a step updates as data flows; the heartbeat writes them to the ledger."""

    done: int = 0
    total: int | None = None

    def advance(self, nbytes: int) -> None:
        self.done += nbytes

    def set(self, done: int, total: int | None = None) -> None:
        self.done = done
        if total is not None:
            self.total = total

    def add_total(self, nbytes: int) -> None:
        self.total = (self.total or 0) + nbytes
