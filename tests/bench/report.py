"""The restore benchmark's summary: one table of contenders x sizes, the targets, the profile.

Everything printed is a median over the rounds of one run; every ratio is
between two medians of that same run (issue 11: "ratios measured in the same
run"). The tables are Markdown, so README's Performance section can take them
as printed.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

MB = 1_000_000

LABELS = {
    "naive": "naive shell (sequential)",
    "overlapped": "overlapped shell (3 streams)",
    "envrestore": "envrestore, defaults",
    "lockstep": "envrestore, lockstep (before: read-ahead 1 MB, 1 connection)",
    "client2": "`mariadb` client, 2 sessions (dump on disk)",
    "tar": "`tar -x` (archive on disk)",
    "pg_envrestore": "PostgreSQL site, database only: envrestore, defaults",
    "pg_psql2": "PostgreSQL site: `psql`, 2 sessions + lz4 (dump on disk)",
}
#: Contenders that restore the MariaDB site whole: the ones compared with the shells.
WHOLE = ("naive", "overlapped", "envrestore", "lockstep")
#: Contenders whose rows show the job's steps and the worker's memory.
JOBS = ("envrestore", "lockstep", "pg_envrestore")
#: The steps before the imports, shown as one column.
PREPARE = ("resolve", "fetch", "verify", "wipe")
MEMORY = ("worker_peak_rss_mb", "worker_hwm_sum_mb", "clients_peak_rss_mb", "tree_peak_rss_mb")


@dataclass(frozen=True)
class Target:
    """One of the issue's targets: what / over what, at most `limit`."""

    name: str
    limit: float
    unit: str = "x"


TARGETS = (
    Target("end-to-end vs overlapped shell", 0.8),
    Target("end-to-end vs naive shell", 0.45),
    Target("import_db vs `mariadb` client, 2 sessions", 1.1),
    Target("import_files vs `tar -x`", 1.1),
    Target("PostgreSQL import_db vs parallel `psql`", 1.2),
    Target("switch window", 0.2, "s"),
    Target("worker peak RSS", 300, "MB"),
)


def _median(values: list[float]) -> float | None:
    return round(float(statistics.median(values)), 3) if values else None


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians per contender over rounds, and each contender's ratios to the shells'."""
    names = [n for n in LABELS if all(n in r for r in rounds)]
    out: dict[str, Any] = {"rounds": len(rounds)}
    for name in names:
        runs = [r[name] for r in rounds]
        walls = [run["wall_seconds"] for run in runs]
        steps = {s for run in runs for s in run.get("steps_seconds", {})}
        row: dict[str, Any] = {
            "wall_seconds": _median(walls),
            "wall_min": min(walls),
            "wall_max": max(walls),
            "steps_seconds": {
                s: _median([run["steps_seconds"][s] for run in runs if s in run["steps_seconds"]])
                for s in sorted(steps)
            },
        }
        for key in ("job_seconds", "switch_window_seconds", *MEMORY):
            if key in runs[0]:
                row[key] = _median([run[key] for run in runs])
        for key in ("profile", "profile_import_db"):
            row[key] = _median_profile([run.get(key, {}) for run in runs])
        out[name] = row
    for name in (n for n in names if n in WHOLE):
        for base in ("naive", "overlapped"):
            if base in out:
                out[name][f"ratio_vs_{base}"] = round(
                    out[name]["wall_seconds"] / out[base]["wall_seconds"], 2
                )
    return out


def _median_profile(profiles: list[dict[str, Any]]) -> dict[str, Any]:
    keys = {k for p in profiles for k in p}
    return {k: _median([p[k] for p in profiles if p.get(k) is not None]) for k in sorted(keys)}


def targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of issue 11 against this size's medians: measured, met or not."""
    env = summary.get("envrestore")
    if not env:
        return []
    steps = env["steps_seconds"]

    def ratio(value: float | None, base: float | None) -> float | None:
        return round(value / base, 2) if value and base else None

    def base_step(name: str, step: str) -> float | None:
        value: float | None = summary.get(name, {}).get("steps_seconds", {}).get(step)
        return value

    measured = {
        TARGETS[0].name: env.get("ratio_vs_overlapped"),
        TARGETS[1].name: env.get("ratio_vs_naive"),
        TARGETS[2].name: ratio(steps.get("import_db"), base_step("client2", "import_db")),
        TARGETS[3].name: ratio(steps.get("import_files"), base_step("tar", "import_files")),
        TARGETS[4].name: ratio(
            summary.get("pg_envrestore", {}).get("steps_seconds", {}).get("import_db"),
            base_step("pg_psql2", "import_db"),
        ),
        TARGETS[5].name: env.get("switch_window_seconds"),
        TARGETS[6].name: env.get("worker_peak_rss_mb"),
    }
    rows = []
    for target in TARGETS:
        if target is TARGETS[4] and "pg_envrestore" not in summary:
            continue  # no PostgreSQL site at this size
        value = measured[target.name]
        rows.append(
            {
                "target": target.name,
                "limit": target.limit,
                "unit": target.unit,
                "measured": value,
                "met": None if value is None else value <= target.limit,
            }
        )
    return rows


def _num(value: float | None, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)


