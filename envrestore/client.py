"""The Python producer API: what a dashboard backend (and the HTTP API) imports.

    from envrestore.client import Envrestore
    from envrestore.pipelines.requests import RestoreRequest

    async with await Envrestore.connect(settings, principal=Principal("token", "ci")) as er:
        submitted = await er.restore(RestoreRequest(target="mysite.dev", source="mysite.live"))
        async for event in er.follow(submitted.job_id):
            ...

A thin, typed facade over the producer (every request's checks run before a
job exists), the job views, cancel, the registry, backups and links: no
logic lives here that a CLI command or an HTTP route would need to repeat.
Errors are the `pipelines.errors` tree (BadInput, NotFound, Conflict,
Refused, Unavailable), so callers map them once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from envrestore.pipelines import registry, registry_admin
from envrestore.pipelines.errors import BadInput, NotFound
from envrestore.pipelines.jobs import views
from envrestore.pipelines.jobs.principal import Principal
from envrestore.pipelines.jobs.records import JobRecord, StepRecord
from envrestore.pipelines.jobs.submit import Submitted
from envrestore.pipelines.ledger.queries import sql
from envrestore.pipelines.requests import (
    BackupRequest,
    CloneRequest,
    DeleteBackupRequest,
    ImportRequest,
    LinkRequest,
    Request,
    RestoreRequest,
    RollbackRequest,
)
from envrestore.pipelines.text import clean_data, clean_text

# The job kinds, the producer's checks and the S3 client are imported by the methods
# that use them: reading jobs (`envrestore job list`, the API's GET /jobs) needs none.
if TYPE_CHECKING:
    import asyncpg

    from envrestore.config.settings import Settings
    from envrestore.pipelines.backup.service import BackupRecord
    from envrestore.pipelines.objectstore import ObjectStore
    from envrestore.pipelines.objectstore.s3 import S3ObjectStore
    from envrestore.pipelines.producer import Producer
    from envrestore.pipelines.sources import direct_uploads
    from envrestore.pipelines.sources.links import Link

__all__ = ["Envrestore", "JobEvent", "JobSnapshot", "Submitted"]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
#: A job in one of these states will not change any more.
FINAL = frozenset({"succeeded", "failed", "cancelled"})


@dataclass(frozen=True)
class JobEvent:
    """One ledger event of a job; `id` orders them and resumes a stream after it."""

    id: int
    at: str
    step: str | None
    event: str
    data: dict[str, Any]

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "at": self.at, "step": self.step, "event": self.event,
                "data": self.data}  # fmt: skip


@dataclass(frozen=True)
class JobSnapshot:
    """A job as users see it (`job show --json`), and a tag that changes when it does."""

    view: dict[str, Any]

    @property
    def etag(self) -> str:
        """A strong validator: the SHA-256 of the view (status, steps, progress, outputs)."""
        body = json.dumps(self.view, sort_keys=True, separators=(",", ":"), default=str)
        return '"' + hashlib.sha256(body.encode()).hexdigest()[:32] + '"'

    @property
    def status(self) -> str:
        return str(self.view["status"])

    @property
    def final(self) -> bool:
        return self.status in FINAL

    @property
    def progress(self) -> dict[str, Any]:
        """Steps done of all, and bytes moved of the bytes known so far."""
        steps = self.view["steps"]
        return {
            "status": self.status,
            "steps_done": sum(1 for s in steps if s["status"] in ("done", "skipped")),
            "steps_total": len(steps),
            "bytes_done": sum(s["bytes_done"] or 0 for s in steps),
            "bytes_total": sum(s["bytes_total"] or 0 for s in steps),
            "running": [s["name"] for s in steps if s["status"] == "running"],
        }


class Envrestore:
    """One connection to envrestore's ledger and object store, acting for `principal`.

    Build it with `await Envrestore.connect(settings, principal=...)` (it owns
    and closes its pool and store), or around a shared pool and store
    (`Envrestore(settings, pool, store, principal)`; the HTTP API makes one per
    request with the token's principal via `acting_for`).
    """

    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        store: ObjectStore | None,
        principal: Principal,
        *,
        preflight: bool = True,
        idempotency_scope: str | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self._store = store
        self.principal = principal
        self.preflight = preflight
        #: None: settings.idempotency_scope (the CLI's); the API scopes keys per token.
        self.idempotency_scope = idempotency_scope
        self._owned: contextlib.AsyncExitStack | None = None

    @property
    def store(self) -> ObjectStore:
        """The object store (None given: this client only reads the ledger)."""
        if self._store is None:
            raise RuntimeError("this Envrestore was made without an object store")
        return self._store

    # -- lifetime ---------------------------------------------------------------

    @classmethod
    async def connect(
        cls, settings: Settings, *, principal: Principal | None = None, pool_size: int = 5
    ) -> Envrestore:
        """Open a pool on the ledger and an object store client; `close()` (or `async with`)."""
        from envrestore.pipelines.ledger.connection import create_pool
        from envrestore.pipelines.objectstore import open_object_store

        stack = contextlib.AsyncExitStack()
        try:
            pool = await create_pool(settings.database_url, max_size=pool_size)
            stack.push_async_callback(pool.close)
            store = await stack.enter_async_context(open_object_store(settings))
        except BaseException:
            await stack.aclose()
            raise
        client = cls(settings, pool, store, principal or Principal.operator())
        client._owned = stack
        return client

    async def close(self) -> None:
        if self._owned is not None:
            owned, self._owned = self._owned, None
            await owned.aclose()

    async def __aenter__(self) -> Envrestore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def acting_for(
        self, principal: Principal, *, idempotency_scope: str | None = None
    ) -> Envrestore:
        """The same connections, submitting as `principal` (closing it closes nothing),
        with idempotency keys in `idempotency_scope` (None: the settings' scope)."""
        return Envrestore(
            self.settings,
            self.pool,
            self._store,
            principal,
            preflight=self.preflight,
            idempotency_scope=idempotency_scope,
        )

    @property
    def producer(self) -> Producer:
        from envrestore.pipelines.producer import Producer

        return Producer(
            self.pool,
            self.settings,
            self.store,
            self.principal,
            self.preflight,
            idempotency_scope=self.idempotency_scope,
        )

    # -- the registry and backups ---------------------------------------------

    async def sites(self) -> list[registry_admin.Site]:
        return await registry_admin.list_sites(self.pool)

    async def environments(self, site: str) -> list[registry.Environment]:
        """The environments of a registered site (NotFound for an unknown one)."""
        if await self.pool.fetchrow(sql("get_site"), site) is None:
            raise NotFound(f"site {site!r} is not registered", site=site)
        return await registry.list_environments(self.pool, site)

    async def environment(self, target: str) -> registry.Environment:
        """`SITE.ENV`; its `public()` masks the database password."""
        return await registry.get_environment(self.pool, target)

    async def backups(self, target: str) -> list[BackupRecord]:
        from envrestore.pipelines.backup.service import list_backups

        return await list_backups(self.pool, target)

    async def backup(self, backup_id: str, *, target: str | None = None) -> BackupRecord:
        """A backup by id; with `target`, one of another environment is NotFound too."""
        from envrestore.pipelines.backup.service import get_backup

        found = await get_backup(self.pool, backup_id)
        if target is not None and f"{found.site}.{found.env}" != target:
            raise NotFound(f"backup {backup_id!r} does not exist", backup_id=backup_id)
        return found

    # -- submitting work --------------------------------------------------------

    async def submit(self, request: Request, *, idempotency_key: str | None = None) -> Submitted:
        """Any typed request; the same key and request give the same job, another is Conflict."""
        return await self.producer.submit(request, idempotency_key=idempotency_key)

    async def backup_create(
        self, request: BackupRequest, *, idempotency_key: str | None = None
    ) -> Submitted:
        return await self.submit(request, idempotency_key=idempotency_key)

    async def restore(
        self, request: RestoreRequest, *, idempotency_key: str | None = None
    ) -> Submitted:
        return await self.submit(request, idempotency_key=idempotency_key)

    async def import_(
        self, request: ImportRequest, *, idempotency_key: str | None = None
    ) -> Submitted:
        return await self.submit(request, idempotency_key=idempotency_key)

    async def clone(
        self, request: CloneRequest, *, idempotency_key: str | None = None
    ) -> Submitted:
        return await self.submit(request, idempotency_key=idempotency_key)

    async def rollback(
        self, request: RollbackRequest, *, idempotency_key: str | None = None
    ) -> Submitted:
        return await self.submit(request, idempotency_key=idempotency_key)

    async def delete_backup(
        self, request: DeleteBackupRequest, *, idempotency_key: str | None = None
    ) -> Submitted:
        return await self.submit(request, idempotency_key=idempotency_key)

    async def link(self, request: LinkRequest) -> list[Link]:
        """Presigned GETs to a backup's parts, recorded with this principal."""
        return await self.producer.link(request)

    # -- reading jobs -----------------------------------------------------------

    async def job(self, job_id: uuid.UUID | str) -> JobSnapshot:
        """The job with its steps, read in one query (polling stays cheap)."""
        uid = _job_id(job_id)
        rows = await self.pool.fetch(sql("api_job_with_steps"), uid)
        if not rows:
            raise NotFound(f"job {uid} does not exist", job_id=str(uid))
        job = JobRecord.from_row(rows[0])
        steps = [
            StepRecord.from_row({k[2:]: v for k, v in dict(r).items() if k.startswith("s_")})
            for r in rows
            if r["s_name"] is not None
        ]
        view = views.job_view(job, steps)
        view["params"] = _without_url_queries(view["params"])
        view["outputs"] = _without_url_queries(view["outputs"])
        for step in view["steps"]:
            step["outputs"] = _without_url_queries(step["outputs"])
        return JobSnapshot(view)

    async def jobs(
        self,
        *,
        site: str | None = None,
        env: str | None = None,
        limit: int = 50,
        sites: list[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Recent jobs, newest first (without their steps), of `sites` only when given.

        As `job()`, URLs are shown without their queries (a signature is a credential).
        """
        jobs = await views.list_jobs(self.pool, site=site, env=env, limit=limit, sites=sites)
        for view in jobs:
            view["params"] = _without_url_queries(view["params"])
            view["outputs"] = _without_url_queries(view["outputs"])
        return jobs

    async def steps(self, job_id: uuid.UUID | str) -> list[dict[str, Any]]:
        steps: list[dict[str, Any]] = (await self.job(job_id)).view["steps"]
        return steps

    async def progress(self, job_id: uuid.UUID | str) -> dict[str, Any]:
        return (await self.job(job_id)).progress

    async def events(
        self, job_id: uuid.UUID | str, *, after: int = 0, limit: int = 500
    ) -> list[JobEvent]:
        """The job's events after event id `after`, oldest first."""
        uid = _job_id(job_id)
        rows = await self.pool.fetch(sql("api_events_after"), uid, after, limit)
        return [
            JobEvent(
                id=r["id"],
                at=r["at"].isoformat(),
                step=r["step"],
                event=clean_text(r["event"], 200, newlines=False),
                data=clean_data(r["data"]) or {},
            )
            for r in rows
        ]

    async def follow(
        self, job_id: uuid.UUID | str, *, after: int = 0, poll_seconds: float = 0.5
    ) -> AsyncIterator[JobEvent]:
        """Every event after `after`, as it happens, until the job has ended.

        Events are read by id, so one written while the job was ending is still
        given before the stream stops, and none is repeated. It polls; the ledger
        also NOTIFYs `envrestore_job` with the job id on every event and step change
        (migration 011), which `--wait` listens to (cli/follow.py `JobWatch`): the
        API's SSE stream could wait on that instead of `poll_seconds`.
        """
        uid = _job_id(job_id)
        await self.job(uid)  # NotFound before anything is streamed
        while True:
            final = (await self.job(uid)).final
            batch = await self.events(uid, after=after)
            for event in batch:
                after = event.id
                yield event
            if final and not batch:
                return
            if not batch:
                await asyncio.sleep(poll_seconds)

    async def cancel(self, job_id: uuid.UUID | str) -> None:
        """Cancel an active job (Conflict when it has ended, Refused once its switch began)."""
        from envrestore.pipelines.catalog import job_kinds
        from envrestore.pipelines.jobs.cancel import cancel_job

        await cancel_job(self.pool, _job_id(job_id), job_kinds())

    # -- uploads straight to the object store ------------------------------------

    async def start_upload(
        self, target: str, *, element: str, size: int, filename: str
    ) -> direct_uploads.UploadStarted:
        """Presigned part URLs for a file the caller PUTs to the object store itself."""
        from envrestore.pipelines.sources import direct_uploads

        environment = await self.environment(target)
        return await direct_uploads.start_upload(
            self.pool,
            self._s3(),
            environment,
            element=element,
            size=size,
            filename=filename,
            part_size=self.settings.api_upload_part_size_mb * 1024 * 1024,
            ttl_seconds=self.settings.api_upload_url_ttl,
            principal=self.principal,
        )

    async def upload(self, upload_id: uuid.UUID | str) -> direct_uploads.OpenUpload:
        from envrestore.pipelines.sources import direct_uploads

        return await direct_uploads.get_upload(self.pool, _uuid(upload_id, "upload"))

    async def complete_upload(
        self,
        upload: direct_uploads.OpenUpload,
        *,
        etags: dict[int, str],
        sha256: str,
        options: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Submitted:
        """Complete the object and queue its import (`options`: ImportRequest's other fields).

        Without a key the upload's id is the idempotency key: completing twice
        gives the same job.
        """
        from envrestore.pipelines.sources import direct_uploads

        sha = sha256.strip().lower()
        if not _SHA256.match(sha):
            raise BadInput("sha256: give the file's SHA-256 as 64 hex digits")
        part = await direct_uploads.finish_upload(self._s3(), upload, etags, sha)
        request = ImportRequest(target=upload.target, parts=(part,), **(options or {}))
        if idempotency_key is None:
            # The upload's own key (its id cannot be guessed) lives in the shared
            # scope: whoever may complete it (its starter, an admin) gets one job.
            shared = self.acting_for(self.principal)
            submitted = await shared.submit(request, idempotency_key=f"upload-{upload.id}")
        else:
            submitted = await self.submit(request, idempotency_key=idempotency_key)
        await direct_uploads.record_job(self.pool, upload.id, submitted.job_id)
        return submitted

    def _s3(self) -> S3ObjectStore:
        from envrestore.pipelines.objectstore.s3 import S3ObjectStore

        if not isinstance(self.store, S3ObjectStore):
            raise BadInput("uploads need the S3 object store")
        return self.store


def _uuid(value: uuid.UUID | str, what: str) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(f"{what} {value!r} does not exist") from None


def _job_id(value: uuid.UUID | str) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else views.parse_job_id(value)


def _without_url_queries(value: Any) -> Any:
    """URLs without their query and fragment: a link's signature is a credential."""
    if isinstance(value, str):
        if value.startswith(("http://", "https://")):
            return value.split("#", 1)[0].split("?", 1)[0]
        return value
    if isinstance(value, dict):
        return {k: _without_url_queries(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_url_queries(v) for v in value]
    return value
