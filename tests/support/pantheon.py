"""Backups laid out exactly as Pantheon's servers make them, for import tests.

What Pantheon's three files look like, and how sure we are of each fact, is
in docs/pantheon-backups.md. In short, for site `shop`, env `live`, taken at
2026-11-26 10:33:00 UTC:

* `shop_live_2026-11-26T10-33-00_UTC_code.tar.gz`: the git working tree with
  its `.git`, under `shop_live_2026-11-26T10-33-00_UTC_code/` (the file's own
  name, not `code_live/`);
* `shop_live_2026-11-26T10-33-00_UTC_database.sql.gz`: a gzipped mysqldump;
* `shop_live_2026-11-26T10-33-00_UTC_files.tar.gz`: the uploads under `files_live/`.

The archives are made by the system `tar` piped into `gzip`, as a shell on
Pantheon's servers would, not by Python's tarfile, so the tests see the
headers real tools write.
"""

from __future__ import annotations

import re
import subprocess
from datetime import datetime
from pathlib import Path

from envrestore.pipelines.backup.naming import pantheon_timestamp

__all__ = ["make_pantheon_backup", "pantheon_base_name"]

#: Pantheon site names and environment (multidev) names: lower-case letters, digits, hyphens.
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def pantheon_base_name(site: str, env: str, moment: datetime) -> str:
    """`<site>_<env>_<YYYY-MM-DDTHH-MM-SS>_UTC`, the stem all three files share."""
    for what, value in (("site", site), ("env", env)):
        if not _NAME_RE.match(value):
            raise ValueError(f"{what} {value!r} is not a Pantheon name (a-z, 0-9, -)")
    return f"{site}_{env}_{pantheon_timestamp(moment)}_UTC"


def make_pantheon_backup(
    dest_dir: Path,
    *,
    site: str,
    env: str,
    moment: datetime,
    code_repo: Path,
    files_dir: Path,
    dump_sql: bytes | Path,
) -> dict[str, Path]:
    """Write the three files of one Pantheon backup into dest_dir; {"code", "database", "files"}.

    `code_repo` is archived as it is (working tree and `.git`): for test and
    live, Pantheon checks out the deployment's tag first, so a caller who
    wants that checks the tag out before calling.
    """
    if not (code_repo / ".git").is_dir():
        raise ValueError(f"{code_repo} is not a git working tree with a .git directory")
    if not files_dir.is_dir():
        raise ValueError(f"{files_dir} is not a directory")
    base = pantheon_base_name(site, env, moment)
    dest_dir.mkdir(parents=True, exist_ok=True)
    parts = {
        "code": dest_dir / f"{base}_code.tar.gz",
        "database": dest_dir / f"{base}_database.sql.gz",
        "files": dest_dir / f"{base}_files.tar.gz",
    }
    _tar_gz(code_repo, f"{base}_code", parts["code"])
    _tar_gz(files_dir, f"files_{env}", parts["files"])
    _gzip(dump_sql, parts["database"])
    return parts


def _tar_gz(directory: Path, top: str, dest: Path) -> None:
    """`tar -c … | gzip > dest`, every member renamed from `./x` to `top/x`."""
    tar_argv = [
        "tar",
        "--create",
        "--file=-",
        f"--directory={directory}",
        # "./x" → "top/x" for names and hard-link targets; symlink targets stay as they are.
        f"--transform=s,^\\.,{top},rSh",
        "--",
        ".",
    ]
    with dest.open("wb") as out:
        tar = subprocess.Popen(tar_argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert tar.stdout is not None
        gzip = subprocess.run(
            ["gzip", "-c"], stdin=tar.stdout, stdout=out, stderr=subprocess.PIPE, check=False
        )
        tar.stdout.close()
        tar_err = tar.stderr.read() if tar.stderr is not None else b""
        tar_code = tar.wait()
    if tar_code != 0 or gzip.returncode != 0:
        raise RuntimeError(
            f"making {dest.name} failed: tar {tar_code} {tar_err.decode(errors='replace')}; "
            f"gzip {gzip.returncode} {gzip.stderr.decode(errors='replace')}"
        )


def _gzip(dump_sql: bytes | Path, dest: Path) -> None:
    """`gzip -c < dump > dest`: read from stdin, as a dump piped from mysqldump would be."""
    with dest.open("wb") as out:
        if isinstance(dump_sql, Path):
            with dump_sql.open("rb") as source:
                subprocess.run(["gzip", "-c"], stdin=source, stdout=out, check=True)
        else:
            subprocess.run(["gzip", "-c"], input=dump_sql, stdout=out, check=True)