def _rate(seconds: float | None, size: int) -> str:
    if not seconds:
        return "-"
    return f"{seconds:.1f} ({size / MB / seconds:.0f})"


def main_table(sizes: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| size | contender | wall s (min-max) | vs naive | vs overlapped | prepare s "
        "| import_db s (MB/s) | import_files s (MB/s) | apply_code s | switch s "
        "| switch window s | worker peak RSS MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size in sizes:
        site, summary = size["site"], size["summary"]
        for name, label in LABELS.items():
            row = summary.get(name)
            if not row:
                continue
            steps = row["steps_seconds"]
            prepare = sum(steps[s] for s in PREPARE if s in steps) if name in JOBS else None
            dump = site["pg"]["dump_bytes"] if name.startswith("pg_") else site["dump_bytes"]
            lines.append(
                f"| {site['scale']:g} | {label} "
                f"| {row['wall_seconds']:.1f} ({row['wall_min']:.1f}-{row['wall_max']:.1f}) "
                f"| {_num(row.get('ratio_vs_naive'), '.2f')} "
                f"| {_num(row.get('ratio_vs_overlapped'), '.2f')} "
                f"| {_num(prepare, '.2f')} "
                f"| {_rate(steps.get('import_db'), dump)} "
                f"| {_rate(steps.get('import_files'), site['file_bytes'])} "
                f"| {_num(steps.get('apply_code'))} | {_num(steps.get('switch'), '.2f')} "
                f"| {_num(row.get('switch_window_seconds'), '.3f')} "
                f"| {_num(row.get('worker_peak_rss_mb') if prepare is not None else None, '.0f')} |"
            )
    return lines


def targets_table(sizes: list[dict[str, Any]]) -> list[str]:
    lines = ["| size | target | limit | measured | met |", "|---|---|---:|---:|---|"]
    for size in sizes:
        for row in size["targets"]:
            unit = row["unit"]
            fmt = ".3f" if unit == "s" else ".0f" if unit == "MB" else ".2f"
            met = "-" if row["met"] is None else "met" if row["met"] else "**not met**"
            lines.append(
                f"| {size['site']['scale']:g} | {row['target']} | ≤ {row['limit']:g} {unit} "
                f"| {_num(row['measured'], fmt)} {unit} | {met} |"
            )
    return lines


def profile_table(sizes: list[dict[str, Any]]) -> list[str]:
    """During import_db (the shells: their database stream): who spent the CPU."""
    lines = [
        "| size | contender | import_db s | Python CPU s | client CPU s | mariadbd CPU s "
        "| machine busy % (of 200) | whole run: Python / client / mariadbd CPU s |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for size in sizes:
        summary = size["summary"]
        if "lockstep" not in summary:
            continue
        for name in ("envrestore", "lockstep", "client2", "overlapped", "naive"):
            row = summary.get(name)
            if not row:
                continue
            during, whole = row["profile_import_db"], row["profile"]
            lines.append(
                f"| {size['site']['scale']:g} | {LABELS[name]} "
                f"| {_num(row['steps_seconds'].get('import_db'))} "
                f"| {_num(during.get('python_cpu_s'))} | {_num(during.get('clients_cpu_s'))} "
                f"| {_num(during.get('server_cpu_s'))} "
                f"| {_num(during.get('machine_busy_pct'), '.0f')} "
                f"| {_num(whole.get('python_cpu_s'))} / {_num(whole.get('clients_cpu_s'))} "
                f"/ {_num(whole.get('server_cpu_s'))} |"
            )
    return lines


def print_report(report: dict[str, Any]) -> None:
    sizes = report["sizes"]
    lines = [
        "",
        f"## restore benchmark, {report['date']} — {report['machine']['cpus']} CPUs, "
        f"medians of {report['rounds']} round(s)",
        "",
    ]
    for size in sizes:
        site = size["site"]
        parts = ", ".join(f"{p} {b / MB:.0f} MB" for p, b in site["parts_bytes"].items())
        lines.append(
            f"- size {site['scale']:g}: dump {site['dump_bytes'] / MB:.0f} MB uncompressed "
            f"({site['rows']['wp_posts']} posts, {site['rows']['wp_postmeta']} meta rows), "
            f"{site['files']} files / {site['file_bytes'] / MB:.0f} MB; parts: {parts}"
        )
        if "pg" in site:
            pg = site["pg"]
            lines.append(
                f"- size {site['scale']:g}, PostgreSQL site: dump {pg['dump_bytes'] / MB:.0f} MB "
                f"uncompressed, part {pg['part_bytes'] / MB:.0f} MB; "
                f"lz4 TOAST {'available' if pg['lz4'] else 'not available'}"
            )
    lines += ["", *main_table(sizes), "", *targets_table(sizes)]
    profile = profile_table(sizes)
    if len(profile) > 2:
        lines += ["", "Profile during import_db (before: lockstep; after: defaults)", ""]
        lines += profile
    print("\n".join([*lines, ""]), flush=True)


if __name__ == "__main__":  # re-print a run's tables: python -m tests.bench.report <json>
    import json
    import sys
    from pathlib import Path

    print_report(json.loads(Path(sys.argv[1]).read_text()))
