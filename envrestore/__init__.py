"""envrestore: queued, resumable, idempotent backups and restores of site environments.

One top-level package so that installing the distribution claims one import
name, not the generic ``pipelines``, ``workers``, ``config`` and ``cli``.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    """`__version__`, looked up when asked for: importlib.metadata scans every
    installed distribution, which costs each CLI command's start (cli/main.py)."""
    if name != "__version__":
        raise AttributeError(f"module 'envrestore' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("envrestore")
    except PackageNotFoundError:  # running from a checkout that was never installed
        found = "0+unknown"
    globals()["__version__"] = found
    return found
