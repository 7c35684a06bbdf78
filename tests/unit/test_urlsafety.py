"""Import URLs: every spelling of an inside address is refused, public ones pass."""

from __future__ import annotations

import ipaddress

import pytest

from envrestore.pipelines.errors import UnsafeInput
from envrestore.pipelines.sources.urlsafety import (
    check_url,
    refusal_for,
    resolve_checked,
    resolve_url,
)

HINT = "ENVRESTORE_IMPORT_ALLOW_HOSTS"

# Names the test resolver answers; nothing here reaches real DNS.
ANSWERS = {
    "internal.example.com": ["10.0.0.5"],
    "mixed.example.com": ["93.184.216.34", "10.0.0.5"],
    "mixed6.example.com": ["2606:4700::1111", "fd00::5"],
    "metadata.example.com": ["169.254.169.254"],
    "public.example.com": ["93.184.216.34", "2606:4700::1111"],
    "files.internal": ["10.1.2.3"],
}


async def fake_dns(host: str, port: int) -> list[str]:
    return ANSWERS[host]


# (url, what the message must say, the error's problem)
REFUSED = [
    # loopback, in every spelling a resolver accepts
    ("http://localhost/db.sql.gz", "127.0.0.1 (loopback)", "private_address"),
    ("http://127.0.0.1/", "(loopback)", "private_address"),
    ("http://127.1/", "127.0.0.1 (loopback)", "private_address"),
    ("http://127.0.0.1./", "127.0.0.1 (loopback)", "private_address"),
    ("http://2130706433/", "127.0.0.1 (loopback)", "private_address"),
    ("http://0x7f000001/", "127.0.0.1 (loopback)", "private_address"),
    ("http://0x7f.0.0.1/", "127.0.0.1 (loopback)", "private_address"),
    ("http://0X7F.1/", "127.0.0.1 (loopback)", "private_address"),
    ("http://0177.0.0.1/", "127.0.0.1 (loopback)", "private_address"),
    ("http://017700000001/", "127.0.0.1 (loopback)", "private_address"),
    ("http://127.255.255.254:8080/", "(loopback)", "private_address"),
    # "this network", private, link-local, CGNAT
    ("http://0/", "0.0.0.0 (unspecified)", "private_address"),
    ("http://0.0.0.0/", "(unspecified)", "private_address"),
    ("http://0.1.2.3/", "'this network' (0.0.0.0/8)", "private_address"),
    ("http://10.0.0.5/x.sql.gz", "10.0.0.5 (private)", "private_address"),
    ("http://10.1/", "10.0.0.1 (private)", "private_address"),
    ("http://172.16.0.1/", "(private)", "private_address"),
    ("http://172.31.255.255/", "(private)", "private_address"),
    ("http://192.168.1.1/", "(private)", "private_address"),
    ("http://169.254.169.254/latest/meta-data/", "(link-local)", "private_address"),
    ("http://100.64.0.1/", "(carrier-grade NAT (100.64.0.0/10))", "private_address"),
    # multicast, reserved, broadcast, special-purpose ranges
    ("http://224.0.0.1/", "(multicast)", "private_address"),
    ("http://239.255.255.250/", "(multicast)", "private_address"),
    ("http://240.0.0.1/", "(reserved)", "private_address"),
    ("http://255.255.255.255/", "(broadcast)", "private_address"),
    ("http://192.0.2.1/", "(documentation range)", "private_address"),
    ("http://198.51.100.1/", "(documentation range)", "private_address"),
    ("http://203.0.113.1/", "(documentation range)", "private_address"),
    ("http://198.18.0.1/", "(benchmarking range)", "private_address"),
    ("http://192.0.0.8/", "(IETF protocol assignments (192.0.0.0/24))", "private_address"),
    # IPv6 and the IPv6 forms of IPv4
    ("http://[::1]/", "::1 (loopback)", "private_address"),
    ("http://[0:0:0:0:0:0:0:1]:8080/", "::1 (loopback)", "private_address"),
    ("http://[::]/", "(unspecified)", "private_address"),
    (
        "http://[::ffff:127.0.0.1]/",
        "(IPv4-mapped form of 127.0.0.1 which is loopback)",
        "private_address",
    ),
    (
        "http://[::ffff:7f00:1]/",
        "(IPv4-mapped form of 127.0.0.1 which is loopback)",
        "private_address",
    ),
    (
        "http://[::ffff:10.0.0.1]/",
        "(IPv4-mapped form of 10.0.0.1 which is private)",
        "private_address",
    ),
    (
        "http://[::ffff:169.254.169.254]/",
        "form of 169.254.169.254 which is link-local",
        "private_address",
    ),
    (
        "http://[::127.0.0.1]/",
        "(IPv4-compatible form of 127.0.0.1 which is loopback)",
        "private_address",
    ),
    (
        "http://[::ffff:0:a00:1]/",
        "(IPv4-translated form of 10.0.0.1 which is private)",
        "private_address",
    ),
    ("http://[64:ff9b::7f00:1]/", "(NAT64 form of 127.0.0.1 which is loopback)", "private_address"),
    (
        "http://[64:ff9b::a9fe:a9fe]/",
        "(NAT64 form of 169.254.169.254 which is link-local)",
        "private_address",
    ),
    ("http://[64:ff9b:1::a00:1]/", "(NAT64 form of 10.0.0.1 which is private)", "private_address"),
    ("http://[2002:7f00:1::]/", "(6to4 form of 127.0.0.1 which is loopback)", "private_address"),
    (
        "http://[2002:c0a8:101::1]/",
        "(6to4 form of 192.168.1.1 which is private)",
        "private_address",
    ),
    ("http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/", "(Teredo)", "private_address"),
    ("http://[fe80::1]/", "(link-local)", "private_address"),
    ("http://[fec0::1]/", "(site-local)", "private_address"),
    ("http://[fc00::1]/", "(unique local)", "private_address"),
    ("http://[fd12::1]/", "(unique local)", "private_address"),
    ("http://[ff02::1]/", "(multicast)", "private_address"),
    ("http://[2001:db8::1]/", "(documentation range)", "private_address"),
    ("http://[3fff::1]/", "(documentation range)", "private_address"),
    ("http://[2001:2::1]/", "(benchmarking range)", "private_address"),
    (
        "http://[4000::1]/",
        "(reserved (outside the global unicast range 2000::/3))",
        "private_address",
    ),
    ("http://[fe80::1%25eth0]/", "zone id", "bad_host"),
    # names that resolve inside (through the test resolver)
    (
        "http://internal.example.com/x.sql.gz",
        "internal.example.com resolves to 10.0.0.5 (private)",
        "private_address",
    ),
    (
        "http://mixed.example.com/",
        "mixed.example.com resolves to 10.0.0.5 (private)",
        "private_address",
    ),
    ("http://mixed6.example.com/", "resolves to fd00::5 (unique local)", "private_address"),
    ("http://metadata.example.com/", "169.254.169.254 (link-local)", "private_address"),
    # shapes that are not a plain http(s) URL to a host
    ("ftp://example.com/db.sql.gz", "scheme ftp: is not allowed", "scheme"),
    ("file:///etc/passwd", "scheme file: is not allowed", "scheme"),
    ("gopher://example.com:70/_GET", "scheme gopher: is not allowed", "scheme"),
    ("javascript:alert(1)", "scheme javascript: is not allowed", "scheme"),
    ("example.com/db.sql.gz", "no scheme", "scheme"),
    ("http://user:pass@example.com/", "credentials", "credentials"),
    ("http://example.com\\@127.0.0.1/", "credentials", "credentials"),
    ("http:///db.sql.gz", "names no host", "no_host"),
    ("http://:8080/", "names no host", "no_host"),
    ("http://example.com:0/", "port 0", "bad_port"),
    ("http://example.com:99999/", "port 99999", "bad_port"),
    ("http://example.com:8o/", "port 8o", "bad_port"),
    ("http://1.2.3.4.5/", "not a valid IPv4 address", "bad_host"),
    ("http://example.0x10/", "not a valid IPv4 address", "bad_host"),
    ("http://%31%32%37.0.0.1/", "not a valid host name", "bad_host"),
    ("http://::1/", "IPv6 address without [...]", "bad_host"),
    ("http://[127.0.0.1]/", "cannot be in brackets", "bad_url"),
    ("http://éxample.com/", "xn--", "bad_host"),
    ("http://example.com/a b", "whitespace", "bad_url"),
    ("http://example.com/\x1b[2J", "control character", "bad_url"),
    ("http://exam\u202eple.com/", "control character", "bad_url"),
]


