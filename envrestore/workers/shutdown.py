"""A worker process stops within `ENVRESTORE_SHUTDOWN_GRACE_SECONDS` of SIGTERM, however sent.

Dramatiq's worker process treats a *second* SIGTERM as "kill": it raises
SystemExit in the main thread, and multiprocessing then joins every
non-daemon thread, the AsyncIO event loop thread among them, which never
stops: the process hangs until SIGKILL. A SIGTERM to the process group
always arrives twice (once from the sender, once forwarded by Dramatiq's
main process), so this guard passes only the first one on, and ends the
process itself if the graceful stop outlives the grace.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import structlog

log = structlog.get_logger(__name__)

#: Dramatiq's exit code for a killed worker process.
EXIT_KILLED = 1

#: Shares of the grace: handing running steps back (LedgerLoops), Dramatiq's joins of
#: its threads (`--worker-shutdown-timeout`), closing the runtime. With Dramatiq's own
#: second of polling on each side they add up to less than `hard_deadline`.
HAND_BACK_SHARE = 0.4
THREADS_SHARE = 0.3
CLOSE_SHARE = 0.1


def hard_deadline(grace: float) -> float:
    """Seconds after SIGTERM when the worker process ends itself, stopped or not.

    A second is left for Dramatiq's main process to notice and exit.
    """
    return max(grace - 1.5, grace * 0.8)


def install_term_guard(grace: float) -> bool:
    """Wrap the SIGTERM handler Dramatiq's worker process installed; False if there is none
    (not in a worker process, e.g. a test that builds the broker)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    original = signal.getsignal(signal.SIGTERM)
    if not callable(original):
        return False
    handler: Callable[[int, FrameType | None], Any] = original
    armed = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        if armed.is_set():
            log.info("worker.sigterm_again", note="already stopping; ignored")
            return
        armed.set()
        timer = threading.Timer(hard_deadline(grace), _give_up, args=(grace,))
        timer.daemon = True
        timer.start()
        handler(signum, frame)

    signal.signal(signal.SIGTERM, on_term)
    return True


def _give_up(grace: float) -> None:
    """The graceful stop took too long: say where it stood, then end the process."""
    log.error("worker.shutdown_overran", grace_seconds=grace)
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    sys.stderr.flush()
    os._exit(EXIT_KILLED)
