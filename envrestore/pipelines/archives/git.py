"""Read-only questions to a git working tree (head commit, tags), via the `git` CLI."""

from __future__ import annotations

from pathlib import Path

from envrestore.pipelines.errors import BadInput, EnvrestoreError
from envrestore.pipelines.streams import empty_stream, run_consumer

#: No pager, no prompt for credentials, messages we can quote as they are.
_GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_PAGER": "cat", "LC_ALL": "C"}


async def git(repo: Path, *args: str) -> str:
    """Run `git -C repo args…` and return its stdout."""
    return await run_consumer(["git", "-C", str(repo), *args], empty_stream(), env=_GIT_ENV)


def _check_directory(path: Path) -> None:
    if not path.exists():
        raise BadInput(
            f"code directory {path} does not exist; check the environment's code path",
            path=str(path),
        )
    if not path.is_dir():
        raise BadInput(f"code path {path} is not a directory", path=str(path))


def _same_directory(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


async def ensure_repo(path: Path) -> None:
    """Raise BadInput unless `path` is the top of a git working tree."""
    _check_directory(path)
    try:
        top = (await git(path, "rev-parse", "--show-toplevel")).strip()
    except EnvrestoreError as exc:
        raise BadInput(
            f"{path} is not a git working tree ({exc.data.get('stderr', exc)}); "
            "initialise it or point the environment at its repository",
            path=str(path),
        ) from exc
    if not _same_directory(Path(top), path):
        raise BadInput(
            f"{path} is inside the git working tree {top} but is not its top; "
            "point the environment at the repository's top directory",
            path=str(path),
            toplevel=top,
        )


async def head_commit(repo: Path) -> str:
    """The full sha of the commit checked out in `repo`."""
    await ensure_repo(repo)
    try:
        return (await git(repo, "rev-parse", "--verify", "HEAD^{commit}")).strip()
    except EnvrestoreError as exc:
        raise BadInput(
            f"git repository {repo} has no commit checked out (HEAD is unborn)", path=str(repo)
        ) from exc


async def tags(repo: Path) -> dict[str, str]:
    """Every tag → the commit it names (annotated tags peeled)."""
    await ensure_repo(repo)
    out = await git(
        repo,
        "for-each-ref",
        "--format=%(refname:strip=2)%00%(objectname)%00%(*objectname)",
        "refs/tags",
    )
    result: dict[str, str] = {}
    for line in out.splitlines():
        name, obj, peeled = line.split("\0")
        result[name] = peeled or obj
    return result
