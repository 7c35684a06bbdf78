"""Hatch build hook: compiles the SQL filter's C scans (`_fastscan`) into the package.

Without a C compiler the build goes on and the filter runs its pure-Python twins
(envrestore/pipelines/sqlsafety/fastscan.py): slower, never less safe.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

BUILDER = Path(__file__).parent / "envrestore" / "pipelines" / "sqlsafety" / "build_native.py"


class CustomBuildHook(BuildHookInterface):  # type: ignore[misc]
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        # Loaded by path: importing the envrestore package needs its dependencies.
        spec = importlib.util.spec_from_file_location("_envrestore_build_native", BUILDER)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        built = module.build()
        if built is not None and version != "editable":
            build_data["artifacts"].append(str(Path(built).relative_to(Path(self.root))))
            build_data["pure_python"] = False
            build_data["infer_tag"] = True
