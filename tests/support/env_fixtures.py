"""Fixtures of integration tests about moving content: environments on the test's engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from envrestore.pipelines.jobs.runtime import Runtime
from tests.support.environments import SiteEnv, add_env

ENGINES = ["mariadb", "postgresql"]


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def new_db(engine: str, make_mariadb_db: Any, make_postgres_db: Any) -> Any:
    return make_mariadb_db if engine == "mariadb" else make_postgres_db


@pytest.fixture
def other_db(engine: str, make_mariadb_db: Any, make_postgres_db: Any) -> Any:
    """Databases of the engine the test is not about."""
    return make_postgres_db if engine == "mariadb" else make_mariadb_db


@pytest.fixture
def make_env(runtime: Runtime, tmp_path: Path, new_db: Any) -> Any:
    """`await make_env("shop.dev")`: a registered environment on the test's engine."""

    async def make(target: str, make_db: Any = None) -> SiteEnv:
        return await add_env(runtime, tmp_path / "envs", target, make_db or new_db)

    return make
