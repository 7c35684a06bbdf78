"""MariaDB shadow databases: import with the `mariadb` client, swap with one RENAME TABLE.

MariaDB cannot rename a database, but one multi-table `RENAME TABLE` moving live's
tables into the rollback database and the shadow's into live is atomic. What it
does not move, measured on 10.11 (tests/integration/test_shadow_switch.py):

- a table with triggers cannot change database: the whole statement fails with
  ERROR 1435 "Trigger in wrong schema";
- a view cannot change database (ERROR 1450 "Changing schema ... is not allowed");
  the views left behind name their database explicitly, so they keep pointing at
  the old database's tables;
- routines and events belong to their database and do not follow tables.

So the switch drops the triggers of both sides, renames, and recreates the
shadow's triggers, views, routines and events in live from their definitions
(read with SHOW CREATE, which prints same-database names unqualified), all inside
the measured window; the old live objects are recreated in the rollback database
afterwards. The definitions are saved first in a table of the rollback database
(`__envrestore_switch`), so a worker dying after a DROP TRIGGER loses nothing: the
next attempt reads them back and finishes.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from envrestore.pipelines.dsn import Dsn
from envrestore.pipelines.engines import mariadb_import
from envrestore.pipelines.engines.mariadb import MariaDbEngine, quote_identifier
from envrestore.pipelines.engines.mariadb_sql import (
    creates,
    definer_clause,
    denied,
    drops,
    lit,
    login_accounts,
    ordered,
    server_reason,
    unescape_batch,
    unhex,
    without_import_definers,
)
from envrestore.pipelines.engines.shadow import (
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
    EnvrestoreError,
    NotFound,
    PermanentError,
    Refused,
    TransientError,
)
from envrestore.pipelines.streams import DEFAULT_READAHEAD, run_consumer

log = structlog.get_logger(__name__)

#: Where a switch keeps the object definitions it is moving (in the outgoing database).
PLAN_TABLE = "__envrestore_switch"
#: A switch waits this long for running queries on live tables, then gives up (and is retried).
LOCK_WAIT_SECONDS = 10

_q = quote_identifier


@dataclass(frozen=True)
class MariaDbShadow:
    """The restore side of MariaDB/MySQL, on top of `MariaDbEngine`'s client handling."""

    engine: MariaDbEngine
    #: Bytes buffered toward each import session (ENVRESTORE_IMPORT_READAHEAD_MB).
    readahead: int = DEFAULT_READAHEAD

    # ------------------------------------------------------------ plumbing

    def _where(self, dsn: Dsn) -> str:
        return f"MariaDB at {dsn.socket or f'{dsn.host}:{dsn.port}'}"

    async def _run(self, dsn: Dsn, script: str, *, what: str, database: str) -> list[list[str]]:
        """Run a script as one session on the server (no default database); rows of its output."""

        async def stream() -> AsyncIterator[bytes]:
            yield script.encode("utf-8")

        admin = dsn.with_database("information_schema")
        try:
            out = await run_consumer(
                self.engine.client_argv(admin, "--batch", "--skip-column-names"),
                stream(),
                env=self.engine.environment(dsn),
                secrets=self.engine.secrets(dsn),
            )
        except EnvrestoreError as exc:
            raise self._error(exc, dsn, what=what, database=database) from exc
        return [line.split("\t") for line in out.splitlines()]

    def _error(
        self, exc: EnvrestoreError, dsn: Dsn, *, what: str, database: str
    ) -> EnvrestoreError:
        """The server's reason first, then what was being done; names and hosts in data."""
        detail = str(exc.data.get("stderr", exc.message))
        cls: type[EnvrestoreError] = type(exc)
        reason, data = server_reason(detail)
        if "lock wait timeout" in detail.lower():
            cls = TransientError
            reason += (
                f"; a long query held a lock on the live tables for {LOCK_WAIT_SECONDS}s,"
                " the step is retried"
            )
        return cls(
            f"{reason} ({what} of database {database!r})" if database else f"{reason} ({what})",
            dsn=dsn.masked(),
            database=database,
            where=self._where(dsn),
            # The client echoes the failing statement (rows of site data): keep its verdict only.
            stderr=reason[:500],
            **data,
        )

    async def _existing(self, dsn: Dsn, *names: str) -> set[str]:
        rows = await self._run(
            dsn,
            "SELECT HEX(schema_name) FROM information_schema.schemata WHERE schema_name IN ("
            + ", ".join(lit(name) for name in names)
            + ");",
            what="listing databases",
            database=names[0],
        )
        return {unhex(row[0]) for row in rows if row and row[0]}

    async def _tables(self, dsn: Dsn, database: str) -> list[str]:
        """Everything RENAME TABLE moves: base tables, sequences; not views, not the plan."""
        rows = await self._run(
            dsn,
            "SELECT HEX(table_name) FROM information_schema.tables "
            f"WHERE table_schema = {lit(database)} AND table_type <> 'VIEW' "
            f"AND table_name <> {lit(PLAN_TABLE)} ORDER BY table_name;",
            what="listing tables",
            database=database,
        )
        return [unhex(row[0]) for row in rows if row and row[0]]

    # ------------------------------------------------------------ prepare, import, check

    async def prepare_shadow(self, dsn: Dsn, names: ShadowNames) -> None:
        rows = await self._run(
            dsn,
            "SELECT default_character_set_name, default_collation_name "
            f"FROM information_schema.schemata WHERE schema_name = {lit(names.live)};",
            what="reading the charset",
            database=names.live,
        )
        if (not rows or len(rows[0]) < 2) and names.shadow == names.live:
            # In-place wipe retried after its DROP: live is gone, take the server's defaults.
            log.warning("shadow.recreating_live_with_defaults", dsn=dsn.masked())
            await self._run(
                dsn,
                f"CREATE DATABASE IF NOT EXISTS {_q(names.live)};",
                what="recreating",
                database=names.live,
            )
            return
        if not rows or len(rows[0]) < 2:
            raise NotFound(
                f"database {names.live!r} does not exist on {self._where(dsn)}; create it or "
                "fix the DSN",
                dsn=dsn.masked(),
                database=names.live,
            )
        charset, collation = rows[0][0], rows[0][1]
        await self._run(
            dsn,
            f"DROP DATABASE IF EXISTS {_q(names.shadow)};\n"
            f"CREATE DATABASE {_q(names.shadow)} CHARACTER SET {_q(charset)} "
            f"COLLATE {_q(collation)};",
            what="creating the shadow",
            database=names.shadow,
        )
        log.info("shadow.prepared", engine="mariadb", dsn=dsn.masked(), shadow=names.shadow)

    async def import_into(
        self,
        dsn: Dsn,
        chunks: AsyncIterator[bytes],
        *,
        on_progress: ProgressCallback | None = None,
        connections: int | Literal["auto"] = 1,
    ) -> ImportReport:
        """`mariadb --binary-mode` fed the dump over 1 to 8 sessions (`mariadb_import`)."""
        return await mariadb_import.import_dump(
            self, dsn, chunks, on_progress=on_progress, connections=connections
        )

    async def sanity_check(self, dsn: Dsn) -> dict[str, int]:
        return await self.engine.list_tables(dsn)

    async def drop_database(self, dsn: Dsn, name: str) -> None:
        if name == dsn.database:
            raise Refused(f"refusing to drop the live database {name!r} as a shadow/rollback")
        await self._run(dsn, f"DROP DATABASE IF EXISTS {_q(name)};", what="dropping", database=name)
        log.info("shadow.dropped", engine="mariadb", dsn=dsn.masked(), database=name)

    # ------------------------------------------------------------ least privilege

    async def create_import_login(self, dsn: Dsn, database: str, tag: str) -> ImportLogin:
        """A user per job granted only on `database`; no GRANT OPTION, nothing global.

        `_` and `%` are wildcards in database-level grants, so the name is escaped:
        an unescaped grant on `a_b` would also let the dump create and fill `aXb`.
        """
        user = import_login_name(tag)
        password = secrets.token_urlsafe(24)
        await self.drop_import_login(dsn, tag)
        pattern = database.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%")
        accounts = login_accounts(user)
        script = "".join(
            f"CREATE USER {account} IDENTIFIED BY '{password}' "
            f"WITH MAX_USER_CONNECTIONS {mariadb_import.LOGIN_MAX_CONNECTIONS};\n"
            f"GRANT ALL PRIVILEGES ON {_q(pattern)}.* TO {account};\n"
            for account in accounts
        )
        try:
            await self._run(dsn, script, what="creating the import user", database=database)
        except PermanentError as exc:
            if not denied(exc):
                raise
            await self.drop_import_login(dsn, tag)
            log.warning("shadow.no_import_user", engine="mariadb", reason=exc.message)
            return ImportLogin(
                dsn=dsn.with_database(database),
                user=None,
                reason=(
                    "the DSN user cannot create users or grant on the shadow database "
                    "(needs CREATE USER and GRANT OPTION); the import runs as the DSN user, "
                    "guarded by the statement filter alone"
                ),
            )
        login = dataclasses.replace(
            dsn,
            user=user,
            password=password,
            database=database,
            params={k: v for k, v in dsn.params.items() if not k.startswith("password")},
        )
        log.info("shadow.import_user_created", engine="mariadb", user=user, database=database)
        return ImportLogin(dsn=login, user=user)

    async def hand_over(self, dsn: Dsn, database: str, login: ImportLogin) -> None:
        """Make the DSN user the definer of the triggers, views, routines and events
        the import login defined (tables have no owner in MariaDB).

        Read as the login (only a routine's definer may read its body without
        global rights), recreated by the DSN user without a DEFINER clause: they
        then run with the site's rights, never the login's (dropped next) or root's.
        """
        if login.user is None:
            return
        objects = without_import_definers(await self._capture(login.dsn, database))["objects"]
        if not objects:
            return
        await self._run(
            dsn,
            "DELIMITER ;;\n" + drops(database, objects, ";;") + creates(database, objects),
            what="giving the dump's triggers, views and routines to the DSN user",
            database=database,
        )

    async def drop_import_login(self, dsn: Dsn, tag: str) -> None:
        user = import_login_name(tag)
        rows = await self._run(
            dsn,
            f"SELECT id FROM information_schema.processlist WHERE user = {lit(user)};",
            what="listing the import user's sessions",
            database=user,
        )
        await self._kill(dsn, [row[0] for row in rows if row and row[0].isdigit()])
        accounts = ", ".join(login_accounts(user))
        try:
            await self._run(
                dsn,
                f"DROP USER IF EXISTS {accounts};",
                what="dropping the import user",
                database=user,
            )
        except PermanentError as exc:
            if not denied(exc):
                raise
            # Without CREATE USER there never was an import user to drop.
            log.info("shadow.import_user_not_droppable", engine="mariadb", reason=exc.message)

    async def running_statements(
        self, dsn: Dsn, database: str, user: str | None
    ) -> list[RunningStatement]:
        rows = await self._run(
            dsn,
            "SELECT time_ms, HEX(LEFT(info, 300)) FROM information_schema.processlist "
            f"WHERE db = {lit(database)} AND command = 'Query' AND id <> CONNECTION_ID()"
            + (f" AND user = {lit(user)}" if user else "")
            + " ORDER BY time_ms DESC;",
            what="listing running statements",
            database=database,
        )
        return [
            RunningStatement(float(row[0]) / 1000, unhex(row[1])) for row in rows if len(row) == 2
        ]

    async def end_sessions(self, dsn: Dsn, database: str, user: str | None) -> None:
        rows = await self._run(
            dsn,
            f"SELECT id FROM information_schema.processlist WHERE db = {lit(database)} "
            "AND id <> CONNECTION_ID()" + (f" AND user = {lit(user)}" if user else "") + ";",
            what="listing sessions",
            database=database,
        )
        await self._kill(dsn, [row[0] for row in rows if row and row[0].isdigit()])

    async def _kill(self, dsn: Dsn, ids: list[str]) -> None:
        """Best effort: a DSN user without CONNECTION ADMIN cannot end the import
        user's sessions (README, "What the DSN user needs"); that is logged."""
        for thread in ids:
            try:
                await self._run(dsn, f"KILL {int(thread)};", what="ending a session", database="")
            except PermanentError as exc:
                if "unknown thread" in str(exc.data.get("stderr", "")).lower():
                    continue
                log.warning("shadow.session_not_ended", thread=thread, reason=exc.message)

    # ------------------------------------------------------------ object definitions

    async def _capture(self, dsn: Dsn, database: str) -> dict[str, Any]:
        """Tables and the definitions of every trigger, view, routine and event of a database."""
        db = lit(database)
        rows = await self._run(
            dsn,
            f"""
SELECT 'G', HEX(trigger_name), HEX(event_object_table), action_timing, event_manipulation,
       HEX(action_statement), HEX(definer), HEX(sql_mode), HEX(collation_connection)
  FROM information_schema.triggers WHERE trigger_schema = {db}
  ORDER BY event_object_table, action_timing, event_manipulation, action_order;
SELECT 'V', HEX(table_name) FROM information_schema.views WHERE table_schema = {db};
SELECT 'R', routine_type, HEX(routine_name) FROM information_schema.routines
  WHERE routine_schema = {db};
SELECT 'E', HEX(event_name) FROM information_schema.events WHERE event_schema = {db};
""",
            what="reading triggers, views, routines and events",
            database=database,
        )
        objects: list[dict[str, str]] = []
        shows: list[tuple[str, str]] = []
        for row in rows:
            if row[0] == "G":
                name, table = unhex(row[1]), unhex(row[2])
                create = (
                    f"CREATE {definer_clause(unhex(row[6]))}TRIGGER {_q(name)} {row[3]} {row[4]} "
                    f"ON {_q(table)} FOR EACH ROW {unhex(row[5])}"
                )
                objects.append(
                    {
                        "kind": "TRIGGER",
                        "name": name,
                        "create": create,
                        "sql_mode": unhex(row[7]),
                        "collation": unhex(row[8]),
                    }
                )
            elif row[0] == "V":
                shows.append(("VIEW", unhex(row[1])))
            elif row[0] == "R":
                if row[1] not in ("PROCEDURE", "FUNCTION"):
                    raise Refused(
                        f"database {database!r} holds a {row[1]} ({unhex(row[2])!r}); "
                        "only procedures and functions can be moved by a switch",
                        database=database,
                    )
                shows.append((row[1], unhex(row[2])))
            elif row[0] == "E":
                shows.append(("EVENT", unhex(row[1])))
        if shows:
            # In the object's own database SHOW CREATE prints its same-database names unqualified.
            script = f"USE {_q(database)};\n" + "".join(
                f"SHOW CREATE {kind} {_q(name)};\n" for kind, name in shows
            )
            lines = await self._run(
                dsn, script, what="reading object definitions", database=database
            )
            if len(lines) != len(shows):
                raise PermanentError(
                    f"reading the definitions in database {database!r} returned {len(lines)} "
                    f"rows for {len(shows)} objects; cannot switch safely",
                    database=database,
                )
            for (kind, name), line in zip(shows, lines, strict=True):
                fields = [unescape_batch(field) for field in line]
                if kind == "VIEW":
                    obj = {"create": fields[1], "sql_mode": "", "collation": fields[3]}
                elif kind == "EVENT":
                    obj = {"create": fields[3], "sql_mode": fields[1], "collation": fields[5]}
                    obj["time_zone"] = fields[2]
                else:
                    obj = {"create": fields[2], "sql_mode": fields[1], "collation": fields[4]}
                if obj["create"] in ("", "NULL"):
                    raise BadInput(
                        f"the DSN's user cannot read the definition of {kind} {name!r} in "
                        f"{database!r}; grant it SHOW VIEW / the routine's privileges",
                        database=database,
                    )
                objects.append({"kind": kind, "name": name, **obj})
        return {"tables": await self._tables(dsn, database), "objects": ordered(objects)}

    async def _plan(
        self, dsn: Dsn, live: str, incoming: str, outgoing: str, charset: Sequence[str]
    ) -> dict[str, Any]:
        """The saved plan of this swap, or a fresh one saved now (before anything is dropped)."""
        table = f"{_q(outgoing)}.{_q(PLAN_TABLE)}"
        await self._run(
            dsn,
            f"CREATE DATABASE IF NOT EXISTS {_q(outgoing)} CHARACTER SET {_q(charset[0])} "
            f"COLLATE {_q(charset[1])};\n"
            f"CREATE TABLE IF NOT EXISTS {table} (id INT PRIMARY KEY, plan LONGBLOB NOT NULL) "
            "ENGINE=InnoDB;",
            what="creating the rollback database",
            database=outgoing,
        )
        read = f"SELECT HEX(plan) FROM {table} WHERE id = 1;"
        rows = await self._run(dsn, read, what="reading the switch plan", database=outgoing)
        if not rows:
            plan = {
                "incoming": await self._capture(dsn, incoming),
                "outgoing": await self._capture(dsn, live),
            }
            blob = json.dumps(plan).encode("utf-8").hex()
            # One row: the plan is saved whole or not at all; a concurrent attempt's wins.
            rows = await self._run(
                dsn,
                f"INSERT IGNORE INTO {table} VALUES (1, X'{blob}');\n{read}",
                what="saving the switch plan",
                database=outgoing,
            )
        result: dict[str, Any] = json.loads(bytes.fromhex(rows[0][0]))
        return result

    # ------------------------------------------------------------ switch

    async def swap_in(self, dsn: Dsn, live: str, incoming: str, outgoing: str) -> SwitchReport:
        """Move live's tables to `outgoing` and `incoming`'s to live, objects recreated."""
        existing = await self._existing(dsn, live, incoming, outgoing)
        if live not in existing:
            raise NotFound(
                f"database {live!r} does not exist on {self._where(dsn)}; nothing to switch",
                dsn=dsn.masked(),
                database=live,
            )
        if incoming not in existing:
            if outgoing in existing:
                # Finished earlier; only the plan table may be left by a worker that died.
                await self._run(
                    dsn,
                    f"DROP TABLE IF EXISTS {_q(outgoing)}.{_q(PLAN_TABLE)};",
                    what="tidying the switch plan",
                    database=outgoing,
                )
                log.info("shadow.switch_already_done", engine="mariadb", live=live)
                return SwitchReport(0.0, already_done=True)
            raise NotFound(
                f"database {incoming!r} does not exist on {self._where(dsn)}: nothing to swap "
                f"into {live!r}; prepare and import it first",
                dsn=dsn.masked(),
                database=incoming,
            )
        charset = await self._run(
            dsn,
            "SELECT default_character_set_name, default_collation_name FROM "
            f"information_schema.schemata WHERE schema_name = {lit(live)};",
            what="reading the charset",
            database=live,
        )
        plan = await self._plan(dsn, live, incoming, outgoing, charset[0])
        inc, out = plan["incoming"], plan["outgoing"]

        # Outside the window: the incoming database is not live yet.
        drop_incoming = drops(incoming, [o for o in inc["objects"] if o["kind"] == "TRIGGER"])
        if drop_incoming:
            await self._run(
                dsn, drop_incoming, what="dropping the shadow's triggers", database=incoming
            )

        renamed = await self._renamed(dsn, incoming, outgoing, inc["tables"], out["tables"])
        script = ["DELIMITER ;;", f"SET SESSION lock_wait_timeout = {LOCK_WAIT_SECONDS};;"]
        if not renamed:
            live_tables = await self._tables(dsn, live)
            moves = [f"{_q(live)}.{_q(t)} TO {_q(outgoing)}.{_q(t)}" for t in live_tables]
            moves += [f"{_q(incoming)}.{_q(t)} TO {_q(live)}.{_q(t)}" for t in inc["tables"]]
            script.append(drops(live, [o for o in out["objects"] if o["kind"] == "TRIGGER"], ";;"))
            if moves:
                script.append("RENAME TABLE " + ", ".join(moves) + ";;")
        script.append(drops(live, out["objects"] + inc["objects"], ";;"))
        script.append(creates(live, inc["objects"]))
        started = time.monotonic()
        try:
            await self._run(dsn, "\n".join(script), what="switch", database=live)
        except EnvrestoreError:
            if not await self._renamed(dsn, incoming, outgoing, inc["tables"], out["tables"]):
                # Nothing moved: give live back the triggers the script dropped.
                await self._run(
                    dsn,
                    "DELIMITER ;;\n"
                    + drops(live, [o for o in out["objects"] if o["kind"] == "TRIGGER"], ";;")
                    + creates(live, [o for o in out["objects"] if o["kind"] == "TRIGGER"]),
                    what="restoring live's triggers after a failed switch",
                    database=live,
                )
            raise
        window = time.monotonic() - started

        await self._run(
            dsn,
            "DELIMITER ;;\n"
            + drops(outgoing, out["objects"], ";;")
            + creates(outgoing, out["objects"])
            + f"DROP DATABASE IF EXISTS {_q(incoming)};;\n"
            + f"DROP TABLE IF EXISTS {_q(outgoing)}.{_q(PLAN_TABLE)};;\n",
            what="keeping the rollback point",
            database=outgoing,
        )
        log.info(
            "shadow.switched",
            engine="mariadb",
            dsn=dsn.masked(),
            incoming=incoming,
            outgoing=outgoing,
            tables=len(inc["tables"]),
            window_seconds=round(window, 4),
        )
        return SwitchReport(window, already_done=False)

    async def _renamed(
        self,
        dsn: Dsn,
        incoming: str,
        outgoing: str,
        incoming_tables: list[str],
        outgoing_tables: list[str],
    ) -> bool:
        """Whether the (atomic) RENAME TABLE of this plan has already happened."""
        if incoming_tables:
            return incoming_tables[0] not in await self._tables(dsn, incoming)
        if outgoing_tables:
            return outgoing_tables[0] in await self._tables(dsn, outgoing)
        return True
