"""API tokens on the real ledger: made once, stored as a digest, scoped, revocable.

The CLI part runs `envrestore token ...` as a subprocess, as an operator would.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import AsyncIterator

import asyncpg
import pytest

from envrestore.pipelines.auth.tokens import (
    authenticate,
    create_token,
    list_tokens,
    parse_token,
    revoke_token,
)
from envrestore.pipelines.errors import BadInput, Conflict, NotFound
from envrestore.pipelines.ledger.connection import create_pool
from tests.support.workers import ENVRESTORE

pytestmark = pytest.mark.integration


@pytest.fixture
async def pool(ledger_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(ledger_url, max_size=4)
    await pool.execute("INSERT INTO sites (name) VALUES ('shop'), ('blog'), ('wiki')")
    try:
        yield pool
    finally:
        await pool.close()


async def make(pool: asyncpg.Pool, name: str = "ci", **kwargs) -> str:
    options = {"sites": ["shop"], "scopes": ["read", "restore"], "expires_days": None}
    options.update(kwargs)
    raw, _ = await create_token(pool, name=name, **options)
    return raw


async def test_a_new_token_authenticates_with_its_sites_and_scopes(pool):
    raw, made = await create_token(
        pool, name="dash", sites=["shop", "blog"], scopes=["restore", "read"], expires_days=30
    )
    assert raw.startswith("envr_") and made.token_id in raw
    grant = await authenticate(pool, raw)
    assert grant == made
    assert grant.sites == frozenset({"shop", "blog"})
    assert grant.may("read") and grant.may("restore") and not grant.may("backup")
    assert grant.may_see("blog") and not grant.may_see("wiki")
    assert str(grant.principal) == "token:dash"
    # a token for every site
    everywhere = await authenticate(pool, await make(pool, "ops", sites=None, scopes=["admin"]))
    assert everywhere is not None and everywhere.sites is None and everywhere.may("link")


async def test_the_stored_row_holds_a_digest_never_the_token(pool):
    raw = await make(pool)
    token_id, secret = parse_token(raw)
    row = await pool.fetchrow("SELECT * FROM tokens WHERE id = $1", token_id)
    assert row["hash"] == hashlib.sha256(secret.encode()).hexdigest()
    stored = " ".join(str(value) for value in row.values())
    assert secret not in stored and raw not in stored
    # two tokens never share a secret or an id
    other = await make(pool, "ci2")
    assert parse_token(other)[0] != token_id and parse_token(other)[1] != secret


async def test_a_wrong_secret_another_tokens_secret_or_garbage_is_refused(pool):
    raw = await make(pool)
    other = await make(pool, "other")
    token_id, secret = parse_token(raw)
    flipped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    assert await authenticate(pool, f"envr_{token_id}_{flipped}") is None
    assert await authenticate(pool, f"envr_{token_id}_{parse_token(other)[1]}") is None
    assert await authenticate(pool, f"envr_0000000000000000_{secret}") is None  # unknown id
    assert await authenticate(pool, "") is None
    assert await authenticate(pool, secret) is None
    assert await authenticate(pool, raw) is not None  # the right one still works


async def test_revoked_and_expired_tokens_never_authenticate(pool):
    revoked = await make(pool, "gone")
    expired = await make(pool, "old", expires_days=1)
    assert await authenticate(pool, revoked) is not None
    done = await revoke_token(pool, "gone")
    assert not done.already
    assert await authenticate(pool, revoked) is None
    await pool.execute(
        "UPDATE tokens SET expires_at = now() - interval '1 second' WHERE name = 'old'"
    )
    assert await authenticate(pool, expired) is None
    by_name = {info.name: info for info in await list_tokens(pool)}
    now = by_name["old"].created_at.__class__.now(by_name["old"].created_at.tzinfo)
    assert by_name["gone"].status(now) == "revoked"
    assert by_name["old"].status(now) == "expired"


async def test_revoke_by_id_or_name_once_and_unknown_is_not_found(pool):
    raw = await make(pool)
    token_id = parse_token(raw)[0]
    first = await revoke_token(pool, token_id)
    again = await revoke_token(pool, "ci")
    assert (first.id, first.name, first.already) == (token_id, "ci", False)
    assert again.already and again.revoked_at == first.revoked_at
    with pytest.raises(NotFound, match="no token"):
        await revoke_token(pool, "nobody")


async def test_revoke_prefers_the_id_when_a_name_looks_like_another_tokens_id(pool):
    target = parse_token(await make(pool, "target"))[0]
    decoy = await make(pool, target)  # a token *named* like the other's id
    done = await revoke_token(pool, target)
    assert done.name == "target"
    assert await authenticate(pool, decoy) is not None


async def test_last_use_is_recorded_at_most_once_a_minute(pool):
    raw = await make(pool)
    assert (await list_tokens(pool))[0].last_used_at is None
    await authenticate(pool, raw)
    first = (await list_tokens(pool))[0].last_used_at
    assert first is not None
    await authenticate(pool, raw)
    assert (await list_tokens(pool))[0].last_used_at == first  # no write for every request
    await pool.execute("UPDATE tokens SET last_used_at = now() - interval '2 minutes'")
    await authenticate(pool, raw)
    assert (await list_tokens(pool))[0].last_used_at > first


async def test_bad_requests_are_refused_and_store_nothing(pool):
    with pytest.raises(NotFound, match=r"no such site.*nope"):
        await make(pool, sites=["shop", "nope"])
    with pytest.raises(BadInput, match="unknown scope"):
        await make(pool, scopes=["read", "delete"])
    with pytest.raises(BadInput, match="at least one site"):
        await make(pool, sites=[])
    with pytest.raises(BadInput, match="token name"):
        await make(pool, "two words")
    with pytest.raises(BadInput, match="--expires"):
        await make(pool, expires_days=0)
    assert await list_tokens(pool) == []
    await make(pool)
    with pytest.raises(Conflict, match="exists already"):
        await make(pool, sites=["blog"])
    assert [info.sites for info in await list_tokens(pool)] == [("shop",)]


# ---------------------------------------------------------------------- CLI


@pytest.fixture
def shell(ledger_url: str, pool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENVRESTORE_")}
    env.update({"ENVRESTORE_DATABASE_URL": ledger_url, "COLUMNS": "80"})
    return env


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ENVRESTORE, "token", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def refused(done: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    for word in words:
        assert word in lines[0], lines[0]


async def test_cli_create_prints_the_token_once_list_never_shows_it_revoke_ends_it(shell, pool):
    made = cli(
        shell,
        "create",
        "--name",
        "dash",
        "--sites",
        "shop,blog",
        "--scopes",
        "read,restore",
        "--expires",
        "7",
    )
    assert made.returncode == 0, made.stderr
    raw = made.stdout.strip()
    assert made.stdout.count("\n") == 1  # the token alone, so $(envrestore token create ...) works
    assert "cannot be shown again" in made.stderr
    grant = await authenticate(pool, raw)
    assert grant is not None and grant.sites == frozenset({"blog", "shop"})

    as_json = cli(shell, "create", "--name", "ops", "--sites", "*", "--scopes", "admin", "--json")
    assert as_json.returncode == 0, as_json.stderr
    ops = json.loads(as_json.stdout)
    assert ops["sites"] is None and ops["scopes"] == ["admin"] and ops["expires_at"] is None
    assert (await authenticate(pool, ops["token"])).principal.name == "ops"

    digests = [row["hash"] for row in await pool.fetch("SELECT hash FROM tokens")]
    for listing in (cli(shell, "list"), cli(shell, "list", "--json")):
        assert listing.returncode == 0, listing.stderr
        for secret in (raw, parse_token(raw)[1], ops["token"], *digests):
            assert secret not in listing.stdout
    listed = {t["name"]: t for t in json.loads(cli(shell, "list", "--json").stdout)}
    assert listed["dash"]["sites"] == ["blog", "shop"]
    assert listed["dash"]["scopes"] == ["read", "restore"]
    assert listed["dash"]["status"] == "active" and listed["dash"]["last_used_at"] is not None
    assert listed["ops"]["id"] == ops["id"]
    assert grant.token_id in cli(shell, "list").stdout  # ids whole at 80 columns

    revoked = cli(shell, "revoke", "dash")
    assert revoked.returncode == 0 and f"revoked token {grant.token_id}" in revoked.stdout
    assert await authenticate(pool, raw) is None
    again = cli(shell, "revoke", grant.token_id, "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["already"] is True
    listed = {t["name"]: t for t in json.loads(cli(shell, "list", "--json").stdout)}
    assert listed["dash"]["status"] == "revoked" and listed["ops"]["status"] == "active"


def test_cli_mistakes_are_one_line_with_their_exit_codes(shell):
    refused(
        cli(shell, "create", "--name", "a", "--sites", "shop,nope", "--scopes", "read"), 3, "nope"
    )
    refused(
        cli(shell, "create", "--name", "a", "--sites", "shop", "--scopes", "read,delete"),
        2,
        "delete",
    )
    refused(
        cli(
            shell, "create", "--name", "a", "--sites", "shop", "--scopes", "read", "--expires", "0"
        ),
        2,
        "--expires",
    )
    refused(
        cli(shell, "create", "--name", "a b", "--sites", "shop", "--scopes", "read"),
        2,
        "token name",
    )
    usage = cli(shell, "create", "--name", "a", "--scopes", "read")  # click's usage error
    assert usage.returncode == 2 and "Missing option '--sites'" in usage.stderr
    assert (
        cli(shell, "create", "--name", "a", "--sites", "shop", "--scopes", "read").returncode == 0
    )
    refused(
        cli(shell, "create", "--name", "a", "--sites", "shop", "--scopes", "read"),
        4,
        "exists already",
    )
    refused(cli(shell, "revoke", "nobody"), 3, "nobody")
    missing = cli(shell, "revoke", "nobody", "--json")
    assert missing.returncode == 3
    assert json.loads(missing.stdout)["error"]["code"] == "not_found"
    bad = cli(shell, "create", "--name", "b", "--sites", "wiki,shop2", "--scopes", "read", "--json")
    assert bad.returncode == 3, bad.stdout
    assert json.loads(bad.stdout)["error"] == {
        "code": "not_found",
        "message": "no such site(s): shop2; see `envrestore site list`",
    }
    assert [t["name"] for t in json.loads(cli(shell, "list", "--json").stdout)] == ["a"]
