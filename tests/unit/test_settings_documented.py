"""Every setting is documented once: in README's "Configuration" section.

deploy/README.md, the systemd environment file and the Kubernetes ConfigMap
link there instead of repeating the table, so a new field of `Settings` that is
not added to that section fails here rather than going undocumented.
"""

from __future__ import annotations

import re
from pathlib import Path

from envrestore.config.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
# Read outside `Settings` (logging is set up before settings load; the file is
# what settings load from), and documented in the same section.
OUTSIDE_SETTINGS = {"ENVRESTORE_LOG_LEVEL", "ENVRESTORE_LOG_FORMAT", "ENVRESTORE_CONFIG"}


def _section(text: str, heading: str) -> str:
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def _named(text: str) -> set[str]:
    return set(re.findall(r"ENVRESTORE_[A-Z0-9_]+", text))


def test_every_setting_is_in_the_readme_configuration_section() -> None:
    section = _section((ROOT / "README.md").read_text(), "## Configuration")
    fields = {f"ENVRESTORE_{name.upper()}" for name in Settings.model_fields}
    missing = sorted(fields - _named(section))
    assert not missing, f"document these in README's Configuration section: {missing}"


def test_the_configuration_section_names_only_real_settings() -> None:
    section = _section((ROOT / "README.md").read_text(), "## Configuration")
    fields = {f"ENVRESTORE_{name.upper()}" for name in Settings.model_fields}
    unknown = sorted(_named(section) - fields - OUTSIDE_SETTINGS)
    assert not unknown, f"README documents settings that do not exist: {unknown}"


def test_deploy_docs_link_to_the_reference_instead_of_repeating_it() -> None:
    deploy_readme = (ROOT / "deploy" / "README.md").read_text()
    assert "README.md#configuration" in deploy_readme
    # No second settings table: no "| `ENVRESTORE_..." row outside the reference.
    assert not re.search(r"^\| `ENVRESTORE_", deploy_readme, re.MULTILINE)
    for path in (
        ROOT / "deploy" / "systemd" / "envrestore.env.example",
        ROOT / "deploy" / "kubernetes" / "config.yaml",
    ):
        assert "Configuration" in path.read_text(), path
