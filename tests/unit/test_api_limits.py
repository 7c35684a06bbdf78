"""Settings and server options that bound the API: upload URL lifetime, trusted proxies."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from envrestore.cli.api_cmd import proxy_options
from envrestore.config.settings import Settings, describe_settings_error


def test_upload_url_ttl_may_not_outlive_the_orphan_sweep() -> None:
    with pytest.raises(ValidationError) as raised:
        Settings(api_upload_url_ttl=7200, backup_orphan_min_age_hours=1.0)
    message = describe_settings_error(raised.value)
    assert "ENVRESTORE_API_UPLOAD_URL_TTL" in message
    assert "ENVRESTORE_BACKUP_ORPHAN_MIN_AGE_HOURS" in message
    assert Settings(api_upload_url_ttl=3600, backup_orphan_min_age_hours=1.0).api_upload_url_ttl


def test_forwarded_headers_are_believed_only_from_configured_proxies() -> None:
    assert Settings().api_forwarded_allow_ips == ""
    assert proxy_options("") == {"proxy_headers": False}
    assert proxy_options("  ") == {"proxy_headers": False}
    assert proxy_options("10.0.0.5, 10.1.0.0/16") == {
        "proxy_headers": True,
        "forwarded_allow_ips": "10.0.0.5, 10.1.0.0/16",
    }
