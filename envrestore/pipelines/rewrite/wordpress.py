"""Where an imported WordPress database says it lives: its `home` option.

The table prefix is whatever the site chose (`wp_`, `wp7x_`, none), so options
tables are found by shape: a base table whose name ends in `options` with
`option_name` and `option_value` columns. A multisite has one per site
(`wp_options`, `wp_2_options`); the main site's has the shortest name.
"""

from __future__ import annotations

from envrestore.pipelines.dsn import Dsn
from envrestore.pipelines.engines.mariadb import quote_identifier as mariadb_quote
from envrestore.pipelines.engines.postgres import PostgresEngine
from envrestore.pipelines.engines.postgres import quote_identifier as postgres_quote
from envrestore.pipelines.rewrite.mariadb import MariaDbRewriter
from envrestore.pipelines.rewrite.model import RewriteSettings

_MARIADB_TABLES = """
SELECT HEX(c.table_name) FROM information_schema.columns c
JOIN information_schema.tables t
  ON t.table_schema = c.table_schema AND t.table_name = c.table_name
WHERE c.table_schema = DATABASE() AND t.table_type = 'BASE TABLE'
  AND c.table_name LIKE '%options' AND c.column_name IN ('option_name', 'option_value')
GROUP BY c.table_name HAVING COUNT(DISTINCT c.column_name) = 2;
"""
_POSTGRES_TABLES = r"""
SELECT c.table_schema, c.table_name FROM information_schema.columns c
JOIN information_schema.tables t
  ON t.table_schema = c.table_schema AND t.table_name = c.table_name
WHERE t.table_type = 'BASE TABLE' AND c.table_name LIKE '%options'
  AND c.column_name IN ('option_name', 'option_value')
  AND c.table_schema NOT IN ('pg_catalog', 'information_schema')
GROUP BY c.table_schema, c.table_name HAVING COUNT(DISTINCT c.column_name) = 2
"""


def _pick(options: dict[str, str]) -> str | None:
    for name in ("home", "siteurl"):
        value = options.get(name, "").strip()
        if value:
            return value
    return None


async def wordpress_home(dsn: Dsn, *, settings: RewriteSettings | None = None) -> str | None:
    """The main site's `home` option (else `siteurl`), or None when there is none:
    the old URL to rewrite when a dump is imported under another address."""
    settings = settings or RewriteSettings()
    if dsn.engine == "mariadb":
        client = MariaDbRewriter(dsn, settings).client
        tables = [bytes.fromhex(row[0]).decode() for row in await client(_MARIADB_TABLES) if row]
        if not tables:
            return None
        table = min(tables, key=lambda name: (len(name), name))
        rows = await client(
            f"SELECT option_name, HEX(option_value) FROM {mariadb_quote(table)} "
            "WHERE option_name IN ('home', 'siteurl');"
        )
        return _pick({row[0]: bytes.fromhex(row[1]).decode("utf-8", "replace") for row in rows})
    conn = await PostgresEngine(bin_dir=settings.pg_bin_dir).connect(dsn)
    try:
        found = await conn.fetch(_POSTGRES_TABLES)
        if not found:
            return None
        schema, table = min(
            ((str(s), str(t)) for s, t in found),
            key=lambda st: (len(st[1]), st[0] != "public", st),
        )
        records = await conn.fetch(
            f"SELECT option_name, option_value FROM {postgres_quote(schema)}."
            f"{postgres_quote(table)} WHERE option_name IN ('home', 'siteurl')"
        )
        return _pick({str(name): str(value or "") for name, value in records})
    finally:
        await conn.close()
