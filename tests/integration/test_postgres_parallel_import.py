"""The parallel PostgreSQL import on the real server: a pg_dump restored over 2 and 3
sessions through the import login equals its source, and a refused or failing
statement stops every session with nothing switched in."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from envrestore.pipelines.dsn import Dsn
from envrestore.pipelines.engines import postgres_split, shadow
from envrestore.pipelines.engines.postgres import PostgresEngine
from envrestore.pipelines.engines.postgres_shadow import PostgresShadow
from envrestore.pipelines.engines.shadow import import_login_name, shadow_names
from envrestore.pipelines.errors import PermanentError, UnsafeInput
from envrestore.pipelines.sqlsafety import FilterReport, filter_dump

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

POSTGRES = PostgresEngine()
SHADOW = PostgresShadow(POSTGRES)

SOURCE_SCHEMA = r"""
CREATE SCHEMA shop;
CREATE TABLE shop.customers (id serial PRIMARY KEY, email text UNIQUE NOT NULL);
INSERT INTO shop.customers (email) SELECT 'c' || n || '@example.com' FROM generate_series(1, 300) n;
CREATE TABLE shop.orders (
  id bigserial PRIMARY KEY,
  customer_id int NOT NULL REFERENCES shop.customers(id),
  note text,
  body text
);
INSERT INTO shop.orders (customer_id, note, body)
SELECT 1 + n % 300, E'tab\there; semi;\nline ' || n, repeat(md5(n::text), 1 + n % 40)
FROM generate_series(1, 20000) n;
CREATE INDEX orders_customer ON shop.orders (customer_id);
CREATE INDEX orders_note ON shop.orders (lower(note));
CREATE TABLE shop.audit (id serial PRIMARY KEY, what text);
CREATE FUNCTION shop.audit_order() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO shop.audit (what) VALUES ('order ' || NEW.id); RETURN NEW; END $$;
CREATE TRIGGER orders_audit AFTER INSERT ON shop.orders
  FOR EACH ROW EXECUTE FUNCTION shop.audit_order();
