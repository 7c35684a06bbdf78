"""`envrestore site` and `envrestore env`: the registry of sites and environments."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from envrestore.cli.common import (
    JsonOpt,
    fail,
    load_cli_settings,
    out,
    print_json,
    require_known,
    run_command,
    with_ledger,
)
from envrestore.cli.confirming import ConfirmOpt, confirm_or_exit
from envrestore.cli.exit_codes import ExitCode

if TYPE_CHECKING:  # imported where used, for a quick start (cli/common.py)
    import asyncpg

    from envrestore.pipelines import registry, registry_admin

site_app = typer.Typer(help="Sites.", no_args_is_help=True)
env_app = typer.Typer(help="Environments of a site (dev, test, live, ...).", no_args_is_help=True)


@site_app.command("add")
def site_add(name: Annotated[str, typer.Argument(help="Site name, e.g. mysite.")]) -> None:
    """Register a site."""
    from envrestore.pipelines import registry

    settings = load_cli_settings()

    async def body() -> bool:
        return await with_ledger(settings, lambda pool: registry.add_site(pool, name))

    if not run_command(body):
        fail(f"site {name!r} already exists", code="conflict", exit_code=ExitCode.CONFLICT)
    out.print(f"site {name} added")


@env_app.command("add")
def env_add(
    target: Annotated[str, typer.Argument(help="SITE.ENV, e.g. mysite.dev.")],
    db: Annotated[
        str,
        typer.Option(
            "--db",
            help="Database DSN: mariadb://, mysql:// or postgresql://; the password may be "
            "given as ?password_env=VAR or ?password_file=PATH.",
        ),
    ],
    files: Annotated[Path, typer.Option("--files", help="The uploaded-files directory.")],
    code: Annotated[Path, typer.Option("--code", help="The code directory (a git working tree).")],
    protected: Annotated[
        bool | None,
        typer.Option(
            "--protected/--unprotected",
            help="Refuse direct restores unless forced (default: only 'live').",
        ),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            help="The base URL visitors use (https://dev.example.com): when database content "
            "moves here from another environment, its URL is rewritten to this one.",
        ),
    ] = None,
) -> None:
    """Register an environment, or update its settings."""
    from envrestore.pipelines import registry, registry_admin

    settings = load_cli_settings()

    async def body() -> tuple[registry.Environment, bool]:
        # Dangerous directories first, before anything looks at them; files and code
        # apart, and other environments', when registering (after the git check).
        await registry_admin.check_directories(files=files, code=code, state_dir=settings.state_dir)
        return await with_ledger(
            settings,
            lambda pool: registry.add_environment(
                pool,
                target,
                db=db,
                files=files,
                code=code,
                protected=protected,
                url=url,
                state_dir=settings.state_dir,
            ),
        )

    environment, created = run_command(body)
    verb = "added" if created else "updated"
    out.print(
        f"environment {environment.target} {verb} ({environment.engine}"
        f"{', protected' if environment.protected else ''})"
    )


@env_app.command("list")
def env_list(
    site: Annotated[str | None, typer.Argument(help="Only this site's environments.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List environments (database DSNs shown with passwords masked)."""
    from envrestore.cli.tables import print_table
    from envrestore.pipelines import registry

    settings = load_cli_settings()

    async def body() -> list[registry.Environment]:
        async def listing(pool: asyncpg.Pool) -> list[registry.Environment]:
            if site:
                await require_known(pool, site)  # an unknown site: exit 3
            return await registry.list_environments(pool, site)

        return await with_ledger(settings, listing)

    environments = run_command(body)
    if as_json:
        print_json([e.public() for e in environments])
        return
    rows = [
        (
            e.target,
            e.engine,
            e.url or "",
            p["db"],
            p["files"],
            p["code"],
            "yes" if e.protected else "",
        )
        for e, p in ((e, e.public()) for e in environments)
    ]
    headers = ["target", "engine", "url", "db", "files", "code", "protected"]
    print_table(out, headers, rows, ids=("target",))


@env_app.command("load")
def env_load(
    file: Annotated[Path, typer.Argument(help="A TOML file of [[env]] entries.")],
) -> None:
    """Register many environments from a TOML file, all checked before any is written."""
    from envrestore.pipelines import registry, registry_admin

    settings = load_cli_settings()

    async def body() -> list[tuple[registry.Environment, bool]]:
        specs = registry.read_registry_file(file)
        for spec in specs:
            await registry_admin.check_directories(
                files=spec.files, code=spec.code, state_dir=settings.state_dir
            )

        async def register(pool: asyncpg.Pool) -> list[tuple[registry.Environment, bool]]:
            entries = [(s.target, s.files, s.code) for s in specs]
            await registry_admin.check_many(pool, entries, state_dir=settings.state_dir)
            for spec in specs:
                site, _env = registry.parse_target(spec.target)
                await registry.add_site(pool, site)
            return [
                await registry.add_environment(
                    pool,
                    s.target,
                    db=s.db,
                    files=s.files,
                    code=s.code,
                    protected=s.protected,
                    url=s.url,
                    state_dir=settings.state_dir,
                )
                for s in specs
            ]

        return await with_ledger(settings, register)

    for environment, created in run_command(body):
        out.print(f"environment {environment.target} {'added' if created else 'updated'}")


