"""The demo over HTTP: what a dashboard backend does, with `curl` as typed.

A token for site `demo` backs `dev` up and restores it (POST, 202 and a
`Location`, then `GET /jobs/{id}` until the job is done, with an `ETag` that
answers 304 while nothing changed); a token for another site gets 404 on
`demo`, as if it did not exist.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from deploy.local import stack
from deploy.local.demo_console import EXIT_CONFLICT, SITE, cli, heading, say

OTHER_SITE = "elsewhere"
#: The demo's jobs take seconds; this only ends a wait on a worker that died.
JOB_TIMEOUT_SECONDS = 600.0
POLL_SECONDS = 0.5
FINAL = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: str

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


def _show(argv: list[str]) -> None:
    # A shell variable ("Authorization: Bearer $TOKEN") is shown as typed, unquoted.
    _typed(" ".join(arg if "$" in arg else shlex.quote(arg) for arg in argv))


def _typed(command: str) -> None:
    text = "$ " + command
    say(f"\033[36m{text}\033[0m" if sys.stdout.isatty() else text)


def curl(
    method: str,
    url: str,
    *,
    token: tuple[str, str],
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    show: bool = True,
) -> Reply:
    """Run curl as printed (the token shown as its shell variable) and parse its answer."""
    name, raw = token
    shown = ["curl", "-sS", "-i", "-X", method, url, "-H", f'"Authorization: Bearer ${name}"']
    run = ["curl", "-sS", "-i", "-X", method, url, "-H", f"Authorization: Bearer {raw}"]
    for key, value in (headers or {}).items():
        shown += ["-H", f"{key}: {value}"]
        run += ["-H", f"{key}: {value}"]
    if body is not None:
        data = json.dumps(body)
        shown += ["-H", "Content-Type: application/json", "-d", data]
        run += ["-H", "Content-Type: application/json", "-d", data]
    if show:
        _show(shown)
    done = subprocess.run(run, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise SystemExit(f"curl {method} {url} failed: {done.stderr.strip()}")
    head, _, rest = done.stdout.replace("\r\n", "\n").partition("\n\n")
    lines = head.splitlines()
    status = int(lines[0].split()[1])
    parsed = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return Reply(status, parsed, rest)


def _expect(reply: Reply, status: int, what: str) -> None:
    if reply.status != status:
        raise SystemExit(f"{what}: expected HTTP {status}, got {reply.status}: {reply.body[:500]}")


def _brief(reply: Reply) -> None:
    say(f"   HTTP {reply.status}" + (f"  Location: {reply.headers['location']}"
                                      if "location" in reply.headers else ""))  # fmt: skip
    data = reply.json()
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        data = data["error"]  # {"error": {"code", "message"}}
    if isinstance(data, dict):
        keep = {k: data[k] for k in ("id", "job_id", "kind", "target", "status", "code",
                                     "message") if k in data}  # fmt: skip
        say("   " + json.dumps(keep))


def follow(api: str, location: str, token: tuple[str, str]) -> dict[str, Any]:
    """Poll the job until it ends, as a dashboard would: 304 while it has not changed."""
    url = location if location.startswith("http") else api + location
    first = curl("GET", url, token=token)
    etag = first.headers.get("etag", "")
    job: dict[str, Any] = first.json()
    say(f"   HTTP {first.status}  ETag: {etag}  status: {job['status']}")
    unchanged = curl("GET", url, token=token, headers={"If-None-Match": etag})
    say(f"   HTTP {unchanged.status} (same ETag: nothing changed, no body)")
    say(f"   ... polling {url} every {POLL_SECONDS}s with If-None-Match until the job ends")
    deadline = time.monotonic() + JOB_TIMEOUT_SECONDS
    last = job["status"]
    while job["status"] not in FINAL:
        if time.monotonic() > deadline:
            raise SystemExit(f"the job at {url} did not finish in {JOB_TIMEOUT_SECONDS:.0f}s")
        time.sleep(POLL_SECONDS)
        reply = curl("GET", url, token=token, headers={"If-None-Match": etag}, show=False)
        if reply.status == 304:
            continue
        _expect(reply, 200, f"GET {url}")
        etag, job = reply.headers.get("etag", ""), reply.json()
        if job["status"] != last:
            last = job["status"]
            say(f"   status: {last}")
    if job["status"] != "succeeded":
        raise SystemExit(f"the job at {url} ended {job['status']}: {json.dumps(job)[:1000]}")
    return job


def _token(env: dict[str, str], variable: str, name: str, sites: str, scopes: str) -> str:
    args = ["token", "create", "--name", name, "--sites", sites, "--scopes", scopes]
    _typed(f"{variable}=$(envrestore {shlex.join(args)})")
    done = subprocess.run(
        [*stack.envrestore_command(), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"`envrestore {shlex.join(args)}` failed: {done.stderr.strip()}")
    sys.stderr.write(done.stderr)
    raw = done.stdout.strip().splitlines()[-1]
    say(f"   {variable}={raw[:12]}… (printed once; only its SHA-256 is stored)")
    return raw


def over_http(env: dict[str, str], api: str) -> None:
    """Back up and restore demo.dev over HTTP, then show another site's token refused."""
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    heading(f"The HTTP API at {api}: a token for site {SITE!r}")
    token = ("TOKEN", _token(env, "TOKEN", f"dashboard-{stamp}", SITE, "read,backup,restore"))
    envs_url = f"{api}/sites/{SITE}/envs/dev"

    heading("A backup of demo.dev over HTTP")
    reply = curl("POST", f"{envs_url}/backups", token=token, body={})
    _brief(reply)
    _expect(reply, 202, "POST backups")
    follow(api, reply.headers["location"], token)
    say("   the backup is done")

    heading("A restore of demo.dev over HTTP, from that backup (the latest)")
    reply = curl("POST", f"{envs_url}/restores", token=token, body={"backup": "latest"})
    _brief(reply)
    _expect(reply, 202, "POST restores")
    follow(api, reply.headers["location"], token)
    say("   the restore is done: demo.dev holds the backup's content again")

    heading(f"A token for site {OTHER_SITE!r} asks for {SITE!r}: 404, as if it did not exist")
    cli(["site", "add", OTHER_SITE], env, tolerate=(EXIT_CONFLICT,))
    other = ("OTHER", _token(env, "OTHER", f"other-{stamp}", OTHER_SITE, "read,backup,restore"))
    for method, url, body in (
        ("GET", envs_url, None),
        ("POST", f"{envs_url}/backups", {}),
    ):
        reply = curl(method, url, token=other, body=body)
        _brief(reply)
        _expect(reply, 404, f"{method} {url} with a token for {OTHER_SITE}")
    say(f"   refused: nothing about {SITE!r} leaks to a token scoped to {OTHER_SITE!r}")
