"""The MariaDB import itself: the `mariadb` client fed the filtered dump, over 1 to 8 sessions.

`MariaDbShadow.import_into` calls `import_dump`. With one session the dump goes
to one client as it is; with more, `mariadb_split.Splitter` cuts the filtered
stream (never the raw one) between whole statements. Every session is the same
client command: the same login (the job's least-privilege import user), the
same `--binary-mode` and `--sandbox`, the same read-ahead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Literal

import structlog

from envrestore.pipelines.dsn import Dsn
from envrestore.pipelines.engines import mariadb_split
from envrestore.pipelines.engines.mariadb import quote_identifier
from envrestore.pipelines.engines.shadow import FedCounter, ImportReport, ProgressCallback
from envrestore.pipelines.errors import BadInput, EnvrestoreError
from envrestore.pipelines.streams import empty_stream, run_consumer

if TYPE_CHECKING:
    from envrestore.pipelines.engines.mariadb_shadow import MariaDbShadow

log = structlog.get_logger(__name__)

#: The most sessions one import may use (ENVRESTORE_MARIADB_IMPORT_CONNECTIONS).
MAX_SESSIONS = 8
#: `auto`: one session per core of the DB server, within these bounds.
AUTO_MIN_SESSIONS = 2
AUTO_MAX_SESSIONS = 4
#: MAX_USER_CONNECTIONS of an import login: every session of the largest import,
#: one for the import's own short scripts (the sync table) and one spare.
LOGIN_MAX_CONNECTIONS = MAX_SESSIONS + 2
#: `mariadb --help` probed once per client binary: does it know --sandbox?
_SANDBOX_SUPPORT: dict[str, bool] = {}

Connections = int | Literal["auto"]


async def sessions_for(shadow: MariaDbShadow, dsn: Dsn, connections: Connections) -> int:
    """How many client sessions an import into `dsn` uses.

    A number (1 to 8) is used as it is. `auto` sizes the import by the DB server:
    one session per core, at least 2 (two sessions already load a dump ~1.36x
    faster on a 2-core server, PERFORMANCE.md) and at most 4 (beyond, the
    sessions queue on InnoDB's log). The server's cores are `@@thread_pool_size`,
    which MariaDB sets to the CPU count of its host unless configured; a server
    without it (MySQL) counts as small (2). `auto` also stays one below the
    login's connection limit (`@@max_user_connections`, 0 = none).
    """
    if connections != "auto":
        if not 1 <= connections <= MAX_SESSIONS:
            raise BadInput(f"connections must be 1 to {MAX_SESSIONS} or 'auto', not {connections}")
        return connections
    cores = 0
    try:
        rows = await shadow._run(
            dsn, "SELECT @@thread_pool_size;", what="sizing the import", database=dsn.database
        )
        cores = int(rows[0][0]) if rows and rows[0] and rows[0][0].isdigit() else 0
    except EnvrestoreError as exc:
        log.info("shadow.server_cores_unknown", engine="mariadb", reason=exc.message)
    sessions = min(max(cores, AUTO_MIN_SESSIONS), AUTO_MAX_SESSIONS)
    rows = await shadow._run(
        dsn, "SELECT @@max_user_connections;", what="sizing the import", database=dsn.database
    )
    limit = int(rows[0][0]) if rows and rows[0] and rows[0][0].isdigit() else 0
    if limit:
        sessions = max(1, min(sessions, limit - 1))
    return sessions


async def client_options(shadow: MariaDbShadow) -> list[str]:
    """The options every import session runs with: the dump's bytes as they are, sandboxed."""
    options = ["--binary-mode", "--max-allowed-packet=1G"]
    client = shadow.engine.client()
    if client not in _SANDBOX_SUPPORT:
        try:
            help_text = await run_consumer([client, "--no-defaults", "--help"], empty_stream())
        except EnvrestoreError:
            help_text = ""
        _SANDBOX_SUPPORT[client] = "--sandbox" in help_text
    if _SANDBOX_SUPPORT[client]:
        options.append("--sandbox")
    return options


async def import_dump(
    shadow: MariaDbShadow,
    dsn: Dsn,
    chunks: AsyncIterator[bytes],
    *,
    on_progress: ProgressCallback | None,
    connections: Connections,
) -> ImportReport:
    """Feed the (filtered) dump to `mariadb --binary-mode` over the sessions it needs."""
    sessions = await sessions_for(shadow, dsn, connections)
    options = await client_options(shadow)
    fed = FedCounter(dsn.database, on_progress)
    started = time.monotonic()
    try:
        if sessions == 1:
            await run_consumer(
                shadow.engine.client_argv(dsn, *options),
                fed.wrap(chunks),
                env=shadow.engine.environment(dsn),
                secrets=shadow.engine.secrets(dsn),
                readahead=shadow.readahead,
            )
        else:
            await _import_split(shadow, dsn, options, fed.wrap(chunks), sessions)
    except EnvrestoreError as exc:
        if "stderr" not in exc.data:
            raise  # the dump's own verdict (refused, truncated, damaged): already clear
        raise shadow._error(exc, dsn, what="import", database=dsn.database) from exc
    seconds = time.monotonic() - started
    log.info(
        "shadow.imported",
        engine="mariadb",
        dsn=dsn.masked(),
        bytes=fed.bytes,
        seconds=seconds,
        connections=sessions,
        asked=connections,
    )
    return ImportReport(dsn.database, fed.bytes, seconds, tuple(options), connections=sessions)


async def _import_split(
    shadow: MariaDbShadow, dsn: Dsn, options: list[str], chunks: AsyncIterator[bytes], sessions: int
) -> None:
    """`sessions` clients fed by `mariadb_split.Splitter`; the first failure stops them all
    (the splitter's error, or a client's, cancels the other tasks, which kill their clients).

    Each session gets the whole read-ahead: the splitter waits on the session it
    routes to, so a small buffer there would hold back the others. The sync table
    is MEMORY, not InnoDB: a signal is seen at once, with no snapshot, row lock or
    transaction of the session in the way (the splitter also keeps a dump that
    changes its transactions on one session, see `Splitter._to_one_session`).
    """
    sync = f"{quote_identifier(dsn.database)}.{quote_identifier(mariadb_split.SYNC_TABLE)}"
    await shadow._run(
        dsn,
        f"CREATE OR REPLACE TABLE {sync} (id INT PRIMARY KEY) ENGINE=MEMORY;",
        what="import",
        database=dsn.database,
    )
    splitter = mariadb_split.Splitter(dsn.database, sessions)
    argv = shadow.engine.client_argv(dsn, *options)
    env, secrets = shadow.engine.environment(dsn), shadow.engine.secrets(dsn)
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(splitter.run(chunks))
            for dest in range(sessions):
                group.create_task(
                    run_consumer(
                        argv,
                        splitter.stream(dest),
                        env=env,
                        secrets=secrets,
                        # One import's read-ahead, shared by its sessions: memory
                        # stays bounded by the setting whatever the session count.
                        readahead=max(1 << 20, shadow.readahead // sessions),
                    )
                )
    except BaseExceptionGroup as group_error:
        # The first real failure, not the cancellations it caused in the other tasks.
        errors = [e for e in group_error.exceptions if not isinstance(e, asyncio.CancelledError)]
        raise (errors or list(group_error.exceptions))[0] from None
    await shadow._run(dsn, f"DROP TABLE IF EXISTS {sync};", what="import", database=dsn.database)