# ------------------------------------------------------------- issue 9: list, remove, set


@site_app.command("list")
def site_list(as_json: JsonOpt = False) -> None:
    """List sites and their environments."""
    from envrestore.cli.tables import print_table
    from envrestore.pipelines import registry_admin

    settings = load_cli_settings()

    async def body() -> list[registry_admin.Site]:
        return await with_ledger(settings, registry_admin.list_sites)

    sites = run_command(body)
    if as_json:
        print_json([s.public() for s in sites])
        return
    if not sites:
        out.print("no sites registered (envrestore site add NAME)", markup=False)
        return
    rows = [(s.name, ", ".join(s.envs), s.created_at.strftime("%Y-%m-%d %H:%M UTC")) for s in sites]
    print_table(out, ["site", "environments", "created"], rows, ids=("site",))


@site_app.command("remove")
def site_remove(
    name: Annotated[str, typer.Argument(help="The site to forget.")],
    cascade: Annotated[
        bool, typer.Option("--cascade", help="Forget its environments too (each checked).")
    ] = False,
    yes: ConfirmOpt = False,
) -> None:
    """Forget a site (refused while it has environments, unless --cascade).

    Nothing on disk is touched: databases, files and code stay. Refused while a
    job holds or waits for an environment's lease, while the ledger holds
    backups of one, or while a rollback point is kept.
    """
    from envrestore.pipelines import registry_admin

    settings = load_cli_settings()
    what = f"site {name}" + (" and all its environments" if cascade else "")
    confirm_or_exit(f"forget {what}? (nothing on disk is deleted)", yes=yes)

    async def body() -> list[registry.Environment]:
        return await with_ledger(
            settings, lambda pool: registry_admin.remove_site(pool, name, cascade=cascade)
        )

    removed = run_command(body)
    also = f" and {', '.join(e.target for e in removed)}" if removed else ""
    out.print(f"site {name}{also} removed; databases, files and code left on disk", markup=False)


@env_app.command("remove")
def env_remove(
    target: Annotated[str, typer.Argument(help="SITE.ENV to forget.")],
    yes: ConfirmOpt = False,
) -> None:
    """Forget an environment; its database, files and code stay on disk.

    Refused while a job holds or waits for its lease, while the ledger holds
    backups of it (delete them first), or while a rollback point is kept.
    """
    from envrestore.pipelines import registry_admin

    settings = load_cli_settings()
    confirm_or_exit(f"forget environment {target}? (nothing on disk is deleted)", yes=yes)

    async def body() -> registry.Environment:
        return await with_ledger(
            settings, lambda pool: registry_admin.remove_environment(pool, target)
        )

    environment = run_command(body)
    out.print(
        f"environment {environment.target} removed; its database {environment.dsn.masked()}, "
        f"files {environment.files_dir} and code {environment.code_dir} are left as they are",
        markup=False,
    )


@env_app.command("set")
def env_set(
    target: Annotated[str, typer.Argument(help="SITE.ENV to change.")],
    db: Annotated[str | None, typer.Option("--db", help="A new database DSN.")] = None,
    files: Annotated[
        Path | None, typer.Option("--files", help="A new uploaded-files directory.")
    ] = None,
    code: Annotated[
        Path | None, typer.Option("--code", help="A new code directory (a git working tree).")
    ] = None,
    url: Annotated[str | None, typer.Option("--url", help="A new base URL.")] = None,
    protected: Annotated[
        bool | None,
        typer.Option("--protected/--unprotected", help="Refuse direct restores unless forced."),
    ] = None,
) -> None:
    """Change only the given fields of an environment.

    Refused while a job holds or waits for its lease; a new database or
    directory also while a rollback point still refers to the old one.
    """
    from envrestore.pipelines import registry_admin

    settings = load_cli_settings()

    async def body() -> tuple[registry.Environment, list[str]]:
        await registry_admin.check_directories(files=files, code=code, state_dir=settings.state_dir)
        return await with_ledger(
            settings,
            lambda pool: registry_admin.set_environment(
                pool,
                target,
                db=db,
                files=files,
                code=code,
                url=url,
                protected=protected,
                state_dir=settings.state_dir,
            ),
        )

    environment, changed = run_command(body)
    out.print(f"environment {environment.target} updated: {', '.join(changed)}", markup=False)
