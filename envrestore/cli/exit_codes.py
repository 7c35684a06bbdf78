"""Named exit codes of the CLI (documented in the README)."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    ERROR = 1  # anything else that went wrong
    USAGE = 2  # bad arguments or input
    NOT_FOUND = 3  # no such site, environment, backup or job
    CONFLICT = 4  # idempotency key reused for another request; refused by policy
    JOB_FAILED = 5  # the job ran and failed (or was cancelled)
    UNAVAILABLE = 6  # a service (ledger, S3, database server) cannot be reached
    INTERRUPTED = 130  # Ctrl-C (a followed job goes on on the workers)
