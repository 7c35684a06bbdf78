"""Collect `bench_*.py` here, so `make bench` finds the benchmarks and `make test` never does.

pyproject's testpaths (tests/unit, integration, e2e) keep this directory out of
`make test`; this hook only runs when pytest is pointed at tests/bench.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_collect_file(parent: pytest.Collector, file_path: Path) -> pytest.Module | None:
    if parent.session.isinitpath(file_path):
        return None  # named on the command line: pytest's own collector takes it (once)
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None
