"""The database engine contract: check a server, dump a database, count its rows.

One `Protocol`, one implementation per engine (MariaDB, PostgreSQL); the steps
only ever see `DatabaseEngine`. The restore side (import into a shadow database)
builds on the same client discovery and DSN handling.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from envrestore.pipelines.dsn import Dsn
from envrestore.pipelines.errors import PermanentError

if TYPE_CHECKING:
    from envrestore.config.settings import Settings


class DatabaseEngine(Protocol):
    """What every database engine offers the pipeline steps."""

    @property
    def name(self) -> str:
        """The engine's name, as in `Dsn.engine`."""
        ...

    @property
    def bin_dir(self) -> Path | None:
        """Where its client tools are taken from (None: PATH)."""
        ...

    async def check(self, dsn: Dsn) -> None:
        """Raise Unavailable / BadInput / NotFound (one clear line) unless the db is usable."""
        ...

    def dump(self, dsn: Dsn) -> AsyncIterator[bytes]:
        """A plain SQL dump of the database, streamed; raises if the dump tool fails."""
        ...

    async def list_tables(self, dsn: Dsn) -> dict[str, int]:
        """Every table with its exact row count (sanity checks after an import)."""
        ...


def find_client(names: Sequence[str], bin_dir: Path | None, *, setting: str) -> str:
    """The first of `names` found in `bin_dir` (when set) or on PATH.

    A worker without the client cannot do the step: that is a deployment
    error, reported with the setting that fixes it.
    """
    for name in names:
        if bin_dir is not None:
            candidate = bin_dir / name
            if candidate.is_file():
                return str(candidate)
        else:
            found = shutil.which(name)
            if found:
                return found
    where = str(bin_dir) if bin_dir is not None else "PATH"
    raise PermanentError(
        f"none of {', '.join(names)} found in {where}; install the client tools or set "
        f"ENVRESTORE_{setting.upper()}",
        clients=list(names),
    )


def engine_for(dsn: Dsn, settings: Settings | None = None) -> DatabaseEngine:
    """The engine for a DSN, using the client directories from settings."""
    # Imported here: the implementations import this module.
    from envrestore.pipelines.engines.mariadb import MariaDbEngine
    from envrestore.pipelines.engines.postgres import PostgresEngine

    if dsn.engine == "mariadb":
        return MariaDbEngine(bin_dir=settings.mariadb_bin_dir if settings else None)
    return PostgresEngine(bin_dir=settings.pg_bin_dir if settings else None)
