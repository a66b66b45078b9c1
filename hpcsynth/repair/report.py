"""The repair's yield and cost: RUN/repair/report.json, and the lines `hpcsynth repair` prints.

Per prompt, from the scans (refused.py, RUN/repair/validated-K.json): the run's records, those refused
before repair (all checks; "repairable": by a check of repair.checks), those each attempt recovered, and
those still refused; the yield (passed / records) before and after. Per attempt, what its sub-runs cost
(status/repair.py: GPU- and CPU-seconds from their task clocks, tokens from their done markers), beside the
main run's cost for the same records, so the price of a recovered record can be read against a first one.
"""

from __future__ import annotations

from typing import Any

from hpcsynth.config import Config
from hpcsynth.files import atomic_write_json, read_json
from hpcsynth.repair.refused import scan_path
from hpcsynth.rundir import RunDir
from hpcsynth.status.repair import repair_progress, repair_totals, run_cost


def build_report(run: RunDir, config: Config) -> dict[str, Any]:
    scans = _scans(run)
    first = scans.get(0, {})
    prompts: dict[str, dict[str, Any]] = {}
    for prompt, counts in first.items():
        refused = sum(counts["refused"].values())
        prompts[prompt] = {"records": counts["records"], "passed": counts["passed"], "refused": refused,
                           "refused_by_check": dict(sorted(counts["refused"].items())),
                           "repairable": counts["candidates"], "recovered": {}, "still_refused": refused}
    for attempt in sorted(k for k in scans if k > 0):
        for prompt, counts in scans[attempt].items():
            row = prompts.get(prompt)
            if row is not None:
                row["recovered"][str(attempt)] = counts["passed"]
                row["still_refused"] -= counts["passed"]
    for row in prompts.values():
        row["yield_before"] = _share(row["passed"], row["records"])
        row["yield_after"] = _share(row["records"] - row["still_refused"], row["records"])
    progress = repair_progress(run)
    attempts: dict[str, dict[str, Any]] = {}
    for entry in progress:
        into = attempts.setdefault(str(entry["attempt"]), {"sub_runs": [], "shards": 0, "shards_done": 0})
        into["sub_runs"].append(entry)
        into["shards"] += entry["shards"]
        into["shards_done"] += entry["shards_done"]
    for into in attempts.values():
        into["cost"] = repair_totals(into["sub_runs"])
    main = run_cost(run)
    total = repair_totals(progress)
    recovered = sum(sum(r["recovered"].values()) for r in prompts.values())
    per_record = {k: main[k] / main["records"] if main["records"] else 0.0
                  for k in ("gpu_seconds", "cpu_seconds", "generation_seconds")}
    return {
        "run": str(run.root), "checks": list(config.repair.checks),
        "sampling": {k: v for k, v in vars(config.repair.sampling).items() if v},
        "attempts_finished": max((k for k in scans if k > 0), default=0),
        "prompts": prompts, "attempts": attempts,
        "cost": {"repair": total, "main": main, "recovered_records": recovered,
                 # The repair's generation time against what the records it recovered cost the main run:
                 # 1.0 would mean a recovered record costs as much as a first one (it is generated again for
                 # every attempt it needed, and never more than that).
                 "ratio": round(total["generation_seconds"] / (recovered * per_record["generation_seconds"]), 3)
                 if recovered and per_record["generation_seconds"] else None},
    }


def write_report(run: RunDir, report: dict[str, Any]) -> None:
    atomic_write_json(run.repair_report_path, report)


def report_lines(report: dict[str, Any]) -> list[str]:
    """The yield per prompt and the cost, as `hpcsynth repair` prints them."""
    lines = []
    for prompt, row in report["prompts"].items():
        by_attempt = ", ".join(f"attempt {k}: {n:,}" for k, n in row["recovered"].items()) or "none yet"
        lines.append(f"  {prompt}: {row['refused']:,} of {row['records']:,} refused before repair ({row['repairable']:,}"
                     f" repairable); recovered {by_attempt}; {row['still_refused']:,} still refused; yield "
                     f"{row['yield_before']:.1%} -> {row['yield_after']:.1%}")
    cost, main = report["cost"]["repair"], report["cost"]["main"]
    lines.append(f"  cost: {cost['records']:,} records generated again, {cost['completion_tokens']:,} tokens, "
                 f"{_hours(cost)} (the run: {main['records']:,} records, {_hours(main)})")
    if report["cost"]["ratio"] is not None:
        lines.append(f"  a recovered record cost {report['cost']['ratio']:.2f}x the generation time of a first one")
    return lines


def _hours(cost: dict[str, float]) -> str:
    kind, seconds = ("GPU", cost["gpu_seconds"]) if cost["gpu_seconds"] else ("CPU", cost["cpu_seconds"])
    return f"{seconds / 3600:,.2f} {kind}-hours" if seconds >= 360 else f"{seconds:,.1f} {kind}-seconds"


def _scans(run: RunDir) -> dict[int, dict[str, dict]]:
    found = {}
    for attempt in range(0, 64):
        path = scan_path(run, attempt)
        if not path.is_file():
            break
        try:
            data = read_json(path)
        except (OSError, ValueError):
            break
        found[attempt] = data.get("by_prompt", {}) if isinstance(data, dict) else {}
    return found


def _share(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


__all__ = ["build_report", "report_lines", "write_report"]
