"""`envrestore health [--json]`: can this host run envrestore right now?

The same four checks as the API's /readyz (observability/health.py), on
connections of their own: the ledger answers, its migrations are current,
the broker (Redis) answers, the object store's bucket exists. One line per
check; exit 0 when all pass, UNAVAILABLE (6) when any fails — the code the
CLI uses for an unreachable service and for a ledger not migrated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from envrestore.cli.common import JsonOpt, load_cli_settings, out, print_json, run_command
from envrestore.cli.exit_codes import ExitCode

if TYPE_CHECKING:
    from envrestore.observability.health import Check


def health(as_json: JsonOpt = False) -> None:
    """Check the ledger, its migrations, the broker and the object store (exit 6 if any fails)."""
    from envrestore.observability.health import CHECKS, all_ok, check_everything

    settings = load_cli_settings()
    checks: list[Check] = run_command(lambda: check_everything(settings))
    ok = all_ok(checks)
    if as_json:
        print_json({"ok": ok, "checks": [check.as_dict() for check in checks]})
    else:
        width = max(len(name) for name in CHECKS)
        for check in checks:
            mark = "ok" if check.ok else f"FAIL ({check.code})"
            out.print(f"{check.name:<{width}}  {mark}: {check.detail}", markup=False)
    if not ok:
        raise SystemExit(ExitCode.UNAVAILABLE)
