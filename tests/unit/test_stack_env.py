"""After `make demo`, `source .envrestore/stack.env` is all a new user needs before `envrestore`."""

from __future__ import annotations

import subprocess
from pathlib import Path

from deploy.local import stack


def test_stack_env_puts_the_venv_on_path_once_and_still_round_trips(tmp_path: Path) -> None:
    venv_bin = stack.venv_bin()
    assert venv_bin is not None, "the tests run from the venv that has envrestore"
    values = {"ENVRESTORE_STATE_DIR": str(tmp_path / "a dir"), "ENVRESTORE_S3_BUCKET": "b"}
    paths = stack.StackPaths(tmp_path)
    paths.env_file.write_text(stack.render_env(values, path_dir=venv_bin))

    # A fresh shell without the venv: sourced twice, `envrestore` is the venv's, PATH has it once.
    shell = subprocess.run(
        [
            "/bin/sh",
            "-c",
            f'. "{paths.env_file}"; . "{paths.env_file}"; command -v envrestore; echo "$PATH"',
        ],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        check=True,
    )
    found, path = shell.stdout.splitlines()
    assert found == str(venv_bin / "envrestore")
    assert path.split(":") == [str(venv_bin), "/usr/bin", "/bin"]
    assert stack.load_env(tmp_path) == values  # the PATH line is for shells only
    version = subprocess.run(
        ["/bin/sh", "-c", f'. "{paths.env_file}"; envrestore --help'],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert version.returncode == 0 and "schedule" in version.stdout
