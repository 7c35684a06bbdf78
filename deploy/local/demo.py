"""`make demo`: the embedded stack, a demo site, a backup, restores, a link, an import.

    python -m deploy.local.demo [--state-dir DIR]

Starts (or reuses) the local stack, builds the site `demo` with `dev`, `test`
and `live` (a PostgreSQL database with WordPress-like content, an uploads
directory, a git repository with commits and tags), then drives the CLI
exactly as a user would type it: register the site and its environments,
back up `dev` through the queue with `--wait`, list the backup, and checks
that the three parts in the object store hash to what the manifest says.
Then it changes dev's content, restores dev from that backup with `--wait`,
checks that the content is back as it was, and shows that restoring the
protected `live` is refused. The same backup and restore are then done over
the HTTP API with `curl` (a token for `demo`), and a token for another site
is refused with 404. Then content from anywhere: `test` is restored
from `dev`'s backup (`--from`), a temporary link to the database part is
printed and read with curl, and `test`'s database is imported through that
link. Last, dev's content is cloned into the protected `live` with dev's
address rewritten to live's (a serialized widget keeps valid lengths), and
another site's code history is merged into dev. Safe to run again: what exists is reused, and
each run compares dev's content with itself within that run.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from deploy.local import postgres, stack
from deploy.local.demo_checks import (
    change_dev,
    check_backup,
    check_content_back,
    latest_restore_job,
    look_at_dev,
)
from deploy.local.demo_console import (
    ENVS,
    EXIT_CONFLICT,
    SITE,
    cli,
    heading,
    relative,
    say,
    show_command,
)
from deploy.local.demo_http import over_http
from deploy.local.demo_moving import (
    clone_into_live,
    content_from_anywhere,
    merge_another_sites_code,
)
from deploy.local.demo_site import build_site, url_of


def run(state_dir: Path) -> None:
    heading(
        "Starting the embedded stack (PostgreSQL, Redis, SeaweedFS S3, one worker, the scheduler,"
        " the HTTP API)"
    )
    env = stack.up(state_dir)
    pg = postgres.running(stack.StackPaths(state_dir).pg_data)
    if pg is None:
        raise SystemExit("PostgreSQL stopped right after the stack started; see its log")
    say(f"settings: {relative(stack.StackPaths(state_dir).env_file)}")
    say(
        "scheduler: running; every environment is backed up daily at "
        "ENVRESTORE_SCHEDULE_DEFAULT_HOUR (UTC) from its first day on"
    )

    heading(f"Building site {SITE!r}: databases, uploaded files, git code for {', '.join(ENVS)}")
    envs = asyncio.run(build_site(state_dir, pg))
    for item in envs:
        say(
            f"  {item.name:<5} db {item.dsn}  files {relative(item.files)}  "
            f"code {relative(item.code)}"
        )

    heading("Registering them with envrestore")
    show_command(["source", relative(stack.StackPaths(state_dir).env_file)])
    cli(["site", "add", SITE], env, tolerate=(EXIT_CONFLICT,))
    for item in envs:
        cli(
            [
                "env",
                "add",
                f"{SITE}.{item.name}",
                "--db",
                item.dsn,
                "--files",
                str(item.files),
                "--code",
                str(item.code),
                "--url",
                url_of(item.name),
            ],
            env,
            tolerate=(EXIT_CONFLICT,),
        )
    cli(["env", "list"], env)

    heading("Backing up demo.dev through the queue")
    cli(["backup", "create", f"{SITE}.dev", "--wait"], env)
    cli(["backup", "list", f"{SITE}.dev"], env)

    heading("Checking the parts in the object store against the manifest")
    backup_id, job_id = check_backup(env)

    dev = next(item for item in envs if item.name == "dev")
    heading("demo.dev's content, as backed up")
    before = look_at_dev(dev)

    heading("Changing demo.dev as its users would: posts, uploads, code")
    change_dev(dev, before)
    changed = look_at_dev(dev)
    if not before.differences(changed):
        raise SystemExit("the demo's changes to dev left its content as it was")

    heading(f"Restoring demo.dev from backup {backup_id}")
    cli(["restore", f"{SITE}.dev", "--backup", backup_id, "--wait"], env)
    restore_job = asyncio.run(latest_restore_job(env["ENVRESTORE_DATABASE_URL"]))

    heading("demo.dev's content after the restore")
    after = look_at_dev(dev)
    check_content_back(before, after)

    heading("Undoing a restore, and why live is not restored directly")
    say(
        "The content the restore replaced is kept (ENVRESTORE_ROLLBACK_HOURS, default 24);\n"
        "this would swap it back in:\n"
        f"  envrestore rollback run {restore_job or '<restore job id>'} --wait\n"
        "Restoring a protected environment is refused (exit 4):"
    )
    code = cli(
        ["restore", f"{SITE}.live"],
        env,
        tolerate=(EXIT_CONFLICT,),
        note="refused by policy, as it should be",
    )
    if code != EXIT_CONFLICT:
        raise SystemExit(f"`envrestore restore {SITE}.live` was not refused (exit {code})")
    say(
        f"The way to {SITE}.live: restore {SITE}.dev or {SITE}.test, check the result there,\n"
        f"then clone its content to {SITE}.live."
    )

    api = stack.status(state_dir)["api"]["url"]
    over_http(env, api)
    heading("demo.dev's content after the restore over HTTP")
    check_content_back(before, look_at_dev(dev))

    test = next(item for item in envs if item.name == "test")
    content_from_anywhere(env, backup_id, before, test)
    live = next(item for item in envs if item.name == "live")
    clone_into_live(env, dev, live)
    merge_another_sites_code(env, state_dir, pg, dev)

    env_file = relative(stack.StackPaths(state_dir).env_file)
    logs = relative(stack.StackPaths(state_dir).logs)
    heading("What just happened")
    say(
        f"""\
