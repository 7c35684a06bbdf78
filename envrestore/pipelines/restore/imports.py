"""The imports, run in parallel: each reads its part once, checks it, builds beside live.

import_db:    object → sha256 → gunzip (capped) → statement filter → client → shadow db
import_files: object → sha256 → gunzip (capped) → safe tar extraction → staging dir
apply_code:   likewise into a staging repository, which keeps the live history

Each verdict (sha256 against the manifest, archive and SQL safety) is in before
the step ends; `switch` depends on all three, so nothing live changes until then.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog

from envrestore.pipelines import trees
from envrestore.pipelines.archives.formats import extract_archive
from envrestore.pipelines.archives.tarpolicy import limits_for
from envrestore.pipelines.dsn import Dsn
from envrestore.pipelines.engines.shadow import (
    ImportWatch,
    ShadowNames,
    create_import_login,
    drop_import_login,
    hand_over,
    import_into,
    prepare_shadow,
    sanity_check,
)
from envrestore.pipelines.errors import EnvrestoreError, IntegrityError
from envrestore.pipelines.jobs.context import StepContext
from envrestore.pipelines.restore import busyfs
from envrestore.pipelines.restore.dumps import checked_dump
from envrestore.pipelines.restore.parts import PartStream, spool_dir
from envrestore.pipelines.restore.prepare import archive_rules, dump_cap, parts_of, targets_of
from envrestore.pipelines.restore.request import request_of
from envrestore.pipelines.restore.targets import RestoreTargets, naming_part
from envrestore.pipelines.sqlsafety import FilterReport

log = structlog.get_logger(__name__)


def _import_target(ctx: StepContext, targets: RestoreTargets) -> Dsn:
    names = targets.db_names
    live = targets.environment.dsn
    return live if request_of(ctx).in_place else live.with_database(names.shadow)


async def import_db(ctx: StepContext) -> dict[str, Any]:
    """Stream the dump, checked statement by statement, into the shadow database.

    The client connects as a login made for this job that can reach only the
    shadow (least privilege: a dump naming another database fails there too),
    under a watch that kills over-long statements and a stalled import.
    """
    await ctx.check_lease()
    targets = await targets_of(ctx)
    ref = (await parts_of(ctx))["database"]
    target = _import_target(ctx, targets)
    live = targets.environment.dsn
    if ctx.attempt > 1:
        # An earlier attempt died mid-import: start again from an empty database.
        await drop_import_login(live, targets.tag, settings=ctx.settings)
        names = targets.db_names
        if request_of(ctx).in_place:
            names = ShadowNames(live=names.live, shadow=names.live, rollback=names.rollback)
        await prepare_shadow(live, names, settings=ctx.settings)
    stream = PartStream(ctx, ref, max_output=dump_cap(ref.size))
    report = FilterReport()
    login = await create_import_login(live, target.database, targets.tag, settings=ctx.settings)
    try:
        with naming_part("database"):
            filtered = checked_dump(ctx, stream, engine=target.engine, report=report)
            # 1 to 8 sessions, or "auto": the engine sizes them by the DB server.
            connections = (
                ctx.settings.mariadb_import_connections
                if target.engine == "mariadb"
                else ctx.settings.postgres_import_connections
            )
            watch = ImportWatch(
                admin=live,
                user=login.user,
                statement_timeout=ctx.settings.import_statement_timeout,
                idle_timeout=ctx.settings.import_idle_timeout,
            )
            imported = await import_into(
                login.dsn, filtered, connections=connections, settings=ctx.settings, watch=watch
            )
            verdict = stream.verdict()
        await hand_over(live, target.database, login, settings=ctx.settings)
    finally:
        await _drop_login_quietly(ctx, live, targets.tag)
    tables = await sanity_check(target, settings=ctx.settings)
    if not tables:
        raise IntegrityError(
            f"verify failed for the database part: the dump ran {report.statements} statements "
            "but left no table; it is not a database dump, and nothing was changed",
            part="database",
        )
    if report.normalised:
        await ctx.event("restore.dump_normalised", changes=list(report.normalised))
    await ctx.event("restore.db_imported", tables=len(tables), rows=sum(tables.values()))
    return {
        **verdict,
        "database": target.database,
        "tables": tables,
        "rows": sum(tables.values()),
        "statements": report.statements,
        "normalised": list(report.normalised),
        "import_user": login.user,
        "least_privilege": login.reason
        or "the import ran as a login that could reach only the shadow database",
        "seconds": round(imported.seconds, 3),
        "connections": imported.connections,
    }


async def _drop_login_quietly(ctx: StepContext, live: Dsn, tag: str) -> None:
    """Drop the import login; a failure here must not hide the import's own error
    (finalize and abandon_restore drop it again)."""
    try:
        await drop_import_login(live, tag, settings=ctx.settings)
    except EnvrestoreError as exc:
        log.warning("restore.import_login_not_dropped", error=exc.message)


async def extract_part(
    ctx: StepContext, element: str, dest: Path | None = None
) -> tuple[Path, dict[str, Any]]:
    """Extract `element`'s part, checked as it streams, into `dest` (default: its staging
    directory, or the live one in place)."""
    targets = await targets_of(ctx)
    ref = (await parts_of(ctx))[element]
    if dest is None:
        dest = targets.live(element) if request_of(ctx).in_place else targets.staging(element)
    if dest.exists() and any(dest.iterdir()):
        trees.discard(dest)  # a partial tree from an earlier attempt
    limits = limits_for(ref.size, ctx.settings)  # modes: settings.files_mode_policy
    rules = await archive_rules(ctx, element)
    stream = PartStream(ctx, ref, max_output=limits.max_stream_bytes)
    # Rollback-point deletes on this filesystem wait until the extraction is over.
    with naming_part(element), busyfs.extracting(ctx.settings.state_dir, dest):
        report = await extract_archive(
            stream.raw(),
            dest,
            codec=ref.codec,  # type: ignore[arg-type]
            key=ref.key,
            limits=limits,
            rules=rules,
            spool_dir=spool_dir(ctx),
            threads=ctx.settings.extract_threads,
        )
        verdict = stream.verdict()
    return dest, {
        **verdict,
        "path": str(dest),
        "members": report.members,
        "bytes": report.bytes,
        "top": report.top,
    }


async def import_files(ctx: StepContext) -> dict[str, Any]:
    """Extract the files part, safely, into the staging directory beside the live one."""
    await ctx.check_lease()
    _dest, outputs = await extract_part(ctx, "files")
    return outputs
