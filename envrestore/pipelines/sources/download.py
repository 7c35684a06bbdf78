"""Download an import's part from a URL the user gave, without letting the URL reach inside.

Every hop (the URL, then each redirect) is checked by `urlsafety` before a
request is sent: scheme, host, every address the host resolves to. The
connection goes only to the addresses that were checked: aiohttp asks
`PinnedResolver`, which answers with those and nothing else (TLS still sees
the host name). Redirects are followed here, not by aiohttp, so each one is
checked; no proxy from the environment, no cookies, no decompression (a
`.sql.gz` stays gzip), and the body is cut off the moment it passes the
import limit.
"""

from __future__ import annotations

import re
import socket
from collections.abc import AsyncIterator, Collection
from typing import TYPE_CHECKING
from urllib.parse import urljoin

import aiohttp
import structlog
from aiohttp.abc import AbstractResolver
from yarl import URL

from envrestore.pipelines.errors import (
    BadInput,
    EnvrestoreError,
    NotFound,
    Refused,
    TransientError,
    UnsafeInput,
)
from envrestore.pipelines.sources.urlsafety import (
    DNS_TIMEOUT,
    Resolver,
    SplitUrl,
    check_url,
    resolve_checked,
)
from envrestore.pipelines.text import clean_text

if TYPE_CHECKING:
    from aiohttp.abc import ResolveResult  # aiohttp >= 3.10; a plain dict at run time

log = structlog.get_logger(__name__)

REDIRECTS = frozenset({301, 302, 303, 307, 308})
_HEADERS = {"User-Agent": "envrestore-import", "Accept-Encoding": "identity", "Accept": "*/*"}


class PinnedResolver(AbstractResolver):
    """aiohttp's name lookups, answered only with addresses `resolve_checked` approved.

    `check` resolves and checks a host once and pins the answer; aiohttp's
    own lookup then gets exactly those addresses, so a DNS server cannot
    answer the check with a public address and the connection with a private
    one.
    """

    def __init__(
        self,
        allow_hosts: Collection[str],
        resolver: Resolver | None = None,
        timeout: float = DNS_TIMEOUT,
    ) -> None:
        self._allow_hosts = allow_hosts
        self._resolver = resolver
        self._timeout = timeout
        self._pinned: dict[tuple[str, int], list[str]] = {}

    async def check(self, host: str, port: int, *, url: str | None = None) -> list[str]:
        """The checked addresses of `host`:`port`, looked up once per download."""
        key = (host, port)
        if key not in self._pinned:
            self._pinned[key] = await resolve_checked(
                host,
                port,
                allow_hosts=self._allow_hosts,
                resolver=self._resolver,
                timeout=self._timeout,
                url=url,
            )
        return self._pinned[key]

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results: list[ResolveResult] = []
        for address in await self.check(host, port):
            found = socket.AF_INET6 if ":" in address else socket.AF_INET
            if family in (socket.AF_INET, socket.AF_INET6) and found != family:
                continue
            results.append(
                {
                    "hostname": host,
                    "host": address,
                    "port": port,
                    "family": found,
                    "proto": socket.IPPROTO_TCP,
                    "flags": socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                }
            )
        if not results:
            raise OSError(f"{host} has no checked address of family {family!r}")
        return results

    async def close(self) -> None:
        self._pinned.clear()


async def download(
    url: str,
    *,
    allow_hosts: Collection[str],
    max_bytes: int,
    connect_timeout: float,
    read_timeout: float,
    max_redirects: int = 5,
    resolver: Resolver | None = None,
    chunk_size: int = 1 << 20,
) -> AsyncIterator[bytes]:
    """The body at `url`, as served, in chunks; every hop checked before it is requested.

    Raises `UnsafeInput` for a URL or redirect the rules refuse and for a body
    over `max_bytes`; `NotFound`/`Refused` for 404/410 and 401/403 (and other
    4xx); `TransientError` for timeouts, dropped connections and 5xx.
    Nothing is yielded before the final response passed its checks.
    """
    current = check_url(url)
    pinned = PinnedResolver(allow_hosts, resolver, connect_timeout)
    connector = aiohttp.TCPConnector(resolver=pinned, use_dns_cache=False, limit=1)
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=connect_timeout, sock_read=read_timeout
    )
    async with aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        trust_env=False,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        headers=_HEADERS,
    ) as session:
        redirects = 0
        came_from: str | None = None
        while True:
            try:
                addresses = await pinned.check(current.host, current.port, url=current.shown)
            except UnsafeInput as exc:
                raise _from_redirect(exc, came_from) from None
            try:
                async with session.get(_request_url(current), allow_redirects=False) as response:
                    if response.status in REDIRECTS:
                        redirects += 1
                        came_from = current.shown
                        current = _next_hop(current, response, redirects, max_redirects)
                        continue
                    _check_response(current, response, max_bytes)
                    log.info(
                        "import.download_from",
                        url=current.shown,
                        host=current.host,
                        addresses=addresses,
                        status=response.status,
                        content_length=response.content_length,
                    )
                    received = 0
                    async for chunk in response.content.iter_chunked(chunk_size):
                        received += len(chunk)
                        if received > max_bytes:
                            raise UnsafeInput(
                                f"the download of {current.shown} was cut off at {received} "
                                "bytes: it is larger than the import limit "
                                f"ENVRESTORE_IMPORT_MAX_BYTES ({max_bytes} bytes)",
                                problem="too_large",
                                url=current.shown,
                            )
                        yield chunk
                    return
            except EnvrestoreError:
                raise
            except TimeoutError:
                raise TransientError(
                    f"the download of {current.shown} timed out: no connection within "
                    f"{connect_timeout:g} s or no data for {read_timeout:g} s; it will be retried",
                    problem="timeout",
                    url=current.shown,
                ) from None
            except aiohttp.ClientResponseError as exc:
                raise BadInput(
                    f"the server of {current.shown} sent a response that is not valid HTTP "
                    f"({clean_text(exc.message, 200)})",
                    problem="bad_response",
                    url=current.shown,
                ) from None
            except aiohttp.ClientPayloadError as exc:
                raise TransientError(
                    f"the download of {current.shown} broke off ({_reason(exc)}); "
                    "it will be retried",
                    problem="connection_failed",
                    url=current.shown,
                ) from None
            except (aiohttp.ClientError, OSError) as exc:
                raise TransientError(
                    f"could not download {current.shown}: {_reason(exc)}; it will be retried",
                    problem="connection_failed",
                    url=current.shown,
                ) from None


