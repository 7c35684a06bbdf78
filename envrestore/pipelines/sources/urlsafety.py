"""Which URLs an import may fetch: http(s) to public addresses, or to hosts the operator allows.

The URL and the server behind it belong to whoever asked for the import. A
worker sits inside the platform's network, so a URL naming a private address
(the metadata service at 169.254.169.254, a database on 10.x, a port on
localhost) would make the worker fetch from where the user cannot. Every
address a URL leads to is checked: numeric spellings the resolver accepts
(`2130706433`, `0x7f.1`, `[::ffff:7f00:1]`) are read as the address they are,
and a name is resolved once, every answer checked, and those answers are the
only ones the download may connect to (no second lookup to rebind).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from envrestore.pipelines.errors import BadInput, TransientError, UnsafeInput
from envrestore.pipelines.text import clean_text

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: A name lookup: `(host, port)` to address strings. Tests pass one; workers use DNS.
Resolver = Callable[[str, int], Awaitable[list[str]]]

#: How long a name lookup may take when the caller does not say (seconds).
DNS_TIMEOUT = 10.0
MAX_URL_LENGTH = 8192
_SCHEMES = {"http": 80, "https": 443}
_HINT = (
    "imports may only fetch from public addresses (an operator can allow a private host "
    "with ENVRESTORE_IMPORT_ALLOW_HOSTS)"
)
# Any whitespace, C0/C1 control, DEL, bidi control or lone surrogate refuses the URL.
_BAD_CHAR = re.compile(
    r"[\s\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff\ud800-\udfff]"
)
_NAME = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_NUMBER_LABEL = re.compile(r"0x[0-9a-f]*|[0-9]+")
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
_QUERY_SAFE = _PATH_SAFE + "?"


def _nets(*cidrs: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


# Order matters: the first match names the reason (255.255.255.255 before 240/4).
_V4_RULES = (
    (_nets("0.0.0.0/32"), "unspecified"),
    (_nets("0.0.0.0/8"), "'this network' (0.0.0.0/8)"),
    (_nets("127.0.0.0/8"), "loopback"),
    (_nets("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"), "private"),
    (_nets("169.254.0.0/16"), "link-local"),
    (_nets("100.64.0.0/10"), "carrier-grade NAT (100.64.0.0/10)"),
    (_nets("224.0.0.0/4"), "multicast"),
    (_nets("255.255.255.255/32"), "broadcast"),
    (_nets("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"), "documentation range"),
    (_nets("198.18.0.0/15"), "benchmarking range"),
    (_nets("192.0.0.0/24"), "IETF protocol assignments (192.0.0.0/24)"),
    (_nets("192.88.99.0/24", "240.0.0.0/4"), "reserved"),
)
_V6_RULES = (
    (_nets("::/128"), "unspecified"),
    (_nets("::1/128"), "loopback"),
    (_nets("fe80::/10"), "link-local"),
    (_nets("fec0::/10"), "site-local"),
    (_nets("fc00::/7"), "unique local"),
    (_nets("ff00::/8"), "multicast"),
    (_nets("2001::/32"), "Teredo"),
    (_nets("2001:db8::/32", "3fff::/20"), "documentation range"),
    (_nets("2001:2::/48"), "benchmarking range"),
    (_nets("100::/64"), "discard-only (100::/64)"),
    (_nets("2001::/23"), "IETF protocol assignments (2001::/23)"),
)
# IPv6 ranges that carry an IPv4 address: (range, name, bit offset of the IPv4 address).
_EMBEDDING = (
    (ipaddress.IPv6Network("::ffff:0:0/96"), "IPv4-mapped", 0),
    (ipaddress.IPv6Network("::ffff:0:0:0/96"), "IPv4-translated", 0),
    (ipaddress.IPv6Network("::/96"), "IPv4-compatible", 0),
    (ipaddress.IPv6Network("64:ff9b::/96"), "NAT64", 0),
    (ipaddress.IPv6Network("64:ff9b:1::/48"), "NAT64", 0),
    (ipaddress.IPv6Network("2002::/16"), "6to4", 80),
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")


@dataclass(frozen=True)
class SplitUrl:
    """A URL that passed the shape checks, in the parts a fetch needs.

    `host` is as written (lower-case; IPv6 compressed, without brackets); `ip`
    is the address when the host is a numeric spelling of one. `path` and
    `query` are percent-encoded ASCII. The fragment is dropped (never sent).
    """

    scheme: str
    host: str
    port: int
    path: str
    query: str
    ip: IPAddress | None = None

    @property
    def connect_host(self) -> str:
        """The host to put in the request: the canonical address for numeric spellings."""
        return str(self.ip) if self.ip is not None else self.host

    def netloc(self, host: str) -> str:
        shown = f"[{host}]" if ":" in host else host
        return shown if self.port == _SCHEMES[self.scheme] else f"{shown}:{self.port}"

    @property
    def url(self) -> str:
        """The URL to fetch (with its query)."""
        query = f"?{self.query}" if self.query else ""
        return f"{self.scheme}://{self.netloc(self.connect_host)}{self.path}{query}"

    @property
    def shown(self) -> str:
        """The URL for messages and logs: no query (presigned signatures stay out)."""
        return f"{self.scheme}://{self.netloc(self.host)}{self.path}"


def scrub(url: str) -> str:
    """Untrusted URL text safe for a message: no query, fragment or credentials, bounded."""
    cut = re.split(r"[?#]", url, maxsplit=1)[0]
    cut = re.sub(r"^([^/]*//)[^/]*@", r"\1", cut)
    return clean_text(cut, 300, newlines=False)


def _refuse(url: str, why: str, problem: str) -> UnsafeInput:
    return UnsafeInput(f"the URL {scrub(url)} is refused: {why}", problem=problem, url=scrub(url))


def check_url(url: str) -> SplitUrl:
    """The parts of `url` if its shape is one an import may fetch; `UnsafeInput` if not.

    Checks the scheme, host and port only; `resolve_checked` checks addresses.
    """
    if len(url) > MAX_URL_LENGTH:
        raise _refuse(url, f"it is longer than {MAX_URL_LENGTH} characters", "bad_url")
    bad = _BAD_CHAR.search(url)
    if bad is not None:
        raise _refuse(
            url,
            f"it holds whitespace or a control character ({bad.group()!r}); "
            "percent-encode it (%20 for a space)",
            "bad_url",
        )
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise _refuse(url, f"it is not a valid URL ({exc})", "bad_url") from None
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        what = f"its scheme {scheme}: is" if scheme else "it has no scheme, which is"
        raise _refuse(url, f"{what} not allowed; imports fetch http:// or https:// URLs", "scheme")
    netloc = parts.netloc
    if "@" in netloc:
        raise _refuse(
            url,
            "it carries credentials (user:password@); use a presigned or public URL instead",
            "credentials",
        )
    if not netloc:
        raise _refuse(url, "it names no host", "no_host")
    host, ip, port_text = _split_netloc(url, netloc)
    port = _port(url, port_text, _SCHEMES[scheme])
    try:
        path = quote(parts.path, safe=_PATH_SAFE) or "/"
        query = quote(parts.query, safe=_QUERY_SAFE)
    except UnicodeEncodeError:
        raise _refuse(url, "it holds characters that are not valid text", "bad_url") from None
    return SplitUrl(scheme, host, port, path, query, ip)


def _split_netloc(url: str, netloc: str) -> tuple[str, IPAddress | None, str]:
    """(host, its address if numeric, the port text) of an authority without userinfo."""
    if netloc.startswith("["):
        inside, bracket, rest = netloc[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise _refuse(url, "its IPv6 host is not closed by ']'", "bad_host")
        if "%" in inside:
            raise _refuse(
                url, "its IPv6 host carries a zone id (%...), which is refused", "bad_host"
            )
        try:
            v6 = ipaddress.IPv6Address(inside)
        except ValueError:
            raise _refuse(url, "its host in [...] is not an IPv6 address", "bad_host") from None
        return str(v6), v6, rest[1:]
    host, _, port_text = netloc.partition(":")
    if ":" in port_text:
        raise _refuse(url, "its host looks like an IPv6 address without [...]", "bad_host")
    host = host.lower()
    if not host:
        raise _refuse(url, "it names no host", "no_host")
    if not host.isascii():
        raise _refuse(
            url,
            "its host is not ASCII; write an international name in its xn-- (punycode) form",
            "bad_host",
        )
    ip = numeric_ipv4(host)
    if ip is not None:
        return host, ip, port_text
    labels = host.removesuffix(".").split(".")
    if len(host) > 254 or not all(_NAME.fullmatch(label) for label in labels):
        raise _refuse(url, f"its host {clean_text(host, 100)} is not a valid host name", "bad_host")
    if _NUMBER_LABEL.fullmatch(labels[-1]):
        # A name ending in a number is an address attempt (WHATWG), not a DNS name.
        raise _refuse(url, f"its host {host} is not a valid IPv4 address", "bad_host")
    return host, None, port_text


def _port(url: str, text: str, default: int) -> int:
    if not text:
        return default
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) <= 65535:
        raise _refuse(
            url, f"its port {clean_text(text, 20)} is not a number from 1 to 65535", "bad_port"
        )
    return int(text)


def numeric_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The address a resolver reads in `host` if it is a numeric IPv4 spelling, else None.

    glibc's `inet_aton` (which `getaddrinfo` uses) takes decimal, octal and hex
    parts and short forms (`127.1`, `2130706433`, `0x7f.0.0.1`); so does this.
    A trailing dot is ignored, as the resolver does.
    """
    text = host.removesuffix(".")
    if not text or not re.fullmatch(r"[0-9a-fx.]+", text):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(text))
    except OSError:
        return None


