"""Downloads of imports against real local HTTP servers: what is refused never gets a request."""

from __future__ import annotations

import asyncio
import gzip
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from envrestore.pipelines.errors import NotFound, Refused, TransientError, UnsafeInput
from envrestore.pipelines.sources.download import download

pytestmark = pytest.mark.integration

BODY = bytes(range(256)) * 4096  # 1 MiB


class Server:
    """A local HTTP server that records every request it gets."""

    def __init__(self, server: TestServer) -> None:
        self.server = server
        self.seen: list[str] = []

    @property
    def port(self) -> int:
        port = self.server.port
        assert port is not None
        return port

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    @property
    def allow(self) -> list[str]:
        return [f"127.0.0.1:{self.port}"]


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
StartServer = Callable[[dict[str, Handler]], Awaitable[Server]]


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    started: list[TestServer] = []

    async def start(routes: dict[str, Handler]) -> Server:
        app = web.Application()
        holder: list[Server] = []

        @web.middleware
        async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
            holder[0].seen.append(request.path_qs)
            return await handler(request)

        app.middlewares.append(record)
        for path, handler in routes.items():
            app.router.add_get(path, handler)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        started.append(server)
        holder.append(Server(server))
        return holder[0]

    yield start
    for server in started:
        await server.close()


async def fetch(url: str, **kwargs: object) -> bytes:
    options: dict[str, object] = {
        "allow_hosts": [],
        "max_bytes": 10 * len(BODY),
        "connect_timeout": 2.0,
        "read_timeout": 2.0,
    }
    options.update(kwargs)
    chunks = [chunk async for chunk in download(url, **options)]  # type: ignore[arg-type]
    return b"".join(chunks)


async def serve_body(request: web.Request) -> web.Response:
    return web.Response(body=BODY, content_type="application/octet-stream")


async def test_allowlisted_server_serves_the_file(start_server: StartServer) -> None:
    files = await start_server({"/db.sql.gz": serve_body})
    got = await fetch(files.url("/db.sql.gz?X-Amz-Signature=s"), allow_hosts=files.allow)
    assert got == BODY
    assert files.seen == ["/db.sql.gz?X-Amz-Signature=s"]


async def test_a_name_connects_only_to_the_address_that_was_checked(
    start_server: StartServer,
) -> None:
    files = await start_server({"/db.sql.gz": serve_body})
    lookups: list[str] = []

    async def dns(host: str, port: int) -> list[str]:
        lookups.append(host)
        return {"files.test": ["127.0.0.1"], "inside.test": ["10.0.0.5"]}[host]

    allow = [f"files.test:{files.port}"]
    got = await fetch(files.url("/db.sql.gz", host="files.test"), allow_hosts=allow, resolver=dns)
    assert got == BODY
    assert lookups == ["files.test"]  # one lookup: aiohttp was answered from it
    with pytest.raises(UnsafeInput, match=r"inside\.test resolves to 10\.0\.0\.5 \(private\)"):
        await fetch("http://inside.test/db.sql.gz", allow_hosts=allow, resolver=dns)


async def test_a_private_server_not_allowlisted_gets_no_request(start_server: StartServer) -> None:
    files = await start_server({"/db.sql.gz": serve_body})
    chunks = download(
        files.url("/db.sql.gz?X-Amz-Signature=secret"),
        allow_hosts=[],
        max_bytes=len(BODY),
        connect_timeout=2,
        read_timeout=2,
    )
    with pytest.raises(UnsafeInput) as caught:
        await anext(chunks)
    assert caught.value.data["problem"] == "private_address"
    assert f"the URL http://127.0.0.1:{files.port}/db.sql.gz is refused" in str(caught.value)
    assert "secret" not in str(caught.value)
    assert files.seen == []