CREATE SEQUENCE shop.invoice_numbers START 1000;
SELECT nextval('shop.invoice_numbers') FROM generate_series(1, 17);
CREATE TABLE shop.events (at int NOT NULL, kind text) PARTITION BY RANGE (at);
CREATE TABLE shop.events_a PARTITION OF shop.events FOR VALUES FROM (0) TO (5000);
CREATE TABLE shop.events_b PARTITION OF shop.events FOR VALUES FROM (5000) TO (10000);
INSERT INTO shop.events SELECT n, 'k' || n % 7 FROM generate_series(0, 9999) n;
ALTER TABLE shop.events ADD PRIMARY KEY (at);
CREATE INDEX events_kind ON shop.events (kind);
COMMENT ON INDEX shop.orders_customer IS 'who ordered';
CREATE VIEW shop.big_orders AS SELECT id, customer_id FROM shop.orders WHERE length(body) > 600;
"""

#: What a user compares after a restore: rows, constraints, indexes, sequences, triggers.
CHECKS = {
    "rows": """
        SELECT c.relname, md5(string_agg(t::text, '|' ORDER BY t::text))
        FROM (SELECT 'customers' AS relname) c, shop.customers t GROUP BY 1
        UNION ALL SELECT 'orders', md5(string_agg(t::text, '|' ORDER BY t.id)) FROM shop.orders t
        UNION ALL SELECT 'audit', count(*)::text FROM shop.audit
        UNION ALL SELECT 'events', md5(string_agg(t::text, '|' ORDER BY t.at)) FROM shop.events t
        ORDER BY 1""",
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid), convalidated
        FROM pg_constraint WHERE connamespace = 'shop'::regnamespace ORDER BY 1, 2""",
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'shop'
        ORDER BY 1, 2""",
    "valid": """
        SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        WHERE c.relnamespace = 'shop'::regnamespace AND NOT i.indisvalid""",
    "sequences": """
        SELECT sequencename, last_value FROM pg_sequences WHERE schemaname = 'shop' ORDER BY 1""",
    "triggers": """
        SELECT tgrelid::regclass::text, tgname FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1""",
    "comments": "SELECT obj_description('shop.orders_customer'::regclass)",
    "partitions": """
        SELECT inhrelid::regclass::text, inhparent::regclass::text FROM pg_inherits
        ORDER BY 1, 2""",
}


async def _fetch(dsn: Dsn, sql: str) -> list[tuple[object, ...]]:
    conn = await POSTGRES.connect(dsn)
    try:
        return [tuple(row) for row in await conn.fetch(sql)]
    finally:
        await conn.close()


async def _state(dsn: Dsn) -> dict[str, list[tuple[object, ...]]]:
    return {name: await _fetch(dsn, sql) for name, sql in CHECKS.items()}


async def _filtered(data: bytes, chunk: int = 1 << 16) -> AsyncIterator[bytes]:
    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(data), chunk):
            yield data[start : start + chunk]

    async for block in filter_dump(chunks(), engine="postgresql", report=FilterReport()):
        yield block


@pytest.fixture
def admin(postgres_server: Dsn) -> Dsn:
    return postgres_server.with_database("postgres")


@pytest.fixture
def roles(admin: Dsn) -> Iterator[list[str]]:
    """Import logins a test makes; dropped after it (with what they own)."""
    made: list[str] = []
    yield made

    async def cleanup() -> None:
        conn = await POSTGRES.connect(admin)
        try:
            for role in made:
                with contextlib.suppress(asyncpg.PostgresError):
                    await conn.execute(f'DROP ROLE IF EXISTS "{role}"')
        finally:
            await conn.close()

    asyncio.run(cleanup())


@pytest.fixture
async def source(make_postgres_db) -> tuple[Dsn, bytes]:
    dsn = make_postgres_db()
    conn = await POSTGRES.connect(dsn)
    try:
        await conn.execute(SOURCE_SCHEMA)
    finally:
        await conn.close()
    dump = b"".join([chunk async for chunk in POSTGRES.dump(dsn)])
    return dsn, dump


def _recording(monkeypatch) -> list[postgres_split.Splitter]:
    made: list[postgres_split.Splitter] = []

    class Recording(postgres_split.Splitter):
        def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(postgres_split, "Splitter", Recording)
    return made


async def _import_as_login(live: Dsn, tag: str, data: AsyncIterator[bytes], connections: int):
    names = shadow_names(live.database, tag)
    await shadow.prepare_shadow(live, names)
    login = await SHADOW.create_import_login(live, names.shadow, tag)
    assert login.user is not None
    try:
        report = await SHADOW.import_into(login.dsn, data, connections=connections)
        await SHADOW.hand_over(live, names.shadow, login)
    finally:
        await SHADOW.drop_import_login(live, tag)
    return names, report


@pytest.mark.parametrize("connections", [2, 3])
async def test_a_dump_restored_over_n_sessions_equals_its_source(
    source, make_postgres_db, roles, monkeypatch, connections
):
    dsn, dump = source
    monkeypatch.setattr(postgres_split, "PIECE_BYTES", 256 << 10)  # the orders table: ~8 pieces
    splitters = _recording(monkeypatch)
    live = make_postgres_db()
    tag = f"par{uuid.uuid4().hex[:8]}"
    roles.append(import_login_name(tag))

    names, report = await _import_as_login(live, tag, _filtered(dump), connections)
    await shadow.switch(live, names)

    assert report.bytes > len(dump) // 2 and report.connections == connections
    assert splitters[0].stages == [
        ("pre", 1),
        ("data", connections),
        ("post", connections),
        ("serial", 1),
    ]
    assert await _state(live) == await _state(dsn)
    assert (await _fetch(live, "SELECT count(*) FROM shop.audit"))[0][0] == 0  # no trigger ran
    # The restored database works as the source did: the trigger fires on new rows,
    # the FK and the sequence hold.
    await _fetch(live, "INSERT INTO shop.orders (customer_id, note) VALUES (1, 'new')")
    assert await _fetch(live, "SELECT what FROM shop.audit") == [("order 20001",)]
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await _fetch(live, "INSERT INTO shop.orders (customer_id) VALUES (999999)")
    assert await _fetch(live, "SELECT nextval('shop.invoice_numbers')") == [(1017,)]


async def _sessions_of(admin: Dsn, role: str, *, state: str = "%") -> int:
    rows = await _fetch(
        admin,
        f"SELECT count(*) FROM pg_stat_activity WHERE usename = '{role}' AND state LIKE '{state}'",
    )
    return int(rows[0][0])  # type: ignore[call-overload]


async def _no_client_left(admin: Dsn, role: str) -> bool:
    """No psql of the import is still connected: a backend left idle waits for a client.
    (A killed client's backend ends at its next read, within moments.)"""
    for _ in range(40):
        if await _sessions_of(admin, role, state="idle%") == 0:
            return True
        await asyncio.sleep(0.05)
    return False


@pytest.mark.parametrize("connections", [2, 3])
@pytest.mark.parametrize("where", ["after the data", "between two tables"])
async def test_a_refused_statement_stops_every_session(
    source, make_postgres_db, admin, roles, connections, where
):
    """The filter's refusal mid-stream: every session ends, the statement never runs."""
    _, dump = source
    evil = b"DO $$ BEGIN CREATE TABLE public.escaped (a int); END $$;\n"
    at = (
        dump.index(b"ALTER TABLE ONLY shop.customers")
        if where == "after the data"
        else dump.index(b"COPY shop.orders")
    )
    bad = dump[:at] + evil + dump[at:]
    live = make_postgres_db()
    tag = f"par{uuid.uuid4().hex[:8]}"
    roles.append(import_login_name(tag))
    names = shadow_names(live.database, tag)
    await shadow.prepare_shadow(live, names)
    login = await SHADOW.create_import_login(live, names.shadow, tag)
    assert login.user is not None

    with pytest.raises(UnsafeInput, match="DO"):
        await SHADOW.import_into(login.dsn, _filtered(bad, 1 << 12), connections=connections)

    assert await _no_client_left(admin, login.user)

    shadow_dsn = live.with_database(names.shadow)
    assert await _fetch(shadow_dsn, "SELECT to_regclass('public.escaped') IS NULL") == [(True,)]
    await SHADOW.drop_import_login(live, tag)
    assert await _sessions_of(admin, login.user) == 0
    assert await POSTGRES.list_tables(live) == {}  # live untouched


async def test_a_failing_statement_in_one_session_stops_the_others(
    source, make_postgres_db, roles, admin
):
    _, dump = source
    at = dump.index(b"CREATE INDEX orders_customer")
    bad = dump[:at] + b"CREATE INDEX broken ON shop.orders (no_such_column);\n" + dump[at:]
    live = make_postgres_db()
    tag = f"par{uuid.uuid4().hex[:8]}"
    roles.append(import_login_name(tag))
    names = shadow_names(live.database, tag)
    await shadow.prepare_shadow(live, names)
    login = await SHADOW.create_import_login(live, names.shadow, tag)
    assert login.user is not None

    with pytest.raises(PermanentError, match=r"no_such_column.*post session [12] of 2") as caught:
        await SHADOW.import_into(login.dsn, _filtered(bad), connections=2)

    assert names.shadow in str(caught.value.data.get("database"))
    assert await _no_client_left(admin, login.user)
    # The serial stage (triggers, foreign keys) never started.
    shadow_dsn = live.with_database(names.shadow)
    assert await _fetch(shadow_dsn, "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal") == [
        (0,)
    ]
    # A killed psql's backend may finish its index build before it notices; the
    # restore's cleanup (dropping the login) ends it, as after a one-session failure.
    await SHADOW.drop_import_login(live, tag)
    assert await _sessions_of(admin, login.user) == 0
