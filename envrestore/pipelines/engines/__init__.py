"""Database engines: dump, check and count rows of MariaDB/MySQL and PostgreSQL databases."""

from __future__ import annotations

from envrestore.pipelines.engines.base import DatabaseEngine, engine_for, find_client

__all__ = ["DatabaseEngine", "engine_for", "find_client"]
