"""Several registered environments for tests of sources: each with its own database, files and repo.

`add_env` builds one (`shop.dev`, `shop.test`, `blog.dev`, ...) from the same
helpers the backup and restore tests use, then makes its content its own: a
few rows, a file, a commit and a tag that no other environment has. So two
environments never start equal, and "the target now equals the source" can
only hold because the job made it so.
"""

from __future__ import annotations

import dataclasses
import io
import subprocess
import tarfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from envrestore.pipelines import registry
from envrestore.pipelines.dsn import Dsn
from envrestore.pipelines.engines import engine_for
from envrestore.pipelines.jobs.runtime import Runtime
from envrestore.pipelines.registry import parse_target
from tests.integration.test_backup_job import _dsn_text, fill
from tests.support.content import Snapshot, snapshot
from tests.support.sites import git, make_files, make_repo

__all__ = [
    "LocalServer",
    "SiteEnv",
    "add_env",
    "assert_all_differ",
    "assert_failed",
    "dump_sql",
    "local_servers",
    "redirect_to",
    "run_sql",
    "staging_keys",
    "step_statuses",
    "streamed",
    "tar_of",
    "with_settings",
    "zip_of",
]


@dataclass(frozen=True)
class SiteEnv:
    """One registered environment and where its content lives."""

    target: str
    dsn: Dsn
    files: Path
    code: Path

    @property
    def engine(self) -> str:
        return self.dsn.engine

    async def snapshot(self) -> Snapshot:
        return await snapshot(self.dsn, self.files, self.code)


async def run_sql(dsn: Dsn, statements: str) -> None:
    engine = engine_for(dsn)
    if dsn.engine == "mariadb":
        await engine.query(dsn, statements)  # type: ignore[attr-defined]
        return
    conn = await engine.connect(dsn)  # type: ignore[attr-defined]
    try:
        await conn.execute(statements)
    finally:
        await conn.close()


def _marker_table(target: str) -> str:
    return "only_" + target.replace(".", "_")


async def add_env(runtime: Runtime, root: Path, target: str, make_db: Callable[[], Dsn]) -> SiteEnv:
    """Register `target` with a fresh database from `make_db`, files and a repo under `root`.

    Files and code sit in `root/<target>/` (a restore stages beside them).
    """
    dsn = make_db()
    await fill(dsn)
    env = target.replace(".", "-")
    table = _marker_table(target)
    if dsn.engine == "mariadb":
        await run_sql(
            dsn,
            f"UPDATE wp_options SET option_value = '{env}' WHERE option_name = 'blogname'; "
            f"DELETE FROM wp_posts WHERE ID % 7 = {len(env) % 7}; "
            f"CREATE TABLE `{table}` (id INT PRIMARY KEY, note TEXT); "
            f"INSERT INTO `{table}` VALUES (1, '{env}');",
        )
    else:
        await run_sql(
            dsn,
            f"UPDATE variable SET value = '{env}'::bytea WHERE name = 'site_name'; "
            f"DELETE FROM node WHERE nid % 7 = {len(env) % 7}; "
            f'CREATE TABLE "{table}" (id int PRIMARY KEY, note text); '
            f"INSERT INTO \"{table}\" VALUES (1, '{env}');",
        )
    home = root / target
    files = make_files(home / "files")
    (files / f"{env}.txt").write_text(f"only in {target}\n")
    code = make_repo(home / "code")
    (code / "site.txt").write_text(f"{target}\n")
    git(code, "add", "-A")
    git(code, "commit", "-q", "-m", f"the {target} site")
    git(code, "tag", "-a", f"{env}-1", "-m", target)
    site, _ = parse_target(target)
    await registry.add_site(runtime.pool, site)
    await registry.add_environment(runtime.pool, target, db=_dsn_text(dsn), files=files, code=code)
    return SiteEnv(target, dsn, files, code)


def assert_all_differ(one: Snapshot, other: Snapshot) -> None:
    """Two environments differ in rows, files, HEAD and tags (so equality later means something)."""
    assert one.rows != other.rows
    assert one.files != other.files
    assert one.head != other.head
    assert one.tags != other.tags


