"""envrestore: queued, resumable, idempotent backups and restores of site environments.

One top-level package so that installing the distribution claims one import
name, not the generic ``pipelines``, ``workers``, ``config`` and ``cli``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("envrestore")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0+unknown"
