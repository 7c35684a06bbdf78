"""The registry over HTTP: add and remove sites, register, change and forget environments.

The `admin` scope. A token for some sites changes only those (another site
answers `404`, as everywhere); only a token for every site may add a site.
The same library calls as `envrestore site` / `envrestore env`: the
directories are checked on disk first (`registry_admin.check_directories`:
no system, shared or state directory, each exists, code is a git working
tree), then against the ledger. Paths must be absolute: the API's own
working directory means nothing to a client. A DSN is only ever answered
with its password masked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import Field, field_validator

from envrestore.api.deps import Client, Grant, require_scope, require_site
from envrestore.api.errors import ApiError
from envrestore.api.models import _NAME, Body
from envrestore.client import Envrestore
from envrestore.pipelines import registry, registry_admin
from envrestore.pipelines.errors import BadInput, Conflict

router = APIRouter(tags=["registry"])
ENV = "/sites/{site}/envs/{env}"

_WRITTEN: dict[int | str, dict[str, Any]] = {
    200: {"description": "Updated", "model": dict[str, Any]},
    201: {"description": "Created; `Location` is where to read it", "model": dict[str, Any]},
}


def _absolute(value: str | None) -> str | None:
    if value is not None and not value.startswith("/"):
        raise ValueError("must be an absolute path on the envrestore hosts")
    return value


class SiteBody(Body):
    name: str = Field(pattern=_NAME, description="Site name, e.g. mysite")


class EnvChange(Body):
    """The fields of `envrestore env set`; only those given change."""

    db: str | None = Field(
        default=None,
        min_length=1,
        max_length=2000,
        description="Database DSN: mariadb://, mysql:// or postgresql://; the password may "
        "be given as ?password_env=VAR or ?password_file=PATH",
    )
    files: str | None = Field(default=None, min_length=1, max_length=4096)
    code: str | None = Field(default=None, min_length=1, max_length=4096)
    url: str | None = Field(default=None, min_length=1, max_length=2000)
    protected: bool | None = None

    @field_validator("files", "code")
    @classmethod
    def _paths(cls, value: str | None) -> str | None:
        return _absolute(value)


class EnvBody(EnvChange):
    """The fields of `envrestore env add` (db, files and code required)."""

    db: str = Field(min_length=1, max_length=2000)
    files: str = Field(min_length=1, max_length=4096)
    code: str = Field(min_length=1, max_length=4096)


def _path(value: str | None) -> Path | None:
    return None if value is None else Path(value)


def _state_dir(client: Envrestore) -> Path:
    return client.settings.state_dir


@router.post("/sites", status_code=201, summary="Add a site (admin token for every site)",
             responses={201: _WRITTEN[201]})  # fmt: skip
async def add_site(body: SiteBody, client: Client, grant: Grant) -> JSONResponse:
    require_scope(grant, "admin")
    if grant.sites is not None:
        raise ApiError(403, "forbidden", "only a token for every site may add a site")
    if not await registry.add_site(client.pool, body.name):
        raise Conflict(f"site {body.name!r} already exists", site=body.name)
    [site] = [s for s in await client.sites() if s.name == body.name]
    return JSONResponse(
        site.public(), status_code=201, headers={"Location": f"/sites/{body.name}/envs"}
    )


@router.delete("/sites/{site}", summary="Forget a site (nothing on disk is deleted)")
async def remove_site(
    site: str,
    client: Client,
    grant: Grant,
    cascade: bool = Query(False, description="Forget its environments too (each checked)"),
) -> dict[str, Any]:
    await require_site(client, grant, site, "admin")
    removed = await registry_admin.remove_site(client.pool, site, cascade=cascade)
    return {"site": site, "removed_environments": [e.target for e in removed]}


@router.put(ENV, summary="Register an environment, or update its settings", responses=_WRITTEN)
async def put_env(site: str, env: str, body: EnvBody, client: Client, grant: Grant) -> JSONResponse:
    await require_site(client, grant, site, "admin")
    files, code = Path(body.files), Path(body.code)
    await registry_admin.check_directories(files=files, code=code, state_dir=_state_dir(client))
    environment, created = await registry.add_environment(
        client.pool,
        f"{site}.{env}",
        db=body.db,
        files=files,
        code=code,
        protected=body.protected,
        url=body.url,
        state_dir=_state_dir(client),
    )
    headers = {"Location": f"/sites/{site}/envs/{env}"} if created else None
    return JSONResponse(environment.public(), status_code=201 if created else 200, headers=headers)


@router.patch(ENV, summary="Change only the given fields of an environment")
async def patch_env(
    site: str, env: str, body: EnvChange, client: Client, grant: Grant
) -> dict[str, Any]:
    await require_site(client, grant, site, "admin")
    given = body.model_dump(exclude_none=True)
    if not given:
        raise BadInput("nothing to change: give at least one of db, files, code, url, protected")
    files, code = _path(body.files), _path(body.code)
    await registry_admin.check_directories(files=files, code=code, state_dir=_state_dir(client))
    environment, changed = await registry_admin.set_environment(
        client.pool,
        f"{site}.{env}",
        db=body.db,
        files=files,
        code=code,
        url=body.url,
        protected=body.protected,
        state_dir=_state_dir(client),
    )
    return {**environment.public(), "changed": changed}


@router.delete(ENV, summary="Forget an environment (its database, files and code stay)")
async def remove_env(site: str, env: str, client: Client, grant: Grant) -> dict[str, Any]:
    await require_site(client, grant, site, "admin")
    return (await registry_admin.remove_environment(client.pool, f"{site}.{env}")).public()