async def dump_sql(dsn: Dsn) -> bytes:
    """A plain SQL dump of `dsn` made by `mariadb-dump`/`pg_dump` (with envrestore's options)."""
    return b"".join([chunk async for chunk in engine_for(dsn).dump(dsn)])


def tar_of(directory: Path, top: str | None, *, mode: str = "w:gz") -> bytes:
    """`directory` as a tar archive (`mode` says the compression), its members under `top/`
    (with the folder's own entry, as tar writes it) or at the root (`top=None`)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode) as tar:  # type: ignore[call-overload]
        if top:
            tar.add(directory, arcname=top, recursive=False)
        for path in sorted(directory.rglob("*")):
            rel = path.relative_to(directory).as_posix()
            tar.add(path, arcname=f"{top}/{rel}" if top else rel, recursive=False)
    return bytes(out.getvalue())


def zip_of(directory: Path, dest: Path) -> bytes:
    """`zip -r -y` of `directory`'s content (members at the root, symlinks kept as links)."""
    subprocess.run(
        ["zip", "-q", "-r", "-y", str(dest), "."], cwd=directory, check=True, capture_output=True
    )
    return dest.read_bytes()


async def staging_keys(runtime: Runtime) -> list[str]:
    """Every object left under `staging/` (downloads and uploads waiting for a job)."""
    return [info.key async for info in runtime.store.list("staging/")]


def with_settings(runtime: Runtime, **update: Any) -> Runtime:
    """The same runtime (pool, store) with some settings changed, e.g. import_allow_hosts."""
    return dataclasses.replace(runtime, settings=runtime.settings.model_copy(update=update))


def step_statuses(view: dict[str, Any]) -> dict[str, str]:
    return {step["name"]: step["status"] for step in view["steps"]}


def assert_failed(view: dict[str, Any], step: str, *reasons: str) -> None:
    """The job failed in `step`, before anything live was touched, saying each of `reasons`."""
    assert view["status"] == "failed", view
    assert view["error_step"] == step, view
    for reason in reasons:
        assert reason in view["error"], view["error"]
    statuses = step_statuses(view)
    assert statuses.get("switch") == "skipped", statuses
    assert statuses.get("abandon_restore") == "done", statuses


# -- a local HTTP server that records what it was asked ------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class LocalServer:
    """An HTTP server on 127.0.0.1 answering `routes` (path → bytes or handler), recording
    every request's path; a path not in `routes` gets 404."""

    def __init__(self) -> None:
        self.routes: dict[str, bytes | Handler] = {}
        self.seen: list[str] = []
        self._server: TestServer | None = None

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.port is not None
        return self._server.port

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    @property
    def allow(self) -> str:
        """Its allowlist entry (host:port)."""
        return f"127.0.0.1:{self.port}"

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request.path)
        route = self.routes.get(request.path)
        if route is None:
            return web.Response(status=404)
        if isinstance(route, bytes):
            return web.Response(body=route, content_type="application/octet-stream")
        return await route(request)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._answer)
        self._server = TestServer(app, host="127.0.0.1")
        await self._server.start_server()

    async def close(self) -> None:
        if self._server is not None:
            await self._server.close()


@asynccontextmanager
async def local_servers() -> AsyncIterator[
    Callable[[dict[str, bytes | Handler]], Awaitable[LocalServer]]
]:
    """`start(routes)` starts a `LocalServer`; all are closed at the end of the block."""
    started: list[LocalServer] = []

    async def start(routes: dict[str, bytes | Handler]) -> LocalServer:
        server = LocalServer()
        server.routes.update(routes)
        await server.start()
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            await server.close()


def redirect_to(location: str, status: int = 302) -> Handler:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, headers={"Location": location})

    return answer


def streamed(data: bytes, chunk: int = 64 << 10) -> Handler:
    """Serves `data` chunked, without a Content-Length (only the bytes say how big it is)."""

    async def answer(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(data), chunk):
            await response.write(data[start : start + chunk])
        await response.write_eof()
        return response

    return answer
