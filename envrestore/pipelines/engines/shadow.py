"""Shadow databases: import beside the live database, then swap it in with a short window.

The restore imports into `<db>__envr_shadow_<tag>`; `switch` swaps it in and keeps
the previous content as `<db>__envr_rollback_<tag>` (dropped later by retention).
Every operation may run again after a worker died anywhere: each one detects what
is already done (DESIGN.md, steps of a restore). Engine specifics live in
`mariadb_shadow` and `postgres_shadow`; callers use the functions of this module.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import structlog

from envrestore.pipelines.dsn import Dsn
from envrestore.pipelines.errors import BadInput, EnvrestoreError, PermanentError, TransientError
from envrestore.pipelines.sqlsafety.lines import excerpt

if TYPE_CHECKING:
    from envrestore.config.settings import Settings

log = structlog.get_logger(__name__)

#: The shortest identifier limit of the engines (PostgreSQL 63 bytes, MariaDB 64 characters).
MAX_NAME_BYTES = 63
MAX_TAG_LENGTH = 32
SHADOW_INFIX = "__envr_shadow_"
ROLLBACK_INFIX = "__envr_rollback_"
_TAG_RE = re.compile(r"^[A-Za-z0-9_]+$")


@dataclass(frozen=True)
class ShadowNames:
    """The databases of one restore: the shadow it imports into and the rollback point."""

    live: str
    shadow: str
    rollback: str


@dataclass(frozen=True)
class ImportReport:
    """What an import fed to the client (for job outputs and benchmarks)."""

    database: str
    bytes: int
    seconds: float
    client_options: tuple[str, ...] = ()
    #: Client sessions the import ran over (`connections` resolved, "auto" sized).
    connections: int = 1


@dataclass(frozen=True)
class ImportLogin:
    """Who the import client connects as: least privilege for untrusted dumps.

    `dsn` names the database the import fills, with the login's credentials.
    `user` is the login created for this job (None when the environment's own
    DSN user is used, with `reason` saying why); it can reach only `dsn.database`.
    """

    dsn: Dsn
    user: str | None
    reason: str = ""


@dataclass(frozen=True)
class RunningStatement:
    """A statement the import is running now, as the server reports it."""

    seconds: float
    text: str


#: Import logins are named `envr_i_<tag>`; objects defined by them are re-owned at switch.
IMPORT_LOGIN_PREFIX = "envr_i_"


def import_login_name(tag: str) -> str:
    """The login of one job's import (deterministic, so a later step can drop it)."""
    return f"{IMPORT_LOGIN_PREFIX}{tag[:24]}"


@dataclass(frozen=True)
class SwitchReport:
    """How long the live name was unavailable or changing; already_done: nothing left to do."""

    window_seconds: float
    already_done: bool


ProgressCallback = Callable[[int], None]


