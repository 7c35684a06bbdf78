"""URLs an import must not fetch, each given to a real import job of one environment.

Every URL goes through the producer and, when its shape passes, through a job
driven to its end: the job fails in `fetch` with the reason a user needs
(which address, which rule), no server the URL or a redirect points at gets a
request it should not, and after all of them the environment is exactly as
it was and nothing is left under `staging/`. URLs whose shape alone is wrong
(scheme, credentials) are refused at submit, before any job exists.
"""

from __future__ import annotations

import socket

import pytest

from envrestore.pipelines.errors import EnvrestoreError
from envrestore.pipelines.jobs.views import list_jobs
from tests.support.driver import drive
from tests.support.environments import (
    add_env,
    local_servers,
    redirect_to,
    staging_keys,
    step_statuses,
    streamed,
    with_settings,
)
from tests.support.producing import submit_import

pytestmark = pytest.mark.integration

#: A gzip header and then junk: never read, since no refused URL gets this far.
BODY = b"\x1f\x8b\x08\x00" + b"x" * 4000

#: Every address refusal says how an operator would allow the host.
HINT = "(an operator can allow a private host with ENVRESTORE_IMPORT_ALLOW_HOSTS)"

# (URL, what the error must say). Each fails in `fetch`, before a request is sent.
ADDRESSES: list[tuple[str, str]] = [
    ("http://127.0.0.1/dump.sql.gz", "its host is 127.0.0.1 (loopback)"),
    ("http://localhost/dump.sql.gz", "its host localhost resolves to 127.0.0.1 (loopback)"),
    ("http://127.0.0.1./dump.sql.gz", "is the address 127.0.0.1 (loopback)"),
    ("http://127.1/dump.sql.gz", "its host 127.1 is the address 127.0.0.1 (loopback)"),
    ("http://2130706433/dump.sql.gz", "is the address 127.0.0.1 (loopback)"),
    ("http://0x7f000001/dump.sql.gz", "is the address 127.0.0.1 (loopback)"),
    ("http://0x7f.0.0.1/dump.sql.gz", "is the address 127.0.0.1 (loopback)"),
    ("http://0177.0.0.1/dump.sql.gz", "is the address 127.0.0.1 (loopback)"),
    ("http://017700000001/dump.sql.gz", "is the address 127.0.0.1 (loopback)"),
    ("http://0.0.0.0/dump.sql.gz", "0.0.0.0 (unspecified)"),
    ("http://0/dump.sql.gz", "is the address 0.0.0.0 (unspecified)"),
    ("http://10.0.0.1/dump.sql.gz", "10.0.0.1 (private)"),
    ("http://172.16.0.1/dump.sql.gz", "172.16.0.1 (private)"),
    ("http://192.168.1.1/dump.sql.gz", "192.168.1.1 (private)"),
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 (link-local)"),
    ("http://100.64.0.1/dump.sql.gz", "100.64.0.1 (carrier-grade NAT"),
    ("http://224.0.0.1/dump.sql.gz", "224.0.0.1 (multicast)"),
    ("http://240.0.0.1/dump.sql.gz", "240.0.0.1 (reserved)"),
    ("http://255.255.255.255/dump.sql.gz", "255.255.255.255 (broadcast)"),
    ("http://192.0.2.1/dump.sql.gz", "192.0.2.1 (documentation range)"),
    ("http://198.51.100.1/dump.sql.gz", "198.51.100.1 (documentation range)"),
    ("http://203.0.113.1/dump.sql.gz", "203.0.113.1 (documentation range)"),
    ("http://198.18.0.1/dump.sql.gz", "198.18.0.1 (benchmarking range)"),
    ("http://[::1]/dump.sql.gz", "::1 (loopback)"),
    ("http://[::]/dump.sql.gz", ":: (unspecified)"),
    ("http://[::ffff:127.0.0.1]/dump.sql.gz", "IPv4-mapped form of 127.0.0.1 which is loopback"),
    ("http://[::ffff:7f00:1]/dump.sql.gz", "IPv4-mapped form of 127.0.0.1 which is loopback"),
    ("http://[::ffff:10.0.0.1]/dump.sql.gz", "IPv4-mapped form of 10.0.0.1 which is private"),
    (
        "http://[::ffff:169.254.169.254]/latest/meta-data/",
        "IPv4-mapped form of 169.254.169.254 which is link-local",
    ),
    ("http://[::127.0.0.1]/dump.sql.gz", "IPv4-compatible form of 127.0.0.1 which is loopback"),
    ("http://[64:ff9b::7f00:1]/dump.sql.gz", "NAT64 form of 127.0.0.1 which is loopback"),
    ("http://[2002:7f00:1::]/dump.sql.gz", "6to4 form of 127.0.0.1 which is loopback"),
    ("http://[fe80::1]/dump.sql.gz", "fe80::1 (link-local)"),
    ("http://[fec0::1]/dump.sql.gz", "fec0::1 (site-local)"),
    ("http://[fc00::1]/dump.sql.gz", "fc00::1 (unique local)"),
    ("http://[fd12::1]/dump.sql.gz", "fd12::1 (unique local)"),
    ("http://[ff02::1]/dump.sql.gz", "ff02::1 (multicast)"),
    ("http://[2001:db8::1]/dump.sql.gz", "2001:db8::1 (documentation range)"),
]

