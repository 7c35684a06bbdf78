"""Type names for ledger access, so functions accept a pooled or a plain connection."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

#: A connection inside a transaction: plain, or borrowed from a pool.
Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"
#: A row as read (asyncpg.Record) or built by hand (a dict).
Row: TypeAlias = "asyncpg.Record | Mapping[str, Any]"
