"""Builds `_fastscan` (the filter's C-speed scans) next to its source, where the
editable install and the wheel both find it.

Called by the project's hatch build hook (hatch_build.py) at install time, or by
hand: `python -m envrestore.pipelines.sqlsafety.build_native`. It needs only a C
compiler and Python's headers; without them it says so and the filter runs its
pure-Python twins (fastscan.py), slower but identical in what they accept.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path

SOURCE = Path(__file__).with_name("_fastscan.c")


def target() -> Path:
    """Where the built module goes: `_fastscan<EXT_SUFFIX>` beside its source."""
    return SOURCE.with_name("_fastscan" + (sysconfig.get_config_var("EXT_SUFFIX") or ".so"))


def build() -> Path | None:
    """Compile the module; return its path, or None (with the reason on stderr)."""
    out = target()
    include = sysconfig.get_paths()["include"]
    compiler = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    command = [
        *compiler,
        "-O2",
        "-shared",
        "-fPIC",
        "-std=c99",
        f"-I{include}",
        str(SOURCE),
        "-o",
        str(out),
    ]
    if sys.platform == "darwin":
        command[1:1] = ["-undefined", "dynamic_lookup"]
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as error:
        detail = getattr(error, "stderr", b"") or b""
        print(
            f"envrestore: _fastscan not built ({error}; {detail.decode(errors='replace')[:400]}); "
            "the SQL filter will use its pure-Python scans",
            file=sys.stderr,
        )
        return None
    return out


if __name__ == "__main__":
    sys.exit(0 if build() is not None else 1)
