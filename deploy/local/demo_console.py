"""The demo's voice: headings, the commands as typed, and the CLI run as a user runs it."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from deploy.local import stack

SITE = "demo"
ENVS = ("dev", "test", "live")
EXIT_CONFLICT = 4
CHUNK = 1 << 20
# The demo's backup takes seconds; this only ends a wait on a worker that died.
CLI_TIMEOUT_SECONDS = 600.0


# ---------------------------------------------------------------- output


def say(text: str = "") -> None:
    print(text, flush=True)


def heading(text: str) -> None:
    bold = sys.stdout.isatty()
    say()
    say(f"\033[1m== {text}\033[0m" if bold else f"== {text}")


def show_command(argv: list[str]) -> None:
    text = "$ " + shlex.join(argv)
    say(f"\033[36m{text}\033[0m" if sys.stdout.isatty() else text)


# ---------------------------------------------------------------- the CLI, as typed


def cli(
    args: list[str],
    env: dict[str, str],
    *,
    tolerate: tuple[int, ...] = (),
    note: str = "it already exists from an earlier run; kept",
    timeout: float = CLI_TIMEOUT_SECONDS,
) -> int:
    """Print the command, run it on this terminal (progress bars show), stop on failure.

    An exit code in `tolerate` is expected (`note` says why) and does not stop the demo.
    """
    argv = ["envrestore", *args]
    show_command(argv)
    worker_log = Path(env["ENVRESTORE_STATE_DIR"]) / "logs" / "worker.log"
    try:
        result = subprocess.run(
            [*stack.envrestore_command(), *args],
            env={**os.environ, **env},
            check=False,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise SystemExit(
            f"`{shlex.join(argv)}` did not finish within {timeout:.0f}s; is the worker "
            f"running (`python -m deploy.local.stack status`)? Its log is {worker_log}"
        ) from None
    if result.returncode in tolerate:
        say(f"   (exit {result.returncode}: {note})")
    elif result.returncode != 0:
        raise SystemExit(
            f"`{shlex.join(argv)}` failed with exit {result.returncode}; "
            f"the worker's log is {worker_log}"
        )
    return result.returncode


def relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def cli_output(args: list[str], env: dict[str, str]) -> str:
    """Run a command whose output the demo uses next (a link); show it as typed."""
    argv = ["envrestore", *args]
    show_command(argv)
    result = subprocess.run(
        [*stack.envrestore_command(), *args],
        env={**os.environ, **env},
        check=False,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_SECONDS,
    )
    if result.returncode != 0:
        raise SystemExit(f"`{shlex.join(argv)}` failed: {result.stderr.strip()}")
    sys.stderr.write(result.stderr)
    return result.stdout.strip()