def _reason(exc: BaseException) -> str:
    """An aiohttp error's text without any URL query it quotes (signatures stay out)."""
    return clean_text(re.sub(r"\?\S*", "", str(exc)) or type(exc).__name__, 200)


def _request_url(split: SplitUrl) -> URL:
    """The URL aiohttp is given, built from the checked parts so it cannot read them otherwise."""
    host = split.connect_host
    request = URL.build(
        scheme=split.scheme,
        host=f"[{host}]" if ":" in host else host,
        port=split.port,
        path=split.path,
        query_string=split.query,
        encoded=True,
    )
    if (request.scheme, request.raw_host, request.port) != (split.scheme, host, split.port):
        raise UnsafeInput(
            f"the URL {split.shown} is refused: it does not read the same twice",
            problem="bad_url",
        )
    return request


def _next_hop(
    current: SplitUrl, response: aiohttp.ClientResponse, redirects: int, max_redirects: int
) -> SplitUrl:
    """The checked shape of where a redirect points (its addresses are checked next)."""
    if redirects > max_redirects:
        raise UnsafeInput(
            f"the download of {current.shown} is refused: it was redirected more than "
            f"{max_redirects} times (more than {max_redirects} redirects)",
            problem="too_many_redirects",
            url=current.shown,
        )
    location = response.headers.get("Location")
    if not location:
        raise BadInput(
            f"the server of {current.shown} answered {response.status} (a redirect) "
            "without saying where to (no Location header)",
            problem="bad_redirect",
            url=current.shown,
        )
    base = f"{current.shown}?{current.query}" if current.query else current.shown
    target = urljoin(base, location)  # against the host as written, for the allowlist
    try:
        following = check_url(target)
    except UnsafeInput as exc:
        raise _from_redirect(exc, current.shown) from None
    log.info(
        "import.redirect",
        from_url=current.shown,
        to_url=following.shown,
        status=response.status,
        redirect=redirects,
    )
    return following


def _from_redirect(exc: UnsafeInput, origin: str | None) -> UnsafeInput:
    """The refusal of a redirect's target, saying which URL redirected there."""
    if origin is None:
        return exc
    return UnsafeInput(f"{exc.message} (a redirect from {origin})", **exc.data)


def _check_response(current: SplitUrl, response: aiohttp.ClientResponse, max_bytes: int) -> None:
    """Refuse a final response that is not a 2xx body within the limit."""
    status = response.status
    data = {"problem": "http_status", "status": status, "url": current.shown}
    said = f"the server of {current.shown} answered HTTP {status}"
    if status in (404, 410):
        raise NotFound(f"{said}: there is no file at that URL; check the link", **data)
    if status in (401, 403):
        raise Refused(
            f"{said}: it refuses the download (a private URL, or an expired presigned link); "
            "give a URL that can be read without logging in",
            **data,
        )
    if status == 429 or status >= 500:
        raise TransientError(f"{said}; the download will be retried", **data)
    if not 200 <= status < 300:
        raise Refused(f"{said}, not a file; give the URL of the file itself", **data)
    length = response.content_length
    if length is not None and length > max_bytes:
        raise UnsafeInput(
            f"the download of {current.shown} is refused: it is {length} bytes (Content-Length), "
            f"larger than the import limit ENVRESTORE_IMPORT_MAX_BYTES ({max_bytes} bytes)",
            problem="too_large",
            url=current.shown,
        )