def refusal_for(address: IPAddress) -> str | None:
    """Why an import may not fetch from `address`, or None for a public address."""
    if isinstance(address, ipaddress.IPv4Address):
        for nets, reason in _V4_RULES:
            if any(address in net for net in nets):
                return reason
        return None if address.is_global else "reserved"
    return _refusal_v6(address)


def _refusal_v6(address: ipaddress.IPv6Address) -> str | None:
    for nets, reason in _V6_RULES:
        if any(address in net for net in nets):
            return reason
    for net, form, shift in _EMBEDDING:
        if address not in net:
            continue
        v4 = ipaddress.IPv4Address((int(address) >> shift) & 0xFFFFFFFF)
        inner = refusal_for(v4)
        if inner is not None:
            return f"{form} form of {v4} which is {inner}"
        if net == _NAT64:
            return None  # DNS64 answers public IPv4 hosts this way on IPv6-only networks
        return f"{form} form of {v4} (connect to {v4} itself)"
    if address not in _GLOBAL_UNICAST:
        return "reserved (outside the global unicast range 2000::/3)"
    return None if address.is_global else "reserved"


def _allow_key(entry: str) -> str:
    """An allowlist entry in the form URL hosts are matched in (IPv6 bracketed, compressed)."""
    entry = entry.strip().lower()
    if entry.startswith("["):
        inside, _, rest = entry[1:].partition("]")
        try:
            return f"[{ipaddress.IPv6Address(inside)}]{rest}"
        except ValueError:
            return entry
    if entry.count(":") > 1:
        try:
            return f"[{ipaddress.IPv6Address(entry)}]"
        except ValueError:
            return entry
    return entry


