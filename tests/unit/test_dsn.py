"""DSNs: schemes, defaults, sockets, masking and indirect passwords."""

from __future__ import annotations

import pytest

from envrestore.pipelines.dsn import mask_dsn_text, parse_dsn
from envrestore.pipelines.errors import BadInput


@pytest.mark.parametrize(
    ("text", "engine", "port"),
    [
        ("mariadb://root@127.0.0.1/site", "mariadb", 3306),
        ("mysql://root@127.0.0.1:3307/site", "mariadb", 3307),
        ("postgresql://postgres@127.0.0.1/site", "postgresql", 5432),
        ("postgres://postgres@127.0.0.1:6543/site", "postgresql", 6543),
    ],
)
def test_schemes_select_the_engine_and_default_port(text, engine, port):
    dsn = parse_dsn(text)
    assert (dsn.engine, dsn.port, dsn.database, dsn.host) == (engine, port, "site", "127.0.0.1")


def test_user_password_and_database_are_percent_decoded():
    dsn = parse_dsn("mariadb://wp%40user:p%40ss%3Aw%2Frd@db.internal:3306/wp%20site")
    assert dsn.user == "wp@user"
    assert dsn.password == "p@ss:w/rd"
    assert dsn.database == "wp site"
    assert dsn.resolve_password() == "p@ss:w/rd"


def test_password_never_appears_in_repr_str_or_masked():
    dsn = parse_dsn("postgresql://app:s3cr3t@127.0.0.1:5432/site?sslmode=disable")
    for shown in (repr(dsn), str(dsn), dsn.masked()):
        assert "s3cr3t" not in shown
    assert dsn.masked() == "postgresql://app:***@127.0.0.1:5432/site?sslmode=disable"


def test_masked_without_password_shows_only_the_user():
    assert (
        parse_dsn("mariadb://root@127.0.0.1/site").masked() == "mariadb://root@127.0.0.1:3306/site"
    )


def test_password_env_is_read_at_use_time(monkeypatch):
    dsn = parse_dsn("mariadb://root@127.0.0.1/site?password_env=SITE_DB_PW")
    monkeypatch.setenv("SITE_DB_PW", "from-env")
    assert dsn.resolve_password() == "from-env"
    assert "***" in dsn.masked()
    monkeypatch.setenv("SITE_DB_PW", "rotated")
    assert dsn.resolve_password() == "rotated"


def test_password_env_unset_is_bad_input_naming_the_variable(monkeypatch):
    monkeypatch.delenv("SITE_DB_PW_UNSET", raising=False)
    dsn = parse_dsn("mariadb://root@127.0.0.1/site?password_env=SITE_DB_PW_UNSET")
    with pytest.raises(BadInput, match="SITE_DB_PW_UNSET"):
        dsn.resolve_password()


def test_password_file_is_read_without_its_trailing_newline(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    dsn = parse_dsn(f"postgresql://app@127.0.0.1/site?password_file={secret}")
    assert dsn.resolve_password() == "from-file"


def test_missing_password_file_is_bad_input(tmp_path):
    dsn = parse_dsn(f"postgresql://app@127.0.0.1/site?password_file={tmp_path}/nope")
    with pytest.raises(BadInput, match="cannot be read"):
        dsn.resolve_password()


def test_no_password_resolves_to_none():
    assert parse_dsn("postgresql://app@127.0.0.1/site").resolve_password() is None


def test_unix_sockets_for_each_engine():
    pg = parse_dsn("postgresql://app@/site?host=/var/run/postgresql")
    my = parse_dsn("mariadb://root@localhost/site?socket=/run/mysqld/mysqld.sock")
    assert pg.socket == "/var/run/postgresql"
    assert my.socket == "/run/mysqld/mysqld.sock"
    assert "host" not in pg.params
    assert "socket" not in my.params


def test_with_database_keeps_the_server_and_credentials():
    dsn = parse_dsn("mariadb://root:pw@127.0.0.1/site")
    shadow = dsn.with_database("site_shadow")
    assert (shadow.database, shadow.host, shadow.password) == ("site_shadow", "127.0.0.1", "pw")
    assert dsn.database == "site"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("sqlite://user:topsecret@host/db", "unknown scheme"),
        ("mariadb://user:topsecret@host", "database name is missing"),
        ("mariadb://user:topsecret@host/", "database name is missing"),
        ("postgresql://user:topsecret@host:99999/db", "port"),
        ("postgresql://user:topsecret@host/db?password_env=X", "one way only"),
        ("postgresql://user@host/db?host=relative/dir", "absolute"),
        ("postgresql://user@host/a/b", "'/'"),
    ],
)
def test_bad_dsns_are_bad_input_with_the_masked_dsn(text, problem):
    with pytest.raises(BadInput, match=problem) as info:
        parse_dsn(text)
    assert "topsecret" not in str(info.value)
    assert "invalid database DSN" in str(info.value)


def test_mask_dsn_text_masks_unparseable_input():
    assert mask_dsn_text("bogus://u:pa@ss@h/db") == "bogus://u:***@h/db"
    assert "zz" not in mask_dsn_text("x://h/db?password=zz")