class FedCounter:
    """Counts the dump bytes fed to a client and reports them as progress.

    A dropped source (ConnectionResetError from the download) becomes a
    TransientError that names the database, so it is not mistaken for the
    client closing its input.
    """

    def __init__(self, database: str, on_progress: ProgressCallback | None) -> None:
        self.database = database
        self.on_progress = on_progress
        self.bytes = 0

    async def wrap(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks:
                self.bytes += len(chunk)
                if self.on_progress is not None:
                    self.on_progress(self.bytes)
                yield chunk
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise TransientError(
                f"the dump stream for database {self.database!r} broke after {self.bytes} "
                f"bytes ({exc}); the import is retried",
                database=self.database,
                bytes=self.bytes,
            ) from exc


class ShadowEngine(Protocol):
    """What each engine implements for the restore side."""

    async def prepare_shadow(self, dsn: Dsn, names: ShadowNames) -> None: ...

    async def import_into(
        self,
        dsn: Dsn,
        chunks: AsyncIterator[bytes],
        *,
        on_progress: ProgressCallback | None = None,
        connections: int | Literal["auto"] = 1,
    ) -> ImportReport: ...

    async def sanity_check(self, dsn: Dsn) -> dict[str, int]: ...

    async def create_import_login(self, dsn: Dsn, database: str, tag: str) -> ImportLogin:
        """A login for this job that can reach only `database` (dropped and made anew
        when it exists); the DSN user itself, with the reason, when it cannot create one."""
        ...

    async def hand_over(self, dsn: Dsn, database: str, login: ImportLogin) -> None:
        """After the import: make what the login created belong to the DSN user."""
        ...

    async def drop_import_login(self, dsn: Dsn, tag: str) -> None:
        """End the login's sessions and drop it; a no-op when it does not exist."""
        ...

    async def running_statements(
        self, dsn: Dsn, database: str, user: str | None
    ) -> list[RunningStatement]:
        """Statements running now in `database` (by `user` when given), longest first."""
        ...

    async def end_sessions(self, dsn: Dsn, database: str, user: str | None) -> None:
        """Kill the sessions working in `database` (by `user` when given)."""
        ...

    async def swap_in(self, dsn: Dsn, live: str, incoming: str, outgoing: str) -> SwitchReport: ...

    async def drop_database(self, dsn: Dsn, name: str) -> None: ...


def _truncate_utf8(text: str, max_bytes: int) -> str:
    return text.encode("utf-8")[:max_bytes].decode("utf-8", "ignore")


def shadow_names(live_db: str, tag: str) -> ShadowNames:
    """The shadow and rollback names of `live_db` for one restore (`tag`: the job's id).

    Names are deterministic, so a retried step finds what an earlier attempt made.
    A live name too long for the suffixes is cut and given a hash of the full
    name, so two long names sharing a prefix still get different databases.
    """
    if not tag or len(tag) > MAX_TAG_LENGTH or not _TAG_RE.match(tag):
        raise BadInput(
            f"invalid shadow tag {tag!r}: use 1-{MAX_TAG_LENGTH} letters, digits or '_'",
            tag=tag,
        )
    if not live_db:
        raise BadInput("the live database name is empty; fix the DSN")
    longest = len(ROLLBACK_INFIX) + len(tag)
    stem = live_db
    if len(live_db.encode("utf-8")) + longest > MAX_NAME_BYTES:
        digest = hashlib.sha256(live_db.encode("utf-8")).hexdigest()[:8]
        stem = _truncate_utf8(live_db, MAX_NAME_BYTES - longest - 9) + "_" + digest
    return ShadowNames(
        live=live_db,
        shadow=f"{stem}{SHADOW_INFIX}{tag}",
        rollback=f"{stem}{ROLLBACK_INFIX}{tag}",
    )


def shadow_engine_for(dsn: Dsn, settings: Settings | None = None) -> ShadowEngine:
    """The shadow implementation for a DSN's engine (client directories from settings)."""
    # Imported here: the implementations import this module.
    from envrestore.pipelines.engines.mariadb import MariaDbEngine
    from envrestore.pipelines.engines.mariadb_shadow import MariaDbShadow
    from envrestore.pipelines.engines.postgres import PostgresEngine
    from envrestore.pipelines.engines.postgres_shadow import PostgresShadow

    if dsn.engine == "mariadb":
        engine = MariaDbEngine(bin_dir=settings.mariadb_bin_dir if settings else None)
        if settings is None:
            return MariaDbShadow(engine)
        return MariaDbShadow(engine, readahead=settings.import_readahead_mb << 20)
    engine_pg = PostgresEngine(bin_dir=settings.pg_bin_dir if settings else None)
    if settings is None:
        return PostgresShadow(engine_pg)
    return PostgresShadow(engine_pg, readahead=settings.import_readahead_mb << 20)


async def prepare_shadow(dsn: Dsn, names: ShadowNames, *, settings: Settings | None = None) -> None:
    """Drop the shadow if an earlier attempt left one, create it empty, like the live db."""
    await shadow_engine_for(dsn, settings).prepare_shadow(dsn, names)


async def import_into(
    dsn_of_shadow: Dsn,
    chunks: AsyncIterator[bytes],
    *,
    on_progress: ProgressCallback | None = None,
    connections: int | Literal["auto"] = 1,
    settings: Settings | None = None,
    watch: ImportWatch | None = None,
) -> ImportReport:
    """Stream a plain SQL dump into the shadow through the engine's own client.

    Raises when the client fails, exits early or the stream breaks: no false success.
    `connections` (1 to 8, or "auto": sized by the DB server) splits the big tables'
    rows over that many client sessions (PERFORMANCE.md: 1.36x with two on 2 cores);
    the report says how many ran.
    `watch` kills a statement that runs too long and an import that stalls.
    """
    engine = shadow_engine_for(dsn_of_shadow, settings)
    if watch is None:
        return await engine.import_into(
            dsn_of_shadow, chunks, on_progress=on_progress, connections=connections
        )
    return await watch.run(
        engine,
        engine.import_into(
            dsn_of_shadow, watch.metered(chunks), on_progress=on_progress, connections=connections
        ),
        database=dsn_of_shadow.database,
    )


@dataclass
class ImportWatch:
    """Timeouts for an import of untrusted SQL, enforced from outside the session.

    A dump can `SET max_statement_time = 0` or `SET statement_timeout = 0`, so
    server-side limits alone are not enough: this polls the server for the
    import's running statements (by database, and by the import login when there
    is one) and kills the sessions when one runs longer than `statement_timeout`,
    or when the client has accepted no input for `idle_timeout`. The error names
    the statement (its first 100 characters, escaped).
    """

    admin: Dsn
    user: str | None
    statement_timeout: float
    idle_timeout: float
    poll_seconds: float = 5.0
    _last_input: float = field(default=0.0, init=False)

    async def metered(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        self._last_input = time.monotonic()
        async for chunk in chunks:
            self._last_input = time.monotonic()
            yield chunk
            self._last_input = time.monotonic()

    async def run(
        self, engine: ShadowEngine, work: Coroutine[Any, Any, ImportReport], *, database: str
    ) -> ImportReport:
        self._last_input = time.monotonic()
        task = asyncio.ensure_future(work)
        poll = max(0.2, min(self.poll_seconds, self.statement_timeout / 4, self.idle_timeout / 4))
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=poll)
                if done:
                    return task.result()
                verdict = await self._verdict(engine, database)
                if verdict is not None:
                    await engine.end_sessions(self.admin, database, self.user)
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                    raise verdict
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def _verdict(self, engine: ShadowEngine, database: str) -> PermanentError | None:
        try:
            running = await engine.running_statements(self.admin, database, self.user)
        except EnvrestoreError as exc:
            log.warning("import.watch_failed", error=exc.message)
            running = []
        longest = running[0] if running else None
        if longest is not None and longest.seconds > self.statement_timeout:
            return PermanentError(
                f"a statement of the dump ran longer than {self.statement_timeout:g} s "
                f"(ENVRESTORE_IMPORT_STATEMENT_TIMEOUT) and was killed: "
                f'"{_statement(longest.text)}"; nothing was changed',
                problem="statement_timeout",
                seconds=round(longest.seconds, 1),
            )
        idle = time.monotonic() - self._last_input
        if idle > self.idle_timeout:
            doing = f'; it was running "{_statement(longest.text)}"' if longest else ""
            return PermanentError(
                f"the import made no progress for {idle:.0f} s "
                f"(ENVRESTORE_IMPORT_IDLE_TIMEOUT is {self.idle_timeout:g} s) and was "
                f"stopped{doing}; nothing was changed",
                problem="idle_timeout",
                seconds=round(idle, 1),
            )
        return None


def _statement(text: str) -> str:
    """The first 100 characters of a statement, control characters escaped."""
    return excerpt(" ".join(text.split()).encode("utf-8"), 100)


async def create_import_login(
    dsn: Dsn, database: str, tag: str, *, settings: Settings | None = None
) -> ImportLogin:
    """A least-privilege login for one job's import into `database` (see ShadowEngine)."""
    return await shadow_engine_for(dsn, settings).create_import_login(dsn, database, tag)


async def hand_over(
    dsn: Dsn, database: str, login: ImportLogin, *, settings: Settings | None = None
) -> None:
    """Give what the import login created to the DSN user (before the switch)."""
    await shadow_engine_for(dsn, settings).hand_over(dsn, database, login)


async def drop_import_login(dsn: Dsn, tag: str, *, settings: Settings | None = None) -> None:
    """Drop one job's import login if it exists (import end, finalize, abandon)."""
    await shadow_engine_for(dsn, settings).drop_import_login(dsn, tag)


async def sanity_check(dsn_of_shadow: Dsn, *, settings: Settings | None = None) -> dict[str, int]:
    """Tables and exact row counts of the shadow (the caller judges an empty result)."""
    return await shadow_engine_for(dsn_of_shadow, settings).sanity_check(dsn_of_shadow)


async def switch(
    dsn_live: Dsn, names: ShadowNames, *, settings: Settings | None = None
) -> SwitchReport:
    """Swap the shadow in under the live name; the old content becomes the rollback point."""
    _check_live(dsn_live, names)
    return await shadow_engine_for(dsn_live, settings).swap_in(
        dsn_live, names.live, names.shadow, names.rollback
    )


async def rollback(
    dsn_live: Dsn, names: ShadowNames, aside_tag: str, *, settings: Settings | None = None
) -> SwitchReport:
    """Swap the rollback point back in under the live name.

    The restored content is not dropped: it moves to the rollback name of
    `aside_tag` (`shadow_names(live, aside_tag).rollback`), a rollback point of
    its own that retention drops like any other.
    """
    _check_live(dsn_live, names)
    aside = shadow_names(names.live, aside_tag).rollback
    if aside in (names.shadow, names.rollback):
        raise BadInput(f"aside tag {aside_tag!r} must differ from the restore's tag")
    return await shadow_engine_for(dsn_live, settings).swap_in(
        dsn_live, names.live, names.rollback, aside
    )


async def drop_shadow(dsn: Dsn, names: ShadowNames, *, settings: Settings | None = None) -> None:
    """Drop the shadow if it exists (cleanup after a failed restore)."""
    await shadow_engine_for(dsn, settings).drop_database(dsn, names.shadow)


async def drop_rollback(dsn: Dsn, names: ShadowNames, *, settings: Settings | None = None) -> None:
    """Drop the rollback point if it exists (retention)."""
    await shadow_engine_for(dsn, settings).drop_database(dsn, names.rollback)


def _check_live(dsn_live: Dsn, names: ShadowNames) -> None:
    if dsn_live.database != names.live:
        raise BadInput(
            f"the DSN {dsn_live.masked()} names database {dsn_live.database!r} but the shadow "
            f"names were made for {names.live!r}; build them with shadow_names(dsn.database, tag)",
        )
