"""Progress of a running step: bytes done and total, flushed by the heartbeat."""

from __future__ import annotations


class Progress:
    """Counters a step updates as data flows; the heartbeat writes them to the ledger.

    `done` is never reported above `total`: a total that is an estimate (a
    tree's size before tar adds its headers) and falls short reads as no
    total, rather than a bar past its end.
    """

    def __init__(self, done: int = 0, total: int | None = None) -> None:
        self.done = done
        self._total = total

    @property
    def total(self) -> int | None:
        if self._total is not None and self.done > self._total:
            return None
        return self._total

    @total.setter
    def total(self, value: int | None) -> None:
        self._total = value

    def __repr__(self) -> str:
        return f"Progress(done={self.done}, total={self._total})"

    def advance(self, nbytes: int) -> None:
        self.done += nbytes

    def set(self, done: int, total: int | None = None) -> None:
        self.done = done
        if total is not None:
            self._total = total

    def add_total(self, nbytes: int) -> None:
        self._total = (self._total or 0) + nbytes