@pytest.mark.parametrize(("url", "says", "problem"), REFUSED, ids=[r[0] for r in REFUSED])
async def test_refused(url: str, says: str, problem: str) -> None:
    resolver = None if "localhost" in url else fake_dns
    with pytest.raises(UnsafeInput) as caught:
        await resolve_url(url, allow_hosts=[], resolver=resolver)
    message = str(caught.value)
    assert says in message
    assert caught.value.data["problem"] == problem
    assert message.startswith("the URL ")
    if problem == "private_address":
        assert HINT in message


def test_the_table_is_big_enough() -> None:
    assert len(REFUSED) >= 45


async def test_message_names_the_url_without_its_query() -> None:
    url = "http://internal.example.com/x.sql.gz?X-Amz-Signature=secret#frag"
    with pytest.raises(UnsafeInput) as caught:
        await resolve_url(url, allow_hosts=[], resolver=fake_dns)
    message = str(caught.value)
    assert message.startswith(
        "the URL http://internal.example.com/x.sql.gz is refused: its host "
        "internal.example.com resolves to 10.0.0.5 (private)"
    )
    assert "secret" not in message
    assert "secret" not in repr(caught.value.data)
    assert caught.value.data == {
        "problem": "private_address",
        "address": "10.0.0.5",
        "reason": "private",
    }


