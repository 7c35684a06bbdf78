"""One typed settings object, from ENVRESTORE_* variables and an optional TOML file.

Nothing is read from the environment at import time: call `load_settings()`.
Precedence, highest first: keyword overrides, environment, the TOML file named
by ENVRESTORE_CONFIG, defaults.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)


class Settings(BaseSettings):
    """Everything envrestore can be told; each field has an ENVRESTORE_<NAME> twin."""

    model_config = SettingsConfigDict(env_prefix="ENVRESTORE_", extra="ignore", frozen=True)

    # Services
    database_url: str = "postgresql://postgres@127.0.0.1:5432/envrestore"
    redis_url: str = "redis://127.0.0.1:6379/0"
    s3_endpoint_url: str | None = None
    s3_bucket: str = "envrestore"
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_region: str = "us-east-1"
    state_dir: Path = Path(".envrestore")

    # Object store tuning (PERFORMANCE.md: one stream is fastest on loopback,
    # ranged concurrent GETs help over a real network).
    s3_part_size_mb: int = Field(default=16, ge=5, le=5120)
    s3_download_concurrency: int = Field(default=1, ge=1, le=64)
    presign_ttl_seconds: int = Field(default=600, ge=1, le=7 * 24 * 3600)
    # The S3 endpoint as clients outside the deployment reach it (presigned upload
    # part URLs and temporary links are signed for this host); unset: the endpoint.
    s3_public_endpoint_url: str | None = None

    # Queue and step protocol
    queue_name: str = "envrestore"
    # An idle worker asks Redis for new messages at least this often (Dramatiq's
    # consumer backs off up to this when the queue is empty; its own default, 1 s,
    # made a job wait 0.5 s on average before its first step started).
    worker_poll_seconds: float = Field(default=0.1, ge=0.01, le=5)
    heartbeat_seconds: float = Field(default=2.0, gt=0)
    stale_after_seconds: float = Field(default=10.0, gt=0)
    reconcile_seconds: float = Field(default=2.0, gt=0)
    # How long a worker may take to stop after SIGTERM: running steps are handed
    # back within it, and the process exits at the latest when it is over.
    shutdown_grace_seconds: float = Field(default=30.0, ge=2)
    max_attempts: int = Field(default=5, ge=1)
    retry_backoff_seconds: float = Field(default=2.0, ge=0)
    idempotency_scope: str = "default"
    # Outages (issue 9): after Redis or the ledger comes back, work goes on within
    # about reconnect_max_delay_seconds (the cap of every reconnect backoff). A step
    # waits ledger_retry_seconds for an unreachable ledger to record its result (or
    # to start) before giving up; Redis calls time out after redis_socket_timeout.
    reconnect_max_delay_seconds: float = Field(default=1.0, gt=0, le=30)
    ledger_retry_seconds: float = Field(default=300.0, ge=0)
    redis_socket_timeout: float = Field(default=10.0, gt=0)

    # Engines: where the clients live (empty: found on PATH)
    pg_bin_dir: Path | None = None
    mariadb_bin_dir: Path | None = None
    gzip_level: int = Field(default=6, ge=1, le=9)
    # New backups' database and files parts: "gzip" (.gz, what Pantheon writes) or
    # "zstd" (.zst, about 10x faster to decompress; restores read both).
    backup_compression: Literal["gzip", "zstd"] = "gzip"
    # Database imports: client sessions per import. "auto" sizes them by the DB
    # server (2 on a small one); 1 is the plain client. MariaDB splits the big
    # tables' INSERTs by rows, PostgreSQL spreads COPY blocks and builds indexes
    # and constraints after the data.
    mariadb_import_connections: int | Literal["auto"] = "auto"
    postgres_import_connections: int | Literal["auto"] = "auto"
    # How far the dump's producer side (download, hash, inflate, filter) may run
    # ahead of a slow client, per import, shared by its sessions (MiB).
    import_readahead_mb: int = Field(default=16, ge=1, le=1024)
    # Threads that write extracted files (files and code parts).
    extract_threads: int = Field(default=4, ge=1, le=64)
    # Untrusted dumps: a statement running longer than this is killed (server-side
    # max_statement_time / statement_timeout), and so is an import whose client
    # accepts no input for the idle timeout. Seconds.
    import_statement_timeout: float = Field(default=3600.0, gt=0)
    import_idle_timeout: float = Field(default=600.0, gt=0)
    # The longest line of a dump the statement filter buffers before refusing it
    # (mysqldump's extended INSERTs are ~1 MiB; pg_dump's COPY rows are one row).
    sql_max_line_mb: int = Field(default=64, ge=1, le=1024)
    # Restored files: "normalise" gives 0644/0755 (exec bit kept, group/other
    # write and setuid/setgid/sticky cleared); "keep" keeps the archive's
    # permission bits except setuid/setgid/sticky, which are never kept.
    files_mode_policy: Literal["normalise", "keep"] = "normalise"
    # Archive bomb caps (pipelines/archives/tarpolicy.py): what a files or code
    # part may expand to, as a multiple of its compressed size (never below
    # 64 MiB) up to a ceiling, and its most members.
    archive_bomb_ratio: int = Field(default=20, ge=1)
    archive_bomb_ceiling_bytes: int = Field(default=512 * 1024**3, ge=1 << 20)
    archive_max_members: int = Field(default=2_000_000, ge=1)

    # Backups and restores
    # 1 to 36500 days (backup.service.MAX_KEEP_DAYS): more overflows the expiry date.
    backup_keep_days: int = Field(default=30, ge=1, le=36500)
    rollback_hours: int = Field(default=24, ge=0)
    # Disk (files and code trees plus the kept database) that rollback points may use
    # per environment; over it the oldest are dropped first, the newest always kept.
    # 0: no cap.
    rollback_max_bytes: int = Field(default=0, ge=0)
    # An operator's bandwidth cap on bulk streams (bytes/s, 0 = none), so a
    # backup does not starve the site it reads from.
    stream_rate_limit: int = Field(default=0, ge=0)
    # Temporary links (presigned GETs of backup parts): the TTL when none is
    # asked for, and the longest one may ask for (seconds).
    link_default_ttl: int = Field(default=300, ge=1, le=7 * 24 * 3600)
    link_max_ttl: int = Field(default=3600, ge=1, le=7 * 24 * 3600)

    # Imports from URLs and uploads: the most one part may hold (compressed, and
    # the staging quota), the download's timeouts (seconds), and the operator's
    # allowlist of private hosts ("host" or "host:port", comma-separated in the
    # environment) that a URL may name although they resolve to private addresses.
    import_max_bytes: int = Field(default=50 * 10**9, ge=1)
    import_connect_timeout: float = Field(default=10.0, gt=0)
    import_read_timeout: float = Field(default=60.0, gt=0)
    import_max_redirects: int = Field(default=5, ge=0, le=20)
    import_allow_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # Scheduled backups (pipelines/schedule): every environment without a
    # schedule of its own is backed up daily at this hour (UTC); the daily taken
    # on the weekly day (0 = Sunday … 6 = Saturday, or a name) is the weekly one.
    # One scheduler leads at a time, holding a lease it renews every tick; a
    # follower takes over when the leader stops renewing it for lease seconds.
    schedule_default_hour: int = Field(default=2, ge=0, le=23)
    schedule_default_weekly_day: int = Field(default=0, ge=0, le=6)
    scheduler_tick_seconds: float = Field(default=2.0, gt=0, le=60)
    scheduler_lease_seconds: float = Field(default=6.0, gt=0, le=600)

    # Backup deletion (pipelines/backup/delete.py): how often a delete waiting
    # for the jobs that read its backup looks again (seconds), and how old an
    # object under backups/ with no ledger row must be before the orphan sweep
    # removes it (hours; younger ones may belong to a backup still being written).
    # The same age applies to unfinished multipart uploads and to unused
    # staging/uploads/ objects (pipelines/backup/leftovers.py).
    backup_delete_poll_seconds: float = Field(default=5.0, gt=0, le=300)
    backup_orphan_min_age_hours: float = Field(default=24.0, ge=0)

    # API failed-auth limiting (pipelines/auth/ratelimit.py): a client (address)
    # with this many failed authentications in a minute is answered 429 until
    # the oldest leaves the minute; at most max_clients clients are remembered
    # per API process (the longest quiet is forgotten first).
    api_auth_failures_per_minute: int = Field(default=10, ge=1, le=10_000)
    api_auth_max_clients: int = Field(default=10_000, ge=1, le=10_000_000)

    # HTTP API (envrestore/api, `envrestore api`): where uvicorn listens; the part
    # size of direct uploads (MiB; grown so no upload needs more than 10,000
    # parts) and how long their presigned part URLs stay valid (seconds).
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8080, ge=1, le=65535)
    api_upload_part_size_mb: int = Field(default=64, ge=5, le=5120)
    api_upload_url_ttl: int = Field(default=3600, ge=60, le=7 * 24 * 3600)
    # How often an SSE stream (GET /jobs/{id}/events) looks for new events (seconds).
    api_sse_poll_seconds: float = Field(default=0.5, gt=0, le=10)
    # Proxies whose X-Forwarded-For/-Proto `envrestore api` believes (uvicorn's
    # forwarded_allow_ips: comma-separated addresses or CIDRs, "*" for any). Empty:
    # trust none, and the failed-auth limiter counts the connecting address.
    api_forwarded_allow_ips: str = ""

    # Worker metrics (observability/worker_exposition.py): `envrestore worker`
    # serves the Prometheus metrics of all its processes on this port (unset or
    # 0: no endpoint), bound to metrics_host (loopback unless opened on purpose).
    worker_metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"

    # Tests only: named pauses (pipelines/failpoints.py), as JSON.
    failpoints: dict[str, str] = Field(default_factory=dict)

    @field_validator("mariadb_import_connections", "postgres_import_connections", mode="before")
    @classmethod
    def _connections(cls, value: Any) -> Any:
        """'auto' or a number of sessions from 1 to 8."""
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"must be 'auto' or a number from 1 to 8, not {value!r}") from None
        if not 1 <= number <= 8:
            raise ValueError(f"must be 'auto' or a number from 1 to 8, not {number}")
        return number

    @field_validator("import_allow_hosts", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        # ENVRESTORE_IMPORT_ALLOW_HOSTS=files.internal,10.0.0.5:8080
        if isinstance(value, str):
            return [item.strip().lower() for item in value.split(",") if item.strip()]
        return value

    @field_validator("schedule_default_weekly_day", mode="before")
    @classmethod
    def _weekday(cls, value: Any) -> Any:
        # ENVRESTORE_SCHEDULE_DEFAULT_WEEKLY_DAY=sunday (or 0)
        from envrestore.pipelines.schedule.slots import parse_weekday

        return parse_weekday(value) if isinstance(value, str | int) else value

    @property
    def presign_endpoint_url(self) -> str | None:
        """Where presigned URLs point: the public endpoint, else the endpoint."""
        return self.s3_public_endpoint_url or self.s3_endpoint_url

    @field_validator("api_upload_url_ttl")
    @classmethod
    def _ttl_within_orphan_age(cls, value: int, info: ValidationInfo) -> int:
        # A part URL still valid after the orphan sweep aborted its upload would
        # let a client upload into nothing: the TTL must end before the sweep age.
        hours = info.data.get("backup_orphan_min_age_hours")
        if isinstance(hours, float) and value > hours * 3600:
            raise ValueError(
                f"must not exceed ENVRESTORE_BACKUP_ORPHAN_MIN_AGE_HOURS ({hours:g} h = "
                f"{hours * 3600:g} s): the orphan sweep would abort uploads still in use"
            )
        return value

    @field_validator("state_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator(
        "pg_bin_dir", "mariadb_bin_dir", "s3_endpoint_url", "s3_public_endpoint_url", mode="before"
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # `ENVRESTORE_PG_BIN_DIR=` in an env file means "not set", not Path(".").
        return None if value == "" else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlSource(settings_cls))


class _TomlSource(PydanticBaseSettingsSource):
    """Reads the TOML file named by ENVRESTORE_CONFIG, keys as the field names."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get("ENVRESTORE_CONFIG")
        if not path:
            return {}
        file = Path(path).expanduser()
        if not file.is_file():
            raise ValueError(f"ENVRESTORE_CONFIG names {file}, which is not a readable file")
        with file.open("rb") as fh:
            data = tomllib.load(fh)
        # Allow an [envrestore] table or top-level keys.
        return dict(data.get("envrestore", data))


def load_settings(**overrides: Any) -> Settings:
    """Build the settings now (never at import time)."""
    return Settings(**overrides)


_SECRET_FIELDS = frozenset({"s3_secret_access_key", "s3_access_key_id"})


def describe_settings_error(exc: ValidationError) -> str:
    """One line naming each bad variable, why, and the value given (secrets and
    DSN passwords hidden): `bad setting ENVRESTORE_X='abc': Input should be ...`."""
    from envrestore.pipelines.secrets import mask_url

    parts = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else "?"
        value = error.get("input")
        if field in _SECRET_FIELDS:
            shown = "'***'"
        elif isinstance(value, str):
            shown = repr(mask_url(value) if "://" in value else value)[:200]
        else:
            shown = ""
        given = f"={shown}" if shown and not isinstance(value, dict) else ""
        parts.append(f"ENVRESTORE_{field.upper()}{given}: {error['msg']}")
    return "bad setting " + "; ".join(parts)
