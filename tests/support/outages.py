"""Services a test can take away and give back: a Redis of its own, a cuttable ledger link.

`RedisServer` is a dedicated `redis-server` on a free loopback port (never the
shared 6379), without persistence, so a SIGKILL loses its queues as a crashed
Redis does. `TcpProxy` sits between workers and PostgreSQL; `cut()` drops every
connection and refuses new ones, as a stopped ledger does, without stopping the
server that other tests use.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import asyncpg
import pytest

__all__ = ["RedisServer", "TcpProxy", "idle_gaps", "ledger_now", "step_events"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class RedisServer:
    """A redis-server of this test alone; `kill()` and `start()` keep its port."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.binary = binary
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not _reachable(self.port):
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-server did not listen on {self.port}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: every queued message is lost, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def queued(self, queue: str) -> int:
        """Messages waiting in a Dramatiq queue (not taken by any consumer)."""
        import redis

        client = redis.Redis(port=self.port, socket_timeout=2)
        try:
            return int(client.llen(f"dramatiq:{queue}"))
        finally:
            client.close()


class TcpProxy:
    """A loopback TCP proxy to `target`; `cut()` ends every connection and refuses new
    ones until `open()`; the port stays the same."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread.start()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    def open(self) -> None:
        self._call(self._open())

    def cut(self) -> None:
        self._call(self._cut())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    async def _shutdown(self) -> None:
        await self._cut()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _open(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_address=True
        )

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, RuntimeError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.difference_update((writer, up_writer))


@contextlib.contextmanager
def proxied(url: str) -> Iterator[tuple[TcpProxy, str]]:
    """A proxy to the host and port of a PostgreSQL URL, and the URL through it."""
    scheme, rest = url.split("://", 1)
    userinfo, _, hostpart = rest.rpartition("@")
    hostport, _, path = hostpart.partition("/")
    host, _, port = hostport.rpartition(":")
    proxy = TcpProxy(host, int(port))
    proxy.open()
    try:
        user = f"{userinfo}@" if userinfo else ""
        yield proxy, f"{scheme}://{user}127.0.0.1:{proxy.port}/{path}"
    finally:
        proxy.close()


def ledger_now(url: str) -> datetime:
    """The ledger's clock now: outage timelines are compared in ledger time only."""

    async def read() -> datetime:
        conn = await asyncpg.connect(url)
        try:
            value: datetime = await conn.fetchval("SELECT clock_timestamp()")
        finally:
            await conn.close()
        return value

    return asyncio.run(read())


def step_events(url: str, job_id: str) -> list[dict[str, Any]]:
    async def read() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch(
                "SELECT step, event, at FROM job_events WHERE job_id = $1 ORDER BY id",
                uuid.UUID(job_id),
            )
        finally:
            await conn.close()
        return [dict(row) for row in rows]

    return asyncio.run(read())


_STARTS = {"step.started"}
_STOPS = {"step.finished", "step.retrying", "step.released", "step.heartbeat_expired"}
_ENDS = {"job.succeeded", "job.failed", "job.cancelled"}


def idle_gaps(events: list[dict[str, Any]], since: datetime) -> list[tuple[float, str]]:
    """Stretches after `since` in which no step of the job ran, by the ledger's events:
    (seconds, what ended it). A stretch that began before `since` counts from `since`."""
    running: set[str] = set()
    idle_from: datetime | None = None
    gaps: list[tuple[float, str]] = []
    for event in events:
        name, step, at = event["event"], event["step"], event["at"]
        if name in _STARTS:
            if not running and idle_from is not None and at > since:
                gaps.append(((at - max(idle_from, since)).total_seconds(), f"{step} started"))
            running.add(step)
            idle_from = None
        elif name in _STOPS:
            running.discard(step)
            if not running:
                idle_from = at
        elif name in _ENDS:
            if idle_from is not None and at > since:
                gaps.append(((at - max(idle_from, since)).total_seconds(), name))
            break
    return gaps
