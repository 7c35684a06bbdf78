"""How many sessions a MariaDB import uses, and who they log in as."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from envrestore.pipelines.engines import mariadb_import, mariadb_split
from envrestore.pipelines.engines.mariadb import MariaDbEngine
from envrestore.pipelines.engines.mariadb_shadow import MariaDbShadow
from envrestore.pipelines.engines.shadow import create_import_login, drop_import_login
from envrestore.pipelines.errors import BadInput
from tests.support.databases import _mariadb_admin

pytestmark = pytest.mark.integration

SHADOW = MariaDbShadow(MariaDbEngine())


async def test_auto_is_one_session_per_server_core_between_2_and_4(make_mariadb_db):
    live = make_mariadb_db()
    [[cores]] = await SHADOW.engine.query(live, "SELECT @@thread_pool_size;")
    expected = min(max(int(cores), 2), 4)
    assert await mariadb_import.sessions_for(SHADOW, live, "auto") == expected
    assert await mariadb_import.sessions_for(SHADOW, live, 7) == 7  # a number is honoured
    with pytest.raises(BadInput, match="1 to 8"):
        await mariadb_import.sessions_for(SHADOW, live, 9)


async def test_auto_stays_below_the_logins_connection_limit(make_mariadb_db, mariadb_server):
    live = make_mariadb_db()
    tag = "s" + uuid.uuid4().hex[:11]
    login = await create_import_login(live, live.database, tag)
    try:
        assert login.user is not None
        [[limit]] = await SHADOW.engine.query(login.dsn, "SELECT @@max_user_connections;")
        # the largest import, its own scripts and a spare
        assert int(limit) == mariadb_import.MAX_SESSIONS + 2
        for host in ("%", "localhost"):
            _mariadb_admin(
                mariadb_server, f"ALTER USER '{login.user}'@'{host}' WITH MAX_USER_CONNECTIONS 2"
            )
        assert await mariadb_import.sessions_for(SHADOW, login.dsn, "auto") == 1
    finally:
        await drop_import_login(live, tag)


def _big_table(*, hostile: bytes) -> bytes:
    """A table loaded in 16 INSERTs of ~256 KB (split past 1 MiB), then another table."""
    out = [b"CREATE TABLE big (id INT, v VARCHAR(600) CHARACTER SET utf8mb4);\n", hostile]
    row = b"(%d,'" + b"\xe9" * 250 + b"')"
    for block in range(16):
        rows = b",".join(row % (block * 1000 + n) for n in range(1000))
        out.append(b"INSERT INTO `big` VALUES " + rows + b";\n")
    out.append(b"CREATE TABLE after_big (i INT);\nCOMMIT;\n")
    return b"".join(out)


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for at in range(0, len(data), 1 << 16):
        yield data[at : at + (1 << 16)]


@pytest.mark.parametrize(
    "hostile",
    [
        # The dump's own transaction: one session imports it (its COMMIT at the end);
        # split, a session waited on the other's table lock until the lock wait timeout.
        b"SET NAMES latin1;\nSET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ;\n"
        b"SET autocommit=0;\n",
        # A setting in lower case: every session must read the rows as latin1.
        b"set names latin1;\n",
    ],
)
async def test_the_split_imports_what_one_session_imports(make_mariadb_db, monkeypatch, hostile):
    monkeypatch.setattr(mariadb_split, "SPLIT_AFTER_BYTES", 1 << 20)
    live = make_mariadb_db()
    dump = _big_table(hostile=hostile)
    report = await mariadb_import.import_dump(
        SHADOW, live, _chunks(dump), on_progress=None, connections=2
    )
    assert report.connections == 2
    rows = await SHADOW.engine.query(
        live,
        "SELECT COUNT(*), SUM(v = REPEAT(_utf8mb4 0xC3A9, 250)) FROM big;"
        " SELECT COUNT(*) FROM information_schema.tables"
        f" WHERE table_schema = '{live.database}' AND table_name = 'after_big';",
    )
    assert rows == [["16000", "16000"], ["1"]]
