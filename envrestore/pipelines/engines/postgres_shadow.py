"""PostgreSQL shadow databases: import with `psql`, swap by renaming whole databases.

A database rename is O(1), but PostgreSQL refuses it while anyone is connected.
The switch therefore blocks new connections to live (ALLOW_CONNECTIONS false),
terminates its sessions, and renames both databases and re-allows connections in
one transaction (ALTER DATABASE ... RENAME is transactional), so the names swap
at once or not at all. All of it runs on a maintenance connection (the
`postgres` database, or the DSN's `?maintenance_db=`), never on the databases
being renamed.

Database-level settings (`ALTER DATABASE ... SET`), grants and comments on the
database belong to the database object, not to a plain pg_dump: the shadow
takes the live database's settings and connection limit in `prepare_shadow`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import structlog

from envrestore.pipelines.dsn import Dsn
from envrestore.pipelines.engines.postgres import (
    PostgresEngine,
    psql_reason,
    quote_identifier,
    quote_server_text,
)
from envrestore.pipelines.engines.postgres_split import (
    MAX_CONNECTIONS,
    import_stream,
    resolve_connections,
)
from envrestore.pipelines.engines.shadow import (
    FedCounter,
    ImportLogin,
    ImportReport,
    ProgressCallback,
    RunningStatement,
    ShadowNames,
    SwitchReport,
    import_login_name,
)
from envrestore.pipelines.errors import (
    BadInput,
    Conflict,
    EnvrestoreError,
    NotFound,
    PermanentError,
    Refused,
    TransientError,
)
from envrestore.pipelines.streams import DEFAULT_READAHEAD, run_consumer

log = structlog.get_logger(__name__)

_q = quote_identifier
#: How long a switch keeps terminating sessions of live before giving up (and being retried).
TERMINATE_SECONDS = 10.0
#: lz4 TOAST compression: 2.4x faster imports than pglz (PERFORMANCE.md); PostgreSQL >= 14.
LZ4_OPTIONS = "-c default_toast_compression=lz4"


#: Sessions an import login may open: the most parallel psql sessions, twice (a
#: stage's sessions may still be ending on the server when the next stage's
#: connect), and the lz4 probe with a margin.
LOGIN_CONNECTION_LIMIT = 2 * MAX_CONNECTIONS + 2
#: How much of a running statement `running_statements` reports.
STATEMENT_TEXT_LIMIT = 1000
NO_CREATEROLE = (
    "the DSN user cannot create roles (needs CREATEROLE); the import runs as the DSN user"
)


def _lit(text: str) -> str:
    """A standard-conforming string literal (for DDL, which takes no parameters)."""
    return "'" + text.replace("'", "''") + "'"


_LIST_ITEM = re.compile(r'\s*("(?:[^"]|"")*"|[A-Za-z_][A-Za-z0-9_$]*)\s*(?:,|$)')


def _setting_value(value: str) -> str:
    """A stored `ALTER DATABASE ... SET` value as SQL again.

    List settings (search_path) are stored as `"$user", public`: one quoted
    literal would make them a single name, so a list of plain or quoted
    identifiers is re-emitted as it was (it is checked to be nothing else).
    """
    if "," in value:
        items = []
        position = 0
        while position < len(value):
            match = _LIST_ITEM.match(value, position)
            if match is None or match.end() == position:
                break
            items.append(match.group(1))
            position = match.end()
        else:
            return ", ".join(items)
    return _lit(value)


@dataclass(frozen=True)
class PostgresShadow:
    """The restore side of PostgreSQL, on top of `PostgresEngine`'s connections and clients."""

    engine: PostgresEngine
    readahead: int = DEFAULT_READAHEAD  # bytes the dump may run ahead of psql (all sessions)

    def _where(self, dsn: Dsn) -> str:
        return f"PostgreSQL at {dsn.socket or f'{dsn.host}:{dsn.port}'}"

    async def _maintenance(self, dsn: Dsn) -> asyncpg.Connection:
        return await self.engine.connect(
            dsn.with_database(dsn.params.get("maintenance_db", "postgres"))
        )

    def _error(self, exc: Exception, dsn: Dsn, *, what: str, database: str) -> EnvrestoreError:
        cls: type[EnvrestoreError] = PermanentError
        hint = ""
        if isinstance(exc, asyncpg.InsufficientPrivilegeError):
            cls, hint = BadInput, "; the DSN's user needs CREATEDB and to own the database"
        elif isinstance(exc, asyncpg.ObjectInUseError | asyncpg.LockNotAvailableError):
            cls, hint = TransientError, "; sessions are still connected, the step is retried"
        elif isinstance(
            exc, OSError | asyncpg.InterfaceError | asyncpg.ConnectionDoesNotExistError
        ):
            cls = TransientError
        return cls(
            f"{what} of database {database!r} on {self._where(dsn)} failed: {exc}{hint}",
            dsn=dsn.masked(),
            database=database,
        )

    # ------------------------------------------------------------ prepare, import, check

    async def prepare_shadow(self, dsn: Dsn, names: ShadowNames) -> None:
        conn = await self._maintenance(dsn)
        try:
            version = conn.get_server_version().major
            locale = (
                "datlocprovider::text, daticulocale"
                if version in (15, 16)
                else "datlocprovider::text, datlocale"
                if version >= 17
                else "'c', NULL"
            )
            row = await conn.fetchrow(
                "SELECT pg_encoding_to_char(encoding), datcollate, datctype, "
                f"{locale}, pg_get_userbyid(datdba), datconnlimit, current_user "
                "FROM pg_database WHERE datname = $1",
                names.live,
            )
            if row is None and names.shadow == names.live:
                # In-place wipe retried after its DROP: live is gone, take the server's defaults.
                log.warning("shadow.recreating_live_with_defaults", dsn=dsn.masked())
                await conn.execute(f"CREATE DATABASE {_q(names.live)} TEMPLATE template0")
                return
            if row is None:
                raise NotFound(
                    f"database {names.live!r} does not exist on {self._where(dsn)}; create it "
                    "or fix the DSN",
                    dsn=dsn.masked(),
                    database=names.live,
                )
            encoding, collate, ctype, provider, icu, owner, limit, me = row
            settings = await conn.fetch(
                "SELECT unnest(setconfig) FROM pg_db_role_setting s JOIN pg_database d "
                "ON d.oid = s.setdatabase WHERE d.datname = $1 AND s.setrole = 0",
                names.live,
            )
            create = (
                f"CREATE DATABASE {_q(names.shadow)} TEMPLATE template0 "
                f"ENCODING {_lit(encoding)} LC_COLLATE {_lit(collate)} LC_CTYPE {_lit(ctype)}"
            )
            if provider == "i":
                create += f" LOCALE_PROVIDER icu ICU_LOCALE {_lit(icu)}"
            if owner != me:
                create += f" OWNER {_q(owner)}"
            if limit != -1:
                create += f" CONNECTION LIMIT {int(limit)}"
            force = " WITH (FORCE)" if version >= 13 else ""
            await conn.execute(f"DROP DATABASE IF EXISTS {_q(names.shadow)}{force}")
            await conn.execute(create)
            for (setting,) in settings:
                key, _, value = str(setting).partition("=")
                await conn.execute(
                    f"ALTER DATABASE {_q(names.shadow)} SET {_q(key)} = {_setting_value(value)}"
                )
        except asyncpg.PostgresError as exc:
            raise self._error(exc, dsn, what="creating the shadow", database=names.shadow) from exc
        finally:
            await conn.close()
        log.info("shadow.prepared", engine="postgresql", dsn=dsn.masked(), shadow=names.shadow)

    async def import_into(
        self,
        dsn: Dsn,
        chunks: AsyncIterator[bytes],
        *,
        on_progress: ProgressCallback | None = None,
        connections: int | str = 1,
        lz4: bool = True,
    ) -> ImportReport:
        """psql fed the dump, over `connections` sessions ("auto": 2) when it is a
        plain pg_dump (postgres_split); lz4 TOAST when the server has it (`lz4=False`: bench)."""
        sessions = resolve_connections(connections)
        conn = await self.engine.connect(dsn)
        try:
            has_lz4 = await conn.fetchval(
                "SELECT 'lz4' = ANY(enumvals) FROM pg_settings "
                "WHERE name = 'default_toast_compression'"
            )
        finally:
            await conn.close()
        env = self.engine.environment(dsn)
        options: tuple[str, ...] = ()
        if lz4 and has_lz4:
            env["PGOPTIONS"] = LZ4_OPTIONS
            options = (f"PGOPTIONS={LZ4_OPTIONS}",)
        # `-f -`: psql names the failing line ("psql:<stdin>:LINE: ERROR: …"), counted
        # in its own session's input when the dump is split.
        argv = self.engine.psql_argv(dsn, "-f", "-")
        secrets = self.engine.secrets(dsn)

        async def launch(stream: AsyncIterator[bytes]) -> str:
            return await run_consumer(argv, stream, env=env, secrets=secrets, readahead=share)

        share = max(1 << 20, self.readahead // sessions)
        fed = FedCounter(dsn.database, on_progress)
        started = time.monotonic()
        try:
            stages = await import_stream(fed.wrap(chunks), sessions, launch)
        except EnvrestoreError as exc:
            if "stderr" not in exc.data:
                raise  # the dump's own verdict (refused, truncated, damaged): already clear
            detail = str(exc.data.get("stderr", exc.message))
            reason, line = psql_reason(detail)
            where = f", {exc.data['session']}" if "session" in exc.data else ""
            raise type(exc)(
                f"{reason} (while importing into the shadow database{where})",
                dsn=dsn.masked(),
                host=dsn.socket or dsn.host,
                port=dsn.port,
                database=dsn.database,
                user=dsn.user,
                line=line,
                session=exc.data.get("session"),
                stderr=quote_server_text(detail, 2000),
            ) from exc
        seconds = time.monotonic() - started
        log.info(
            "shadow.imported",
            engine="postgresql",
            dsn=dsn.masked(),
            bytes=fed.bytes,
            seconds=seconds,
            connections=sessions,
            stages=[f"{stage}:{count}" for stage, count in stages],
        )
        used = max(count for _, count in stages)
        return ImportReport(dsn.database, fed.bytes, seconds, options, connections=used)

    # ------------------------------------------------------------ import login

    async def create_import_login(self, dsn: Dsn, database: str, tag: str) -> ImportLogin:
        """A fresh role owning only `database`, for psql to import the untrusted dump as.

        It is no superuser and cannot create databases or roles, replicate, bypass
        row security or inherit anything; it owns `database` (so the dump's schema
        and objects can be made there). What PUBLIC may do in other databases
        (CONNECT, TEMP; CREATE on public before PostgreSQL 15) it may do too:
        that is the server's configuration (pg_hba.conf, REVOKE … FROM PUBLIC).
        """
        role = import_login_name(tag)
        conn = await self._maintenance(dsn)
        try:
            row = await conn.fetchrow(
                "SELECT rolname, rolsuper, rolcreaterole FROM pg_roles WHERE rolname = current_user"
            )
            assert row is not None  # current_user always has a pg_roles row
            me, superuser, createrole = (row["rolname"], row["rolsuper"], row["rolcreaterole"])
            if not superuser and not createrole:
                log.warning("shadow.import_login_unavailable", dsn=dsn.masked())
                return ImportLogin(dsn=dsn.with_database(database), user=None, reason=NO_CREATEROLE)
            await self._drop_login(conn, dsn, role)
            password = secrets.token_urlsafe(32)
            await conn.execute(
                f"CREATE ROLE {_q(role)} LOGIN PASSWORD {_lit(password)} NOSUPERUSER "
                "NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT "
                f"CONNECTION LIMIT {LOGIN_CONNECTION_LIMIT}"
            )
            if not superuser:
                # ALTER … OWNER TO needs membership of the new owner (PostgreSQL 16:
                # CREATEROLE gives ADMIN on the role, not membership).
                await conn.execute(f"GRANT {_q(role)} TO {_q(me)}")
            # NOINHERIT: the login does not get pg_database_owner's rights on schema
            # public (PostgreSQL 15+), so it is granted them (DROP OWNED revokes them).
            inside = await self.engine.connect(dsn.with_database(database))
            try:
                await inside.execute(
                    "DO $$ BEGIN IF EXISTS (SELECT FROM pg_namespace WHERE nspname = 'public') "
                    f"THEN GRANT USAGE, CREATE ON SCHEMA public TO {_q(role)}; END IF; END $$"
                )
            finally:
                await inside.close()
            await conn.execute(f"ALTER DATABASE {_q(database)} OWNER TO {_q(role)}")
        except asyncpg.PostgresError as exc:
            raise self._login_error(exc, dsn, "creating the import login", role, database) from exc
        finally:
            await conn.close()
        params = {
            key: value
            for key, value in dsn.params.items()
            if key not in ("password_env", "password_file")
        }
        login_dsn = dataclasses.replace(
            dsn.with_database(database), user=role, password=password, params=params
        )
        log.info("shadow.import_login_created", dsn=dsn.masked(), login=role, database=database)
        return ImportLogin(dsn=login_dsn, user=role)

    async def hand_over(self, dsn: Dsn, database: str, login: ImportLogin) -> None:
        """Everything the login made in `database` (and the database) goes to the DSN user.

        The database goes back to the live database's owner (as `prepare_shadow`
        made it), or to the DSN user when live is gone.
        """
        role = login.user
        if role is None:
            return
        conn = await self.engine.connect(dsn.with_database(database))
        try:
            await self._end(conn, database, role, everywhere=True)
            me = await conn.fetchval("SELECT current_user")
            owner = await conn.fetchval(
                "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1",
                dsn.database,
            )
            await conn.execute(f"REASSIGN OWNED BY {_q(role)} TO {_q(me)}")
            await conn.execute(f"DROP OWNED BY {_q(role)}")
            await conn.execute(f"ALTER DATABASE {_q(database)} OWNER TO {_q(owner or me)}")
        except asyncpg.UndefinedObjectError:
            log.info("shadow.import_login_already_gone", login=role, database=database)
        except asyncpg.PostgresError as exc:
            raise self._login_error(exc, dsn, "handing over the import", role, database) from exc
        finally:
            await conn.close()
        log.info("shadow.handed_over", dsn=dsn.masked(), login=role, database=database)

    async def drop_import_login(self, dsn: Dsn, tag: str) -> None:
        role = import_login_name(tag)
        conn = await self._maintenance(dsn)
        try:
            await self._drop_login(conn, dsn, role)
        except asyncpg.PostgresError as exc:
            raise self._login_error(exc, dsn, "dropping the import login", role, None) from exc
        finally:
            await conn.close()

    async def _drop_login(self, conn: asyncpg.Connection, dsn: Dsn, role: str) -> None:
        """End the role's sessions and drop it; what it still owns goes to the DSN user first."""
        oid = await conn.fetchval("SELECT oid FROM pg_roles WHERE rolname = $1", role)
        if oid is None:
            return
        await self._end(conn, None, role, everywhere=True)
        try:
            await conn.execute(f"DROP ROLE IF EXISTS {_q(role)}")
        except asyncpg.DependentObjectsStillExistError:
            # It still owns objects (a shadow that was never handed over): re-own them
            # in each database holding some, then drop it.
            me = await conn.fetchval("SELECT current_user")
            databases = await conn.fetch(
                "SELECT DISTINCT d.datname FROM pg_database d WHERE d.datallowconn AND "
                "(d.datdba = $1 OR d.oid IN (SELECT dbid FROM pg_shdepend WHERE refobjid = $1))",
                oid,
            )
            names = [row["datname"] for row in databases] or [
                dsn.params.get("maintenance_db", "postgres")
            ]
            for name in names:
                other = await self.engine.connect(dsn.with_database(name))
                try:
                    await other.execute(f"REASSIGN OWNED BY {_q(role)} TO {_q(me)}")
                    await other.execute(f"DROP OWNED BY {_q(role)}")
                finally:
                    await other.close()
            await conn.execute(f"DROP ROLE IF EXISTS {_q(role)}")
        log.info("shadow.import_login_dropped", dsn=dsn.masked(), login=role)

    async def _end(
        self, conn: asyncpg.Connection, database: str | None, user: str, *, everywhere: bool
    ) -> None:
        """Terminate `user`'s sessions (in `database` unless everywhere) until none is left."""
        deadline = time.monotonic() + TERMINATE_SECONDS
        while True:
            pids = await conn.fetch(
                "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE usename = $1 AND ($2::text IS NULL OR datname = $2) "
                "AND pid <> pg_backend_pid()",
                user,
                None if everywhere else database,
            )
            if not pids:
                return
            if time.monotonic() > deadline:
                raise TransientError(
                    f"{len(pids)} sessions of the import login did not end within "
                    f"{TERMINATE_SECONDS:.0f}s of pg_terminate_backend; the step is retried",
                    login=user,
                    database=database,
                )
            await asyncio.sleep(0.01)

    async def running_statements(
        self, dsn: Dsn, database: str, user: str | None
    ) -> list[RunningStatement]:
        conn = await self._maintenance(dsn)
        try:
            rows = await conn.fetch(
                "SELECT extract(epoch FROM clock_timestamp() - query_start)::float8, "
                "left(query, $3) FROM pg_stat_activity "
                "WHERE state = 'active' AND datname = $1 AND ($2::text IS NULL OR usename = $2) "
                "AND pid <> pg_backend_pid() AND query_start IS NOT NULL "
                "ORDER BY query_start",
                database,
                user,
                STATEMENT_TEXT_LIMIT,
            )
        except asyncpg.PostgresError as exc:
            raise self._error(exc, dsn, what="listing statements", database=database) from exc
        finally:
            await conn.close()
        return [RunningStatement(max(0.0, float(seconds)), text or "") for seconds, text in rows]

    async def end_sessions(self, dsn: Dsn, database: str, user: str | None) -> None:
        conn = await self._maintenance(dsn)
        try:
            pids = await conn.fetch(
                "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = $1 AND ($2::text IS NULL OR usename = $2) "
                "AND pid <> pg_backend_pid()",
                database,
                user,
            )
        except asyncpg.PostgresError as exc:
            raise self._error(exc, dsn, what="ending sessions", database=database) from exc
        finally:
            await conn.close()
        log.info(
            "shadow.sessions_ended",
            dsn=dsn.masked(),
            database=database,
            user=user,
            sessions=len(pids),
        )

    def _login_error(
        self, exc: Exception, dsn: Dsn, what: str, role: str, database: str | None
    ) -> EnvrestoreError:
        cls: type[EnvrestoreError] = PermanentError
        hint = ""
        if isinstance(exc, asyncpg.InsufficientPrivilegeError):
            cls = BadInput
            hint = "; the DSN's user needs CREATEROLE (or superuser) and to own the shadow"
        elif isinstance(exc, asyncpg.ObjectInUseError | asyncpg.LockNotAvailableError):
            cls, hint = TransientError, "; the step is retried"
        return cls(
            f"{quote_server_text(str(exc))}{hint} (while {what})",
            dsn=dsn.masked(),
            host=dsn.socket or dsn.host,
            port=dsn.port,
            login=role,
            database=database,
        )

    async def sanity_check(self, dsn: Dsn) -> dict[str, int]:
        return await self.engine.list_tables(dsn)

    async def drop_database(self, dsn: Dsn, name: str) -> None:
        if name == dsn.database:
            raise Refused(f"refusing to drop the live database {name!r} as a shadow/rollback")
        conn = await self._maintenance(dsn)
        try:
            force = " WITH (FORCE)" if conn.get_server_version().major >= 13 else ""
            await conn.execute(f"DROP DATABASE IF EXISTS {_q(name)}{force}")
        except asyncpg.PostgresError as exc:
            raise self._error(exc, dsn, what="dropping", database=name) from exc
        finally:
            await conn.close()
        log.info("shadow.dropped", engine="postgresql", dsn=dsn.masked(), database=name)

    # ------------------------------------------------------------ switch

    async def _terminate(self, conn: asyncpg.Connection, database: str) -> None:
        """End every session on `database` (new ones are already refused)."""
        deadline = time.monotonic() + TERMINATE_SECONDS
        while True:
            pids = await conn.fetch(
                "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                database,
            )
            if not pids:
                return
            if time.monotonic() > deadline:
                raise TransientError(
                    f"{len(pids)} sessions on database {database!r} did not end within "
                    f"{TERMINATE_SECONDS:.0f}s of pg_terminate_backend; the switch is retried",
                    database=database,
                )
            await asyncio.sleep(0.01)

    async def swap_in(self, dsn: Dsn, live: str, incoming: str, outgoing: str) -> SwitchReport:
        """Rename live to `outgoing` and `incoming` to live; finish a half-done swap."""
        conn = await self._maintenance(dsn)
        try:
            return await self._swap(conn, dsn, live, incoming, outgoing)
        except asyncpg.PostgresError as exc:
            raise self._error(exc, dsn, what="switch", database=live) from exc
        finally:
            await conn.close()

    async def _swap(
        self, conn: asyncpg.Connection, dsn: Dsn, live: str, incoming: str, outgoing: str
    ) -> SwitchReport:
        rows = await conn.fetch(
            "SELECT datname, datallowconn FROM pg_database WHERE datname = ANY($1::text[])",
            [live, incoming, outgoing],
        )
        allowed = {row["datname"]: row["datallowconn"] for row in rows}
        if incoming not in allowed:
            if live in allowed and outgoing in allowed:
                # Done earlier; a worker that died before re-allowing connections is repaired.
                for name in (live, outgoing):
                    if not allowed[name]:
                        await conn.execute(f"ALTER DATABASE {_q(name)} ALLOW_CONNECTIONS true")
                log.info("shadow.switch_already_done", engine="postgresql", live=live)
                return SwitchReport(0.0, already_done=True)
            raise NotFound(
                f"database {incoming!r} does not exist on {self._where(dsn)}: nothing to swap "
                f"into {live!r}; prepare and import it first",
                dsn=dsn.masked(),
                database=incoming,
            )
        if live in allowed and outgoing in allowed:
            raise Conflict(
                f"database {outgoing!r} already exists beside {live!r} and {incoming!r} on "
                f"{self._where(dsn)}; drop it or use another tag",
                dsn=dsn.masked(),
                database=outgoing,
            )
        if live not in allowed and outgoing not in allowed:
            raise NotFound(
                f"database {live!r} does not exist on {self._where(dsn)}; nothing to switch",
                dsn=dsn.masked(),
                database=live,
            )

        # Outside the window: the incoming database is not live yet.
        await conn.execute(f"ALTER DATABASE {_q(incoming)} ALLOW_CONNECTIONS false")
        await self._terminate(conn, incoming)

        started = time.monotonic()
        if live in allowed:
            await conn.execute(f"ALTER DATABASE {_q(live)} ALLOW_CONNECTIONS false")
            try:
                await self._terminate(conn, live)
                async with conn.transaction():
                    await conn.execute(f"ALTER DATABASE {_q(live)} RENAME TO {_q(outgoing)}")
                    await conn.execute(f"ALTER DATABASE {_q(incoming)} RENAME TO {_q(live)}")
                    await conn.execute(f"ALTER DATABASE {_q(live)} ALLOW_CONNECTIONS true")
            except BaseException:
                # Nothing was renamed (one transaction): live takes connections again.
                await conn.execute(f"ALTER DATABASE {_q(live)} ALLOW_CONNECTIONS true")
                raise
        else:
            # Half-done by an older attempt: live is already the rollback point.
            async with conn.transaction():
                await conn.execute(f"ALTER DATABASE {_q(incoming)} RENAME TO {_q(live)}")
                await conn.execute(f"ALTER DATABASE {_q(live)} ALLOW_CONNECTIONS true")
        window = time.monotonic() - started
        await conn.execute(f"ALTER DATABASE {_q(outgoing)} ALLOW_CONNECTIONS true")
        log.info(
            "shadow.switched",
            engine="postgresql",
            dsn=dsn.masked(),
            incoming=incoming,
            outgoing=outgoing,
            window_seconds=round(window, 4),
        )
        return SwitchReport(window, already_done=False)
