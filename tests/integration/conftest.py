"""Fixtures shared by the integration tests (the services' are in tests/conftest.py)."""

from tests.support.env_fixtures import *  # noqa: F403 - fixtures
