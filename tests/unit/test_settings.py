"""Settings come from ENVRESTORE_* variables, then the TOML file ENVRESTORE_CONFIG names."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from envrestore.config.settings import load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in list(__import__("os").environ):
        if name.startswith("ENVRESTORE_"):
            monkeypatch.delenv(name)


def test_environment_overrides_the_toml_file(tmp_path, monkeypatch):
    config = tmp_path / "envrestore.toml"
    config.write_text('[envrestore]\ns3_bucket = "from-file"\nmax_attempts = 7\n')
    monkeypatch.setenv("ENVRESTORE_CONFIG", str(config))
    monkeypatch.setenv("ENVRESTORE_S3_BUCKET", "from-env")
    settings = load_settings()
    assert settings.s3_bucket == "from-env"
    assert settings.max_attempts == 7


def test_nothing_is_read_at_import_time(monkeypatch):
    monkeypatch.setenv("ENVRESTORE_QUEUE_NAME", "first")
    first = load_settings()
    monkeypatch.setenv("ENVRESTORE_QUEUE_NAME", "second")
    assert (first.queue_name, load_settings().queue_name) == ("first", "second")


def test_a_missing_config_file_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("ENVRESTORE_CONFIG", str(tmp_path / "absent.toml"))
    with pytest.raises(ValueError, match=r"absent\.toml"):
        load_settings()


def test_bad_values_are_refused(monkeypatch):
    monkeypatch.setenv("ENVRESTORE_MAX_ATTEMPTS", "0")
    with pytest.raises(ValidationError, match="max_attempts"):
        load_settings()


def test_an_empty_bin_dir_means_unset_and_the_secret_is_hidden(monkeypatch):
    monkeypatch.setenv("ENVRESTORE_PG_BIN_DIR", "")
    monkeypatch.setenv("ENVRESTORE_S3_SECRET_ACCESS_KEY", "hunter2")
    settings = load_settings()
    assert settings.pg_bin_dir is None
    assert "hunter2" not in repr(settings)