async def test_a_redirect_to_a_server_not_allowlisted_is_refused(start_server: StartServer) -> None:
    inside = await start_server({"/": serve_body})

    async def bounce(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(inside.url("/"))

    files = await start_server({"/db.sql.gz": bounce})
    with pytest.raises(UnsafeInput, match=r"127\.0\.0\.1 \(loopback\)") as caught:
        await fetch(files.url("/db.sql.gz"), allow_hosts=files.allow)
    assert "a redirect from" in str(caught.value)
    assert files.seen == ["/db.sql.gz"]
    assert inside.seen == []


async def test_a_redirect_to_another_name_of_the_allowlisted_host_is_refused(
    start_server: StartServer,
) -> None:
    async def bounce(request: web.Request) -> web.StreamResponse:
        raise web.HTTPTemporaryRedirect(files.url("/", host="localhost"))

    files = await start_server({"/": serve_body, "/start": bounce})
    with pytest.raises(UnsafeInput, match=r"localhost resolves to .* \(loopback\)"):
        await fetch(files.url("/start"), allow_hosts=files.allow)
    assert files.seen == ["/start"]


async def hop(request: web.Request) -> web.StreamResponse:
    left = int(request.match_info["left"])
    if left == 0:
        return web.Response(body=b"arrived")
    raise web.HTTPFound(f"/hop/{left - 1}")


async def test_redirects_are_followed_up_to_the_limit(start_server: StartServer) -> None:
    files = await start_server({"/hop/{left}": hop})
    assert await fetch(files.url("/hop/5"), allow_hosts=files.allow) == b"arrived"
    assert files.seen == [f"/hop/{n}" for n in (5, 4, 3, 2, 1, 0)]
    files.seen.clear()
    with pytest.raises(UnsafeInput, match="more than 5 redirects") as caught:
        await fetch(files.url("/hop/6"), allow_hosts=files.allow)
    assert caught.value.data["problem"] == "too_many_redirects"
    assert files.seen == [f"/hop/{n}" for n in (6, 5, 4, 3, 2, 1)]
    with pytest.raises(UnsafeInput, match="more than 0 redirects"):
        await fetch(files.url("/hop/1"), allow_hosts=files.allow, max_redirects=0)


async def test_a_redirect_to_another_scheme_is_refused(start_server: StartServer) -> None:
    async def bounce(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("file:///etc/passwd")

    files = await start_server({"/": bounce})
    with pytest.raises(UnsafeInput, match="scheme file: is not allowed"):
        await fetch(files.url("/"), allow_hosts=files.allow)


async def test_an_endless_body_is_cut_off_at_the_limit(start_server: StartServer) -> None:
    sent: list[int] = []
    ended = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()  # chunked: no Content-Length
        await response.prepare(request)
        try:
            for _ in range(10_000):
                await response.write(b"x" * 65536)
                sent.append(65536)
        finally:
            ended.set()
        return response

    files = await start_server({"/": endless})
    limit = 300_000
    chunks = download(
        files.url("/"),
        allow_hosts=files.allow,
        max_bytes=limit,
        connect_timeout=2,
        read_timeout=2,
        chunk_size=65536,
    )
    received: list[bytes] = []

    async def consume() -> None:
        async for chunk in chunks:
            received.append(chunk)

    with pytest.raises(UnsafeInput, match="cut off at") as caught:
        await consume()
    assert caught.value.data["problem"] == "too_large"
    assert "ENVRESTORE_IMPORT_MAX_BYTES (300000 bytes)" in str(caught.value)
    assert 0 < sum(map(len, received)) <= limit  # what came before the limit was delivered
    with pytest.raises(StopAsyncIteration):
        await anext(chunks)  # the generator is over
    await asyncio.wait_for(ended.wait(), 5)  # the server saw the connection close
    assert sum(sent) < 10_000 * 65536


async def test_a_too_large_content_length_is_refused_before_the_body(
    start_server: StartServer,
) -> None:
    files = await start_server({"/": serve_body})
    chunks = download(
        files.url("/"),
        allow_hosts=files.allow,
        max_bytes=len(BODY) - 1,
        connect_timeout=2,
        read_timeout=2,
    )
    with pytest.raises(UnsafeInput, match=f"it is {len(BODY)} bytes") as caught:
        await anext(chunks)  # not one byte of the body is yielded
    assert caught.value.data["problem"] == "too_large"
    assert files.seen == ["/"]


async def test_a_stalled_server_is_a_transient_error(start_server: StartServer) -> None:
    release = asyncio.Event()

    async def stall(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"start")
        await asyncio.wait_for(release.wait(), 5)
        return response

    files = await start_server({"/": stall})
    try:
        with pytest.raises(TransientError, match="timed out") as caught:
            await fetch(files.url("/"), allow_hosts=files.allow, read_timeout=0.3)
        assert caught.value.data["problem"] == "timeout"
    finally:
        release.set()


@pytest.mark.parametrize(
    ("status", "error"),
    [(404, NotFound), (410, NotFound), (403, Refused), (401, Refused), (503, TransientError)],
)
async def test_http_errors(start_server: StartServer, status: int, error: type[Exception]) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, text="no")

    files = await start_server({"/": answer})
    with pytest.raises(error, match=f"answered HTTP {status}") as caught:
        await fetch(files.url("/"), allow_hosts=files.allow)
    assert caught.value.data["status"] == status  # type: ignore[attr-defined]


async def test_gzip_is_delivered_as_served(start_server: StartServer) -> None:
    dump = b"INSERT INTO t VALUES (1);\n" * 1000
    packed = gzip.compress(dump)

    async def gzipped(request: web.Request) -> web.Response:
        assert request.headers.get("Accept-Encoding") == "identity"
        return web.Response(
            body=packed,
            headers={"Content-Type": "application/gzip", "Content-Encoding": "gzip"},
        )

    files = await start_server({"/db.sql.gz": gzipped})
    assert await fetch(files.url("/db.sql.gz"), allow_hosts=files.allow) == packed


async def test_nothing_listening_is_a_transient_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(TransientError, match="could not download") as caught:
        await fetch(
            f"http://127.0.0.1:{port}/db.sql.gz?sig=secret", allow_hosts=[f"127.0.0.1:{port}"]
        )
    assert caught.value.data["problem"] == "connection_failed"
    assert "secret" not in str(caught.value)