A PostgreSQL, a Redis and a SeaweedFS S3 gateway started from Python wheels on free
loopback ports, with their data under {relative(state_dir)}/ (nothing else on this
machine was touched), one envrestore worker and the scheduler (it backs every
environment up daily, keeps dailies 8 days and weeklies 32, and queues the
deletion of expired backups; `envrestore schedule show`). The site {SITE!r} got three
environments; `backup create --wait` queued a job whose steps the worker ran: it
dumped demo_dev with pg_dump, archived the uploads and the git repository, streamed
the three parts to S3 with their sha256, and recorded backup {backup_id}.

Then dev changed (posts deleted and retitled, an upload deleted and one added, a
commit) and `restore --wait` put the backup back: the worker checked each part's
sha256, imported the dump into a shadow database, unpacked the uploads and the code
beside the live ones, and swapped all three in at the end; a failure before that
swap would have left dev untouched. The replaced content is the rollback point.

The HTTP API did the same for a dashboard backend: a token scoped to {SITE!r} POSTed
a backup and a restore of dev (202 and a Location each), followed each job with
GET /jobs/{{id}} (304 while its ETag had not changed), and a token scoped to another
site got 404 for dev, as if it did not exist. API log: {logs}/api.log

The same pipeline restored test from dev's backup (`--from`), and imported dev's
database into test through a temporary link that plain curl could also read; the
link was checked against its record (signature, object, expiry) before a byte was
read. dev's content was cloned into the protected live (no --force-live: this is
how content reaches live), its address rewritten to live's in the shadow database;
and another site's code was merged into dev's history.

Look around:
  source {env_file}
  envrestore job show {restore_job or "<restore job id>"}    # the restore
  envrestore job show {job_id or "<backup job id>"}    # the backup
  envrestore backup list {SITE}.dev
  envrestore backup link {SITE}.dev {backup_id} --all
  envrestore job list {SITE}
  envrestore env list
  envrestore schedule show                 # daily backups: next and last slot
  tail -f {logs}/worker.log {logs}/scheduler.log
  python -m deploy.local.stack status

Stop everything this demo started:  make demo-stop"""
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.local.demo", description=__doc__)
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where the stack and the demo site live (env: ENVRESTORE_STATE_DIR)",
    )
    args = parser.parse_args(argv)
    state_dir = args.state_dir.resolve() if args.state_dir else stack.default_state_dir()
    try:
        run(state_dir)
    except RuntimeError as exc:  # the stack did not come up; the message says where to look
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
