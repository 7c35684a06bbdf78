"""Token format, hashing and scope logic, without a ledger (tests/integration/test_tokens.py has one)."""

from __future__ import annotations

import hashlib

import pytest

from envrestore.pipelines.auth.tokens import (
    SCOPES,
    TokenGrant,
    digest,
    parse_token,
    validate_scopes,
)
from envrestore.pipelines.errors import BadInput
from envrestore.pipelines.jobs.principal import Principal

SECRET = "A" * 21 + "b-_" + "9" * 19  # 43 url-safe characters, as token_urlsafe(32) gives


def grant(scopes: set[str], sites: set[str] | None) -> TokenGrant:
    return TokenGrant(
        token_id="0123456789abcdef",
        name="ci",
        sites=None if sites is None else frozenset(sites),
        scopes=frozenset(scopes),
        principal=Principal("token", "ci"),
    )


def test_the_stored_digest_is_sha256_of_the_secret_and_not_the_secret():
    stored = digest(SECRET)
    assert stored == hashlib.sha256(SECRET.encode()).hexdigest()
    assert len(stored) == 64
    assert SECRET not in stored
    assert digest(SECRET[:-1] + "x") != stored


def test_a_well_formed_token_parses_into_id_and_secret():
    assert parse_token(f"envr_0123456789abcdef_{SECRET}") == ("0123456789abcdef", SECRET)
    # surrounding whitespace (a pasted header) is forgiven
    assert parse_token(f" envr_0123456789abcdef_{SECRET}\n") == ("0123456789abcdef", SECRET)


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "Bearer envr_0123456789abcdef_" + SECRET,
        "envr_0123456789ABCDEF_" + SECRET,  # ids are lower-case hex
        "envr_0123456789abcde_" + SECRET,  # id too short
        "envr_0123456789abcdef_" + SECRET[:-1],  # secret too short
        "envr_0123456789abcdef_" + SECRET + "A",  # too long
        "envr_0123456789abcdef_" + SECRET[:-1] + "!",
        "tok_0123456789abcdef_" + SECRET,
        "envr_0123456789abcdef_" + SECRET + "x" * 500,
        "envr_0123456789abcdef" + SECRET,
    ],
)
def test_a_malformed_token_is_refused_before_any_lookup(raw):
    assert parse_token(raw) is None


def test_admin_implies_every_scope_and_other_scopes_only_themselves():
    admin = grant({"admin"}, {"shop"})
    assert all(admin.may(scope) for scope in SCOPES)
    reader = grant({"read", "restore"}, {"shop"})
    assert reader.may("read") and reader.may("restore")
    assert not reader.may("backup")
    assert not reader.may("admin")
    assert not reader.may("import")


def test_sites_none_sees_every_site_and_a_list_only_its_own():
    assert grant({"read"}, None).may_see("anything")
    scoped = grant({"read"}, {"shop", "blog"})
    assert scoped.may_see("shop") and scoped.may_see("blog")
    assert not scoped.may_see("shop2")
    assert not scoped.may_see("")
    # admin widens actions, never sites
    assert not grant({"admin"}, {"shop"}).may_see("blog")


def test_scopes_are_checked_deduplicated_and_ordered():
    assert validate_scopes(["restore", "read", " read "]) == ("read", "restore")
    with pytest.raises(BadInput, match=r"unknown scope.*delete"):
        validate_scopes(["read", "delete"])
    with pytest.raises(BadInput, match="at least one scope"):
        validate_scopes(["", " "])


def test_the_grant_names_its_token_as_the_principal():
    assert str(grant({"read"}, None).principal) == "token:ci"
