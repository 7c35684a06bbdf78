"""The one exception tree: permanent errors fail a job, transient ones are retried.

Every error a user sees names what was wrong and what to do. Exceptions carry
data (job id, step, part, line) so callers and tests need not parse text.

Messages are often built from untrusted bytes (a dump's line, a member's
name): the message and the string values of `data` are cleaned (control
characters escaped, length bounded) when the error is made, so an error is
safe wherever it goes: the ledger, the log, a terminal.
"""

from __future__ import annotations

from typing import Any

from envrestore.pipelines.text import ERROR_LIMIT, clean_text


class EnvrestoreError(Exception):
    """Something went wrong in envrestore."""

    #: Named CLI exit code for this family of error (see cli.exit_codes).
    exit_code: int = 1

    def __init__(self, message: str | None = None, **data: Any) -> None:
        raw = message or (self.__doc__ or self.__class__.__name__).strip()
        self.message = clean_text(raw, ERROR_LIMIT)
        self.data = {
            key: clean_text(value, ERROR_LIMIT) if isinstance(value, str) else value
            for key, value in data.items()
        }
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class PermanentError(EnvrestoreError):
    """The request cannot succeed as given; retrying will not help."""


class TransientError(EnvrestoreError):
    """A passing failure (a service down, a timeout); the step is retried with backoff."""


class BadInput(PermanentError):
    """The input is not valid."""

    exit_code = 2


class NotFound(PermanentError):
    """The named thing does not exist."""

    exit_code = 3


class Conflict(PermanentError):
    """The request conflicts with what already exists."""

    exit_code = 4


class Refused(PermanentError):
    """The request is refused by policy (for example a protected environment)."""

    exit_code = 4


class UnsafeInput(PermanentError):
    """Untrusted input (an archive, a dump, a URL) failed a safety check."""


class IntegrityError(PermanentError):
    """Data does not match what its manifest promises (size or sha256)."""


class Unavailable(TransientError):
    """A service envrestore needs is not reachable."""

    exit_code = 6


class LeaseLost(PermanentError):
    """This job no longer holds the environment's lease; it must not touch the environment."""


class LeaseBusy(TransientError):
    """Another job holds the environment's lease; this step waits its turn."""


class Cancelled(PermanentError):
    """The job was cancelled."""