# Refused by their shape, at submit: no job is created.
SHAPES: list[tuple[str, str]] = [
    ("ftp://x/dump.sql.gz", "its scheme ftp: is not allowed; imports fetch http:// or https://"),
    ("file:///etc/passwd", "its scheme file: is not allowed"),
    ("gopher://x/dump.sql.gz", "its scheme gopher: is not allowed"),
    ("http://user:pass@example.com/dump.sql.gz", "it carries credentials (user:password@)"),
]


def private_hostname() -> tuple[str, str]:
    """A DNS name other than localhost that resolves to a non-public address, with one of them.

    Without internet, names that resolve privately are those in /etc/hosts: the
    machine's own name (`socket.gethostname()`) usually maps to 127.0.1.1,
    127.0.0.1 or the host's private address there. The worker's download uses
    the system resolver too, so this is a real lookup, not a test resolver.
    """
    name = socket.gethostname().lower()
    try:
        infos = socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)
    except socket.gaierror:
        infos = []
    addresses = [str(info[4][0]) for info in infos]
    assert addresses, f"the host name {name!r} does not resolve; give it a line in /etc/hosts"
    return name, addresses[0]


async def test_refused_urls_fail_their_jobs_and_leave_the_environment_untouched(
    runtime, tmp_path, make_postgres_db
):
    env = await add_env(runtime, tmp_path, "shop.dev", make_postgres_db)
    before = await env.snapshot()
    problems: list[str] = []

    async with local_servers() as start:
        # `inside` stands for a service inside the platform: nothing may reach it.
        inside = await start({"/secret": BODY})
        files = await start({"/final.sql.gz": BODY, "/big.sql.gz": streamed(BODY)})
        files.routes.update(
            {
                "/to-inside": redirect_to(inside.url("/secret")),
                "/to-localhost": redirect_to(files.url("/final.sql.gz", host="localhost")),
                "/to-metadata": redirect_to("http://169.254.169.254/latest/meta-data/", 301),
                "/to-file": redirect_to("file:///etc/passwd", 307),
                **{f"/hop{n}": redirect_to(f"/hop{n - 1}", 302) for n in range(2, 7)},
                "/hop1": redirect_to("/final.sql.gz", 302),
            }
        )
        # Only `files` is allowlisted, on its own port: its redirects are still checked
        # hop by hop, and its downloads are cut off at 1000 bytes.
        rt = with_settings(runtime, import_allow_hosts=[files.allow], import_max_bytes=1000)
        name, address = private_hostname()
        fetched: list[tuple[str, tuple[str, ...]]] = [
            *((url, (reason, HINT)) for url, reason in ADDRESSES),
            # A port of this machine that is not allowlisted, with a server behind it.
            (inside.url("/secret"), ("its host is 127.0.0.1 (loopback)", HINT)),
            (
                files.url("/to-inside"),
                (
                    f"the URL {inside.url('/secret')} is refused: its host is 127.0.0.1 (loopback)",
                    f"(a redirect from {files.url('/to-inside')})",
                ),
            ),
            (
                files.url("/to-localhost"),
                ("its host localhost resolves to 127.0.0.1 (loopback)", "(a redirect from"),
            ),
            (files.url("/to-metadata"), ("169.254.169.254 (link-local)", "(a redirect from")),
            (files.url("/to-file"), ("its scheme file: is not allowed", "(a redirect from")),
            (files.url("/hop6"), ("redirected more than 5 times",)),
            (files.url("/big.sql.gz"), ("cut off at", "ENVRESTORE_IMPORT_MAX_BYTES (1000 bytes)")),
            # The machine's own name, resolved by the system resolver (see private_hostname).
            (f"http://{name}/dump.sql.gz", (f"its host {name} resolves to {address}", HINT)),
        ]

        for url, reasons in fetched:
            try:
                submitted = await submit_import(rt, "shop.dev", database=url)
            except EnvrestoreError as exc:
                problems.append(f"{url}: refused at submit, expected in fetch: {exc.message}")
                continue
            view = await drive(rt, submitted.job_id)
            statuses = step_statuses(view)
            error = view["error"] or ""
            if (
                view["status"] != "failed"
                or view["error_step"] != "fetch"
                or not all(reason in error for reason in reasons)
                or statuses.get("wipe") != "skipped"
                or statuses.get("abandon_restore") != "done"
            ):
                problems.append(
                    f"{url}: expected to fail in fetch saying {reasons}, got "
                    f"{view['status']} in {view['error_step']}: {error} {statuses}"
                )

        jobs_before = len(await list_jobs(rt.pool, limit=1000))
        for url, reason in SHAPES:
            try:
                await submit_import(rt, "shop.dev", database=url)
            except EnvrestoreError as exc:
                if reason not in exc.message:
                    problems.append(f"{url}: refused at submit, but saying: {exc.message}")
                if "user:pass@" in exc.message:
                    problems.append(f"{url}: the refusal shows the password: {exc.message}")
            else:
                problems.append(f"{url}: accepted at submit")
        assert len(await list_jobs(rt.pool, limit=1000)) == jobs_before

        # Never asked for: the inside service, the end of the six-hop chain, where the
        # localhost redirect pointed. The allowlisted hops themselves were requested.
        assert inside.seen == []
        assert "/final.sql.gz" not in files.seen
        assert {"/to-inside", "/to-localhost", "/hop6", "/hop1", "/big.sql.gz"} <= set(files.seen)

    assert problems == [], "\n".join(problems)
    assert len(fetched) + len(SHAPES) >= 42
    assert await env.snapshot() == before
    assert await staging_keys(runtime) == []
