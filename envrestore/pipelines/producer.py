"""The one way to submit work: the CLI now, the HTTP API and the scheduler next.

A `Producer` is opened for a principal (who is asking) and turns typed
requests into jobs: each request's checks run here (every refusal before a
job exists), then the job is recorded with its idempotency key, its
fingerprint (the request as asked) and the principal. No logic lives only in
a CLI command or a route.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from envrestore.config.settings import Settings
from envrestore.pipelines.backup.delete import earlier_delete, prepare_delete
from envrestore.pipelines.backup.service import get_backup, latest_backup, prepare_backup
from envrestore.pipelines.errors import BadInput, Conflict
from envrestore.pipelines.jobs.prepared import Prepared
from envrestore.pipelines.jobs.principal import Principal
from envrestore.pipelines.jobs.submit import JobSpec, Submitted, submit_jobs
from envrestore.pipelines.objectstore import ObjectStore
from envrestore.pipelines.registry import get_environment
from envrestore.pipelines.requests import (
    BackupRequest,
    CloneRequest,
    DeleteBackupRequest,
    ExpireRollbackRequest,
    ImportRequest,
    LinkRequest,
    Request,
    RestoreRequest,
    RollbackRequest,
)
from envrestore.pipelines.restore import service as restores
from envrestore.pipelines.sources.links import Link, issue_links, link_ttl


@dataclass(frozen=True)
class Producer:
    """Submits requests on behalf of `principal`."""

    pool: asyncpg.Pool
    settings: Settings
    store: ObjectStore
    principal: Principal
    #: Backups check the environment's services before queueing (off in some tests).
    preflight: bool = True
    #: Where idempotency keys live (None: settings.idempotency_scope, the CLI's). The
    #: API gives each token its own, so one token's keys neither collide with nor
    #: reveal another's.
    idempotency_scope: str | None = None

    @property
    def key_scope(self) -> str:
        return self.idempotency_scope or self.settings.idempotency_scope

    async def prepare(self, request: Request) -> Prepared:
        """The request's checks; raises the error a user sees, before any job exists."""
        if isinstance(request, BackupRequest):
            return await prepare_backup(
                self.pool, self.settings, self.store, request, check=self.preflight
            )
        if isinstance(request, RestoreRequest):
            return await restores.prepare_restore(self.pool, request)
        if isinstance(request, ImportRequest):
            return await restores.prepare_import(self.pool, self.settings, request)
        if isinstance(request, CloneRequest):
            return await restores.prepare_clone(self.pool, request)
        if isinstance(request, RollbackRequest):
            return await restores.prepare_rollback(self.pool, request)
        if isinstance(request, ExpireRollbackRequest):
            return await restores.prepare_expiry(self.pool, request)
        if isinstance(request, DeleteBackupRequest):
            return await prepare_delete(self.pool, request)
        raise BadInput(f"{type(request).__name__} is not a request this version can submit")

    async def submit(self, request: Request, *, idempotency_key: str | None = None) -> Submitted:
        """Queue the job `request` asks for (or find the one its idempotency key names)."""
        earlier = await self._earlier(request, idempotency_key)
        if earlier is not None:
            return earlier
        (submitted,) = await submit_jobs(
            self.pool, [self._spec(await self.prepare(request), request, idempotency_key)]
        )
        return submitted

    async def submit_many(
        self,
        requests: Sequence[Request],
        *,
        idempotency_keys: Sequence[str | None] | None = None,
    ) -> list[Submitted]:
        """Queue many jobs at once: every request checked first (concurrently, on the
        pool's connections), then all recorded in one transaction by one statement
        (their first messages in the outbox, one NOTIFY for the relay). All or
        nothing: any refusal raises (the first in the order of `requests`), and no
        job of the batch exists then. Results in the order of `requests`; the
        idempotency rules are `submit`'s, a key given twice in the batch included."""
        keys = list(idempotency_keys) if idempotency_keys is not None else [None] * len(requests)
        if len(keys) != len(requests):
            raise BadInput(f"{len(requests)} requests but {len(keys)} idempotency keys")
        checked = await asyncio.gather(
            *(self._checked(request, key) for request, key in zip(requests, keys, strict=True)),
            return_exceptions=True,
        )
        for outcome in checked:
            if isinstance(outcome, BaseException):
                raise outcome
        specs = [c for c in checked if isinstance(c, JobSpec)]
        recorded = iter(await submit_jobs(self.pool, specs))
        return [c if isinstance(c, Submitted) else next(recorded) for c in checked]

    async def _checked(self, request: Request, key: str | None) -> Submitted | JobSpec:
        """The job an earlier identical delete made, or the job to record."""
        earlier = await self._earlier(request, key)
        if earlier is not None:
            return earlier
        return self._spec(await self.prepare(request), request, key)

    async def _earlier(self, request: Request, key: str | None) -> Submitted | None:
        """A delete already asked for under `key`: its checks would refuse a backup
        already being deleted, this very job's doing too."""
        if isinstance(request, DeleteBackupRequest) and key is not None:
            return await earlier_delete(self.pool, request, key=key, default_scope=self.key_scope)
        return None

    def _spec(self, prepared: Prepared, request: Request, key: str | None) -> JobSpec:
        return JobSpec(
            prepared.kind,
            prepared.params,
            prepared.environment,
            self.settings.max_attempts,
            idempotency_key=key,
            idempotency_scope=prepared.idempotency_scope or self.key_scope,
            fingerprint_params=prepared.asked or None,
            principal=self.principal,
            # Writers and deleters of backups are no readers (as `backup_readers` has it).
            reads_backups=not isinstance(request, (BackupRequest, DeleteBackupRequest)),
        )

    async def link(self, request: LinkRequest) -> list[Link]:
        """Temporary links to a backup's parts, recorded with who asked and until when."""
        ttl = link_ttl(self.settings, request.ttl_seconds)
        environment = await get_environment(self.pool, request.target)
        if request.backup == "latest":
            backup = await latest_backup(self.pool, environment)
        else:
            backup = await get_backup(self.pool, request.backup)
            if (backup.site, backup.env) != (environment.site, environment.env):
                raise BadInput(
                    f"backup {backup.id} belongs to {backup.site}.{backup.env}, not "
                    f"{request.target}",
                    backup_id=backup.id,
                )
        if backup.status == "deleting":
            raise Conflict(f"backup {backup.id} is being deleted; no new links to it")
        return await issue_links(
            self.pool, self.store, backup, request.parts, ttl=ttl, principal=self.principal
        )
