"""The code import: the backup's repository as it is, or one of the code strategies.

`replace` (a restore of the same site, an import of a whole site): the
archive's repository becomes the code, the live refs kept under
`refs/envrestore/pre-restore/<job>/`. `revert`: one new commit on the live
branch whose tree is the backup's. Another site's code: `overwrite` (its tree
as one commit) or `merge` (its history merged). All are built in the staging
directory; `switch` swaps it in, so a failure leaves the live code untouched.
"""

from __future__ import annotations

from typing import Any

from envrestore.pipelines import trees
from envrestore.pipelines.archives.code_restore import prepare_code
from envrestore.pipelines.archives.code_strategies import code_merge, code_overwrite, code_revert
from envrestore.pipelines.archives.tarpolicy import limits_for
from envrestore.pipelines.errors import IntegrityError
from envrestore.pipelines.jobs.context import StepContext
from envrestore.pipelines.restore.imports import extract_part
from envrestore.pipelines.restore.prepare import parts_of, targets_of
from envrestore.pipelines.restore.request import request_of
from envrestore.pipelines.restore.targets import naming_part

#: Who makes the commits of revert, overwrite and merge.
IDENTITY = ("envrestore", "envrestore@localhost")


async def apply_code(ctx: StepContext) -> dict[str, Any]:
    """Build the new code in a staging repository (see the module's docstring)."""
    await ctx.check_lease()
    strategy = request_of(ctx).code_strategy or "replace"
    if strategy == "replace":
        return await _replace(ctx)
    targets = await targets_of(ctx)
    live = targets.live("code")
    incoming = trees.staging_path(live, f"{targets.tag}-in", check=False)
    if incoming.exists():
        trees.discard(incoming)  # an earlier attempt's
    _incoming, outputs = await extract_part(ctx, "code", incoming)
    dest = targets.staging("code")
    if dest.exists():
        trees.discard(dest)
    resolved = await ctx.outputs_of("resolve")
    source = _source_name(resolved)
    ref = (await parts_of(ctx))["code"]
    cap = limits_for(ref.size, ctx.settings).max_bytes
    try:
        with naming_part("code"):
            if strategy == "revert":
                head = resolved.get("git_head")
                message = f"Revert code to {source}" + (f" (commit {head[:12]})" if head else "")
                built = await code_revert(
                    live, incoming, dest, message=message, identity=IDENTITY, max_tree_bytes=cap
                )
            elif strategy == "overwrite":
                built = await code_overwrite(
                    live, incoming, dest, source=source, identity=IDENTITY, max_tree_bytes=cap
                )
            else:
                built = await code_merge(
                    live, incoming, dest, source=source, identity=IDENTITY, max_tree_bytes=cap
                )
    finally:
        trees.discard(incoming)
    await ctx.event("restore.code_built", strategy=strategy, head=built["head"])
    return {**outputs, "path": str(dest), **built}


async def _replace(ctx: StepContext) -> dict[str, Any]:
    targets = await targets_of(ctx)
    dest, outputs = await extract_part(ctx, "code")
    live = targets.live("code")
    code = await prepare_code(
        dest, live if live.exists() and live != dest else None, job_tag=targets.tag
    )
    resolved = await ctx.outputs_of("resolve")
    if resolved.get("git_head") and code["head"] != resolved["git_head"]:
        raise IntegrityError(
            f"verify failed for the code part: its HEAD is {code['head']}, the backup "
            f"recorded {resolved['git_head']}",
            part="code",
        )
    hardened = {key: value for key, value in code.items() if key.startswith("git_")}
    return {
        **outputs,
        "strategy": "replace",
        "head": code["head"],
        "tags": code["tags"],
        **hardened,
    }


def _source_name(resolved: dict[str, Any]) -> str:
    """How commit messages name where the code came from: never a URL's query."""
    if resolved.get("backup_id"):
        where = f"{resolved.get('site')}.{resolved.get('env')}"
        return f"{where}'s backup {resolved['backup_id']}"
    described = resolved.get("sources", {}).get("code", {})
    return str(described.get("url") or described.get("key") or "an imported code archive")
