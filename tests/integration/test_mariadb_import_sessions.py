"""How many sessions a MariaDB import uses, and who they log in as."""

from __future__ import annotations

import uuid

import pytest

from envrestore.pipelines.engines import mariadb_import
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