async def test_credentials_stay_out_of_the_message() -> None:
    with pytest.raises(UnsafeInput) as caught:
        check_url("https://admin:hunter2@example.com/db.sql.gz?sig=x")
    assert "hunter2" not in str(caught.value)
    assert "hunter2" not in repr(caught.value.data)
    assert "https://example.com/db.sql.gz" in str(caught.value)


@pytest.mark.parametrize(
    "address",
    [
        "93.184.216.34",
        "8.8.8.8",
        "1.1.1.1",
        "2606:4700::1111",
        "2a00:1450:4001:82a::200e",
        "64:ff9b::5db8:d822",
    ],
)
def test_public_addresses_pass(address: str) -> None:
    assert refusal_for(ipaddress.ip_address(address)) is None


async def test_public_names_and_numbers_pass() -> None:
    split, addresses = await resolve_url(
        "https://public.example.com/backups/db.sql.gz?X-Amz-Signature=abc",
        allow_hosts=[],
        resolver=fake_dns,
    )
    assert addresses == ["93.184.216.34", "2606:4700::1111"]
    assert split.url == "https://public.example.com/backups/db.sql.gz?X-Amz-Signature=abc"
    assert split.shown == "https://public.example.com/backups/db.sql.gz"
    split, addresses = await resolve_url("http://1572395042:8080/x", allow_hosts=[])
    assert addresses == ["93.184.216.34"]
    assert split.url == "http://93.184.216.34:8080/x"  # fetched by the address it was read as


def test_check_url_parts() -> None:
    split = check_url("HTTPS://Files.Example.COM:8443/a/é b%20c?q=ü#frag".replace(" ", "%20"))
    assert (split.scheme, split.host, split.port) == ("https", "files.example.com", 8443)
    assert split.path == "/a/%C3%A9%20b%20c"
    assert split.query == "q=%C3%BC"
    assert check_url("http://[::FFFF:7F00:1]/").host == "::ffff:7f00:1"
    assert check_url("http://example.com").path == "/"


async def test_allowlist_host_matches_any_port() -> None:
    _, addresses = await resolve_url(
        "http://files.internal:9000/db.sql.gz", allow_hosts=["files.internal"], resolver=fake_dns
    )
    assert addresses == ["10.1.2.3"]


async def test_allowlist_host_and_port() -> None:
    allow = ["10.0.0.5:8080", "[fd00::1]:9000"]
    assert await resolve_checked("10.0.0.5", 8080, allow_hosts=allow) == ["10.0.0.5"]
    assert await resolve_checked("fd00::1", 9000, allow_hosts=allow) == ["fd00::1"]
    with pytest.raises(UnsafeInput, match=r"10\.0\.0\.5 \(private\)"):
        await resolve_checked("10.0.0.5", 8081, allow_hosts=allow)
    with pytest.raises(UnsafeInput, match="unique local"):
        await resolve_checked("fd00::1", 80, allow_hosts=allow)


async def test_allowlist_is_on_the_host_as_written() -> None:
    # The operator allowed 127.0.0.1; another spelling of it is not that entry.
    with pytest.raises(UnsafeInput, match="loopback"):
        await resolve_url("http://127.1/", allow_hosts=["127.0.0.1"])
    with pytest.raises(UnsafeInput, match="loopback"):
        await resolve_url("http://localhost/", allow_hosts=["127.0.0.1"])
    # ... and a name on the list does not allow another name with the same address.
    with pytest.raises(UnsafeInput, match="private"):
        await resolve_url(
            "http://internal.example.com/", allow_hosts=["files.internal"], resolver=fake_dns
        )
    _, addresses = await resolve_url("http://[::1]:8080/", allow_hosts=["::1"])
    assert addresses == ["::1"]


async def test_resolver_answer_that_is_not_an_address() -> None:
    async def broken(host: str, port: int) -> list[str]:
        return ["not-an-ip"]

    with pytest.raises(UnsafeInput, match="not an address"):
        await resolve_url("http://example.com/", allow_hosts=[], resolver=broken)
