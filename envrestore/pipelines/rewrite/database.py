"""Rewrite a site's old URLs to new ones in every table of a (shadow) database.

Like `wp search-replace`, but safe on an untrusted dump: every base table with a
key and text-like columns is read in batches by key (keyset pagination, never
the whole table), only rows in which the server finds an old form, and each
changed value is written back by key, PHP-serialized data kept valid
(`values.rewrite_value`). Tables without a primary key or NOT NULL unique key
are skipped and reported ("no_primary_key"): a row that cannot be named cannot
be updated without guessing. Key columns themselves are never rewritten.

Run it on the shadow database with the least-privileged login available: an
UPDATE fires the dump's triggers, so tables with triggers (or PostgreSQL rules)
are skipped ("has_triggers") unless `RewriteSettings.rewrite_tables_with_triggers`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import structlog

from envrestore.pipelines.dsn import Dsn
from envrestore.pipelines.rewrite.mariadb import MariaDbRewriter
from envrestore.pipelines.rewrite.model import (
    ProgressCallback,
    RewriteReport,
    RewriteSettings,
    TableReport,
)
from envrestore.pipelines.rewrite.postgres import PostgresRewriter
from envrestore.pipelines.rewrite.values import Replacer

__all__ = ["RewriteReport", "RewriteSettings", "TableReport", "rewrite_database"]

log = structlog.get_logger(__name__)


async def rewrite_database(
    dsn: Dsn,
    pairs: Replacer | Iterable[tuple[str, str]],
    *,
    settings: RewriteSettings,
    on_progress: ProgressCallback | None = None,
) -> RewriteReport:
    """Replace every old form of `pairs` by its new form in the database `dsn` names.

    `pairs` usually comes from `values.expand_url_pairs`. `on_progress` is called
    after each batch with the rows scanned so far. Each batch is committed on its
    own: a retry after a failure starts again and finds only what is left
    (rewriting is idempotent).
    """
    replacer = Replacer.of(pairs)
    started = time.monotonic()
    if not replacer.table:
        return RewriteReport(engine=dsn.engine, database=dsn.database)
    log.info("rewrite.start", dsn=dsn.masked(), forms=len(replacer.table))
    if dsn.engine == "mariadb":
        report = await MariaDbRewriter(dsn, settings).run(replacer, on_progress)
    else:
        report = await PostgresRewriter(dsn, settings).run(replacer, on_progress)
    log.info(
        "rewrite.done",
        dsn=dsn.masked(),
        seconds=round(time.monotonic() - started, 3),
        **report.totals(),
    )
    return report
