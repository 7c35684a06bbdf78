"""The two ways hostile bytes reach an environment: a forged backup part, or an import.

`run_hostile(rt, site, element, data, route=...)` runs one job over `data` as
the `element` part and returns the job's view once it has settled:

* `route="restore"` forges the site's backup so that its `element` part is
  `data`, ledger and manifest agreeing (an attacker with write access to the
  bucket and the ledger: `forge_part`), and restores it;
* `route="import"` uploads `data` to `staging/uploads/<uuid>/<name>` with its
  size and sha256, as an uploader would, and imports it with an
  `ImportRequest`. The uploader's own sha256 matches, so only the content
  checks stand between the bytes and the environment. Once the import has
  settled, nothing is left under `staging/` (the upload is released whether
  the job succeeded or failed): `run_hostile` asserts it.

`elements` ("all", "files,code"...) is what the job replaces, `element` alone
by default; for an import, the other elements are the backup's own parts,
uploaded unchanged, so both routes replace the same things from the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from typing import Any

from envrestore.pipelines.jobs.runtime import Runtime
from envrestore.pipelines.requests import ImportRequest, PartInput, parse_elements
from tests.support.driver import drive
from tests.support.environments import staging_keys
from tests.support.producing import producer, submit_restore

__all__ = [
    "ROUTES",
    "forge_part",
    "import_parts",
    "part_bytes",
    "rewrite_part",
    "run_hostile",
    "upload_part",
]

#: Every route hostile bytes can take; tests are parametrized with it.
ROUTES = ("restore", "import")


async def rewrite_part(rt: Runtime, backup: Any, part: str, data: bytes) -> None:
    """Overwrite a backup part's object (ledger and manifest still say the old size and sha256)."""
    record = {p["part"]: p for p in backup.parts}[part]

    async def chunks():
        yield data

    await rt.store.put_stream(record["key"], chunks())


async def part_bytes(rt: Runtime, backup: Any, part: str) -> bytes:
    """A backup part's bytes as stored."""
    record = {p["part"]: p for p in backup.parts}[part]
    return await rt.store.get_bytes(record["key"], max_size=1 << 30)


async def forge_part(rt: Runtime, backup: Any, part: str, data: bytes) -> None:
    """Replace a part and make the ledger and manifest agree (an attacker with write access)."""
    await rewrite_part(rt, backup, part, data)
    digest = hashlib.sha256(data).hexdigest()
    await rt.pool.execute(
        "UPDATE backup_parts SET size = $3, sha256 = $4 WHERE backup_id = $1 AND part = $2",
        backup.id,
        part,
        len(data),
        digest,
    )
    manifest = json.loads(await rt.store.get_bytes(backup.manifest_key, max_size=1 << 20))
    manifest["parts"][part].update(size=len(data), sha256=digest)
    await rt.store.put_bytes(backup.manifest_key, json.dumps(manifest).encode())


async def upload_part(rt: Runtime, element: str, data: bytes, name: str | None = None) -> PartInput:
    """`data` uploaded under `staging/uploads/`, as the import request names it."""
    key = f"staging/uploads/{uuid.uuid4().hex}/{name or element}"
    put = await rt.store.put_bytes(key, data)
    assert (put.size, put.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    return PartInput(element, upload_key=put.key, size=put.size, sha256=put.sha256)


async def import_parts(
    rt: Runtime, target: str, parts: Mapping[str, bytes], **options: Any
) -> dict[str, Any]:
    """Upload each element's bytes, import them in one job, and return its settled view.

    Asserts that the job released every upload (nothing left under `staging/`).
    """
    inputs = [await upload_part(rt, element, data) for element, data in parts.items()]
    job = await producer(rt).submit(ImportRequest(target, tuple(inputs), **options))
    view = await drive(rt, job.job_id)
    left = await staging_keys(rt)
    assert left == [], f"the import left objects in staging/: {left}"
    return view


async def run_hostile(
    rt: Runtime,
    site: Mapping[str, Any],
    element: str,
    data: bytes,
    *,
    route: str,
    elements: str | None = None,
    target: str = "shop.dev",
    forge: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Run one job over `data` as `element` by `route`; the job's settled view.

    `forge=False` (restore only) overwrites the part's object but leaves the
    ledger and manifest as they were, like damage in the bucket would.
    `options` are the request's fields (`allow_incomplete_dump`, `in_place`...).
    """
    chosen = elements or element
    if route == "restore":
        if forge:
            await forge_part(rt, site["backup"], element, data)
        else:
            await rewrite_part(rt, site["backup"], element, data)
        job = await submit_restore(rt, target, element=chosen, **options)
        return await drive(rt, job.job_id)
    assert route == "import", route
    parts = {
        name: data if name == element else await part_bytes(rt, site["backup"], name)
        for name in parse_elements(chosen)
    }
    assert element in parts, (element, chosen)
    return await import_parts(rt, target, parts, **options)