def is_allowed(host: str, port: int, allow_hosts: Collection[str]) -> bool:
    """Whether the operator allows `host` (as written in the URL), on any port or on `port`."""
    host = host.lower().strip("[]")
    key = f"[{host}]" if ":" in host else host
    allowed = {_allow_key(entry) for entry in allow_hosts}
    return key in allowed or f"{key}:{port}" in allowed


async def _getaddrinfo(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return [str(info[4][0]) for info in infos]


async def resolve_checked(
    host: str,
    port: int,
    *,
    allow_hosts: Collection[str],
    resolver: Resolver | None = None,
    timeout: float = DNS_TIMEOUT,
    url: str | None = None,
) -> list[str]:
    """The addresses `host` resolves to, each checked; one refused address refuses them all.

    An attacker's DNS can answer with one public and one private address and
    let the connection pick; so every answer must pass. A host on the
    operator's allowlist skips the address check. `url` (shown, no query)
    names what is refused in the message.
    """
    host = host.lower().strip("[]")
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    subject = f"the URL {scrub(url)}" if url else f"the host {scrub(shown)}"
    literal: IPAddress | None
    try:
        literal = ipaddress.IPv6Address(host) if ":" in host else numeric_ipv4(host)
    except ValueError:
        raise UnsafeInput(
            f"{subject} is refused: its host is not an IPv6 address", problem="bad_host"
        ) from None
    if literal is not None:
        addresses = [literal]
    else:
        answers = await _lookup(host, port, resolver, timeout)
        addresses = [_parse_answer(subject, answer) for answer in answers]
    if not addresses:
        raise BadInput(f"the host {shown} resolves to no address", problem="unresolvable")
    if not is_allowed(host, port, allow_hosts):
        for address in addresses:
            reason = refusal_for(address)
            if reason is None:
                continue
            if literal is None:
                found = f"its host {host} resolves to {address}"
            elif str(literal) == host:
                found = f"its host is {address}"
            else:
                found = f"its host {host} is the address {address}"
            raise UnsafeInput(
                f"{subject} is refused: {found} ({reason}), not a public address; {_HINT}",
                problem="private_address",
                address=str(address),
                reason=reason,
            )
    return list(dict.fromkeys(str(a) for a in addresses))


def _parse_answer(subject: str, answer: str) -> IPAddress:
    try:
        return ipaddress.ip_address(answer.partition("%")[0])
    except ValueError:
        raise UnsafeInput(
            f"{subject} is refused: its host resolves to {clean_text(answer, 100)!r}, "
            "which is not an address",
            problem="bad_answer",
        ) from None


async def _lookup(host: str, port: int, resolver: Resolver | None, timeout: float) -> list[str]:
    try:
        async with asyncio.timeout(timeout):
            return await (resolver or _getaddrinfo)(host, port)
    except TimeoutError:
        raise TransientError(
            f"looking up the host {host} took longer than {timeout:g} s; retrying",
            problem="dns_timeout",
        ) from None
    except socket.gaierror as exc:
        if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
            raise BadInput(
                f"the host {host} does not resolve (no such name); check the URL",
                problem="unresolvable",
            ) from None
        raise TransientError(
            f"looking up the host {host} failed ({exc.strerror}); retrying", problem="dns_failed"
        ) from None


async def resolve_url(
    url: str,
    *,
    allow_hosts: Collection[str],
    resolver: Resolver | None = None,
    timeout: float = DNS_TIMEOUT,
) -> tuple[SplitUrl, list[str]]:
    """`check_url` and `resolve_checked` in one: the URL's parts and its checked addresses."""
    split = check_url(url)
    addresses = await resolve_checked(
        split.host,
        split.port,
        allow_hosts=allow_hosts,
        resolver=resolver,
        timeout=timeout,
        url=split.shown,
    )
    return split, addresses
