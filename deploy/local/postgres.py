"""PostgreSQL 16 from the `pgserver` wheel, for the embedded local stack.

We run `initdb`/`pg_ctl` from the wheel ourselves instead of pgserver's
`get_server()`: pgserver listens on a unix socket only and stops the server
when the Python process that started it exits (an atexit hook), while the
stack is started by one command and used by later ones over TCP
(`postgresql://postgres@127.0.0.1:PORT/db`, the DSN asyncpg and pg_dump take).

PostgreSQL refuses to run as root. As root we do what pgserver does: run it
as a `pgserver` system user (created with useradd if missing) that owns the
data directory, and make the directories above it traversable.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import structlog

log = structlog.get_logger(__name__)

SYSTEM_USER = "pgserver"
HOST = "127.0.0.1"


@dataclass(frozen=True)
class PostgresHandle:
    """A running server: where it listens and which process is its postmaster."""

    data_dir: Path
    host: str
    port: int
    pid: int
    bin_dir: Path

    def dsn(self, database: str = "postgres") -> str:
        """A trust-auth DSN over loopback TCP (no password exists to leak)."""
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"


def bin_dir() -> Path:
    """The wheel's PostgreSQL binaries (pg_dump, psql, ...): ENVRESTORE_PG_BIN_DIR.

    Found without importing pgserver, whose import takes an inter-process lock file.
    """
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the pgserver package is not installed; run `pip install -e '.[embedded]'`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (path / "pg_ctl").is_file():
        raise RuntimeError(f"pgserver is installed but {path} holds no pg_ctl; reinstall pgserver")
    return path


def _is_root() -> bool:
    return os.geteuid() == 0


def _ensure_system_user() -> pwd.struct_passwd:
    """The unprivileged user PostgreSQL runs as when we are root (pgserver's choice of name)."""
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", SYSTEM_USER],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(SYSTEM_USER)


def _make_traversable(path: Path) -> None:
    """Let the postgres user reach `path`: add o+x (search only) to every parent."""
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def _run(argv: list[str], *, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL tool, as the `pgserver` user when we are root."""
    user: int | None = None
    group: int | None = None
    extra_groups: list[int] | None = None
    if _is_root():
        entry = _ensure_system_user()
        user, group, extra_groups = entry.pw_uid, entry.pw_gid, []
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    env.pop("PGDATA", None)
    return subprocess.run(
        argv,
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd="/",
        # A new session: Ctrl-C in the terminal that ran `make demo` must not reach
        # the postmaster pg_ctl forks.
        start_new_session=True,
        user=user,
        group=group,
        extra_groups=extra_groups,
    )


def _hand_over(path: Path) -> None:
    """Give `path` to the postgres user (as root) so the server can write it."""
    if _is_root():
        entry = _ensure_system_user()
        os.chown(path, entry.pw_uid, entry.pw_gid)


def ensure_initialized(data_dir: Path) -> None:
    """Create the cluster once (trust auth, UTF8, C locale); later calls do nothing."""
    if (data_dir / "PG_VERSION").exists():
        return
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    if _is_root():
        _make_traversable(data_dir)
        _hand_over(data_dir)
    result = _run(
        [
            str(bin_dir() / "initdb"),
            "-D",
            str(data_dir),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
        ],
        timeout=120,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"initdb failed for {data_dir} (exit {result.returncode}): {result.stderr.strip()}"
        )
    log.info("postgres.initialized", data_dir=str(data_dir))


def running(data_dir: Path) -> PostgresHandle | None:
    """The server running on `data_dir`, read from its postmaster.pid, or None."""
    pid_file = data_dir / "postmaster.pid"
    try:
        lines = pid_file.read_text().splitlines()
    except (FileNotFoundError, PermissionError):
        return None
    if len(lines) < 8 or not lines[0].strip().isdigit() or not lines[3].strip().isdigit():
        return None
    pid, port, status = int(lines[0]), int(lines[3]), lines[7].strip()
    try:
        proc = psutil.Process(pid)
        alive = proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
        is_postgres = "postgres" in proc.name()
    except psutil.Error:
        return None
    if not (alive and is_postgres and status == "ready"):
        return None
    host = lines[5].strip() or HOST
    return PostgresHandle(data_dir=data_dir, host=host, port=port, pid=pid, bin_dir=bin_dir())


def start(
    data_dir: Path,
    *,
    port: int,
    host: str = HOST,
    log_file: Path | None = None,
    timeout: float = 60.0,
) -> PostgresHandle:
    """Start (or reuse) the server on `data_dir`, listening on host:port only.

    Already running: that server is returned as it is, even on another port.
    No unix socket is created: nothing but loopback TCP can reach it.
    """
    data_dir = data_dir.resolve()
    ensure_initialized(data_dir)
    current = running(data_dir)
    if current is not None:
        log.info("postgres.reused", port=current.port, pid=current.pid)
        return current
    log_file = (log_file or data_dir.parent / "postgres.log").resolve()
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.touch()
    if _is_root():
        _make_traversable(log_file)
        _hand_over(log_file)
    options = f"-c listen_addresses={host} -p {port} -c unix_socket_directories=''"
    result = _run(
        [
            str(bin_dir() / "pg_ctl"),
            "-D",
            str(data_dir),
            "-l",
            str(log_file),
            "-o",
            options,
            "-w",
            "-t",
            str(int(timeout)),
            "start",
        ],
        timeout=timeout + 10,
    )
    handle = running(data_dir)
    if result.returncode != 0 or handle is None:
        raise RuntimeError(
            f"PostgreSQL did not start on {host}:{port} (pg_ctl exit {result.returncode}); "
            f"see {log_file}"
        )
    log.info("postgres.started", port=handle.port, pid=handle.pid, data_dir=str(data_dir))
    return handle


def stop(data_dir: Path, *, timeout: float = 20.0) -> bool:
    """Stop the server on `data_dir`; True if one was running.

    A fast shutdown first (rolls back sessions, flushes), then an immediate one,
    then SIGKILL of the postmaster and its children found by the pid it wrote.
    """
    data_dir = data_dir.resolve()
    handle = running(data_dir)
    if handle is None:
        return False
    pg_ctl = str(bin_dir() / "pg_ctl")
    for mode in ("fast", "immediate"):
        with contextlib.suppress(subprocess.TimeoutExpired):
            _run(
                [pg_ctl, "-D", str(data_dir), "-m", mode, "-w", "-t", str(int(timeout)), "stop"],
                timeout=timeout + 5,
            )
        if _gone(handle.pid, timeout=2.0):
            log.info("postgres.stopped", pid=handle.pid, mode=mode)
            return True
    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(handle.pid)
        for child in proc.children(recursive=True):
            child.kill()
        proc.kill()
    log.warning("postgres.killed", pid=handle.pid)
    return True


def _gone(pid: int, *, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False
