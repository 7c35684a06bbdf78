"""`envrestore schedule set|show|off` and `envrestore scheduler` (the process that runs them)."""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING, Annotated

import typer

from envrestore.cli.common import (
    JsonOpt,
    check_schema,
    load_cli_settings,
    out,
    print_json,
    run_command,
    with_ledger,
)
from envrestore.pipelines.jobs.principal import Principal
from envrestore.pipelines.schedule.slots import WEEKDAYS

if TYPE_CHECKING:  # imported where used, for a quick start (cli/common.py)
    import asyncio

    from envrestore.config.settings import Settings
    from envrestore.pipelines.schedule.store import Schedule

schedule_app = typer.Typer(
    help="Daily (and weekly) backups of each environment; `envrestore scheduler` runs them.",
    no_args_is_help=True,
)

HourOpt = Annotated[
    int | None,
    typer.Option(
        "--hour",
        min=0,
        max=23,
        help="Hour of the daily backup, UTC, 0-23 [default: kept, else "
        "env ENVRESTORE_SCHEDULE_DEFAULT_HOUR, 2].",
        show_default=False,
    ),
]
DayOpt = Annotated[
    str | None,
    typer.Option(
        "--weekly-day",
        help="Day whose daily backup is the weekly one (kept 32 days): 0-6 (0 = Sunday) or a "
        "name [default: kept, else env ENVRESTORE_SCHEDULE_DEFAULT_WEEKLY_DAY, sunday].",
        show_default=False,
    ),
]


def _describe(s: Schedule) -> str:
    if not s.enabled:
        return f"{s.target}: off"
    hour = f"{s.hour:02d}:00 UTC" + ("" if s.own_hour else " (default)")
    day = WEEKDAYS[s.weekly_day] + ("" if s.own_weekly_day else " (default)")
    return f"{s.target}: daily at {hour}, weekly on {day}"


@schedule_app.command("set")
def schedule_set(
    target: Annotated[str, typer.Argument(help="SITE.ENV.")],
    hour: HourOpt = None,
    weekly_day: DayOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Turn an environment's daily backup on, at an hour (UTC) and weekly day."""
    from envrestore.pipelines.schedule.loop import utc_now
    from envrestore.pipelines.schedule.store import set_schedule

    settings = load_cli_settings()

    async def body() -> Schedule:
        return await with_ledger(
            settings,
            lambda pool: set_schedule(
                pool,
                settings,
                target,
                hour=hour,
                weekly_day=weekly_day,
                by=str(Principal.operator()),
            ),
        )

    schedule = run_command(body)
    if as_json:
        print_json(schedule.public(utc_now()))
        return
    out.print(_describe(schedule), markup=False)
    upcoming = schedule.next(utc_now())
    if upcoming is not None:
        out.print(f"next backup: {upcoming.at.isoformat()} ({upcoming.kind})", markup=False)


@schedule_app.command("off")
def schedule_off(
    target: Annotated[str, typer.Argument(help="SITE.ENV.")],
    as_json: JsonOpt = False,
) -> None:
    """Stop an environment's scheduled backups (existing backups keep their expiry)."""
    from envrestore.pipelines.schedule.loop import utc_now
    from envrestore.pipelines.schedule.store import set_schedule

    settings = load_cli_settings()

    async def body() -> Schedule:
        return await with_ledger(
            settings,
            lambda pool: set_schedule(
                pool, settings, target, enabled=False, by=str(Principal.operator())
            ),
        )

    schedule = run_command(body)
    if as_json:
        print_json(schedule.public(utc_now()))
        return
    out.print(f"{schedule.target}: scheduled backups off", markup=False)
    out.print(f"turn them on again with: envrestore schedule set {schedule.target}", markup=False)


@schedule_app.command("show")
def schedule_show(
    selector: Annotated[
        str | None, typer.Argument(help="SITE or SITE.ENV (default: every environment).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Each environment's schedule in effect (defaults included), next slot and last slot taken."""
    from envrestore.cli.tables import print_table, when
    from envrestore.pipelines.schedule.loop import utc_now
    from envrestore.pipelines.schedule.store import list_schedules

    settings = load_cli_settings()

    async def body() -> list[Schedule]:
        return await with_ledger(settings, lambda pool: list_schedules(pool, settings, selector))

    schedules = run_command(body)
    now = utc_now()
    if as_json:
        print_json([s.public(now) for s in schedules])
        return
    if not schedules:
        out.print("no environments yet (envrestore env add SITE.ENV ...)", markup=False)
        return
    rows = []
    for s in schedules:
        view = s.public(now)
        last = when(view["last_slot"]) or "-"
        if view["last_slot"]:
            last += f" {view['last_slot_kind']}"
            if view["last_error"]:
                last += f": refused: {view['last_error']}"
        rows.append(
            [
                s.target,
                "on" if s.enabled else "off",
                f"{s.hour:02d}:00" + ("" if s.own_hour else " (default)") if s.enabled else "",
                WEEKDAYS[s.weekly_day] + ("" if s.own_weekly_day else " (default)")
                if s.enabled
                else "",
                f"{when(view['next_slot'])} {view['next_slot_kind']}" if view["next_slot"] else "-",
                last,
                view["last_job_id"] or "",
            ]
        )
    print_table(
        out,
        ["environment", "state", "hour (UTC)", "weekly day", "next slot", "last slot", "job"],
        rows,
        ids=("environment", "job"),
    )


# ------------------------------------------------------------------ scheduler


async def run_scheduler(settings: Settings, stop: asyncio.Event) -> None:
    """The scheduler loop until `stop` is set (SIGTERM, SIGINT)."""
    from envrestore.pipelines.ledger.connection import create_pool
    from envrestore.pipelines.objectstore import open_object_store
    from envrestore.pipelines.producer import Producer
    from envrestore.pipelines.schedule.lease import new_holder_id
    from envrestore.pipelines.schedule.loop import Scheduler

    holder = new_holder_id()
    pool = await create_pool(settings.database_url, max_size=4)
    try:
        await check_schema(pool)  # not migrated: one line and exit 6, not a log loop
        async with open_object_store(settings) as store:
            producer = Producer(
                pool, settings, store, Principal("scheduler", holder), preflight=False
            )
            scheduler = Scheduler(pool, settings, producer, store, holder)
            await scheduler.run(stop)
    finally:
        await pool.close()


def scheduler() -> None:
    """Run scheduled backups and retention until SIGTERM/SIGINT (any number may run; one leads).

    Settings: ENVRESTORE_SCHEDULER_TICK_SECONDS, ENVRESTORE_SCHEDULER_LEASE_SECONDS,
    ENVRESTORE_SCHEDULE_DEFAULT_HOUR, ENVRESTORE_SCHEDULE_DEFAULT_WEEKLY_DAY.
    """
    import asyncio

    from envrestore.config.logging import configure_logging

    settings = load_cli_settings()
    configure_logging(level=os.environ.get("ENVRESTORE_LOG_LEVEL") or "INFO")

    async def body() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_scheduler(settings, stop)

    run_command(body)
