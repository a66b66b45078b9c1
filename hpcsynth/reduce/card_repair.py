"""The dataset card's "Repair" section: records `hpcsynth repair` generated again and the reduce took, and
what the repair cost (its sub-runs' clocks, status/repair.py), apart from the run's own cost section."""

from __future__ import annotations

from typing import Any


def repair_cost(run: str) -> dict[str, Any] | None:
    """The repair sub-runs' cost summed, None without repair; the card must not fail a reduce over it."""
    try:
        from pathlib import Path

        from hpcsynth.rundir import RunDir
        from hpcsynth.status.repair import repair_progress, repair_totals

        subs = repair_progress(RunDir(Path(run)))
        return {**repair_totals(subs), "sub_runs": len(subs)} if subs else None
    except Exception as exc:  # noqa: BLE001 - the run moved, a damaged file
        return {"error": f"{type(exc).__name__}: {exc}"}


def repair_section(info: dict[str, Any]) -> str:
    validation = (info.get("report") or {}).get("validation") or {}
    cost = info.get("repair_cost")
    rows = [(prompt, counts) for prompt, counts in validation.items() if counts.get("repaired")]
    if not rows and not cost:
        return ""
    lines = ["## Repair\n",
             "Records that validation refused (cut at `max_tokens`, too short, malformed: the run's `repair.checks`) "
             "were generated again by `hpcsynth repair`, each attempt with a seed of its own; a record is in this "
             "dataset at most once: its original when it passes, else its first passing attempt. "
             "`mix.docs.jsonl` gives each record's `attempt` (0: the original) and, for a repaired one, "
             "`repaired_from`, the checks its earlier attempts failed.\n",
             "| prompt | repaired | by attempt | still refused |", "|---|---:|---|---:|"]
    for prompt, counts in rows:
        by_attempt = ", ".join(f"{k}: {n:,}" for k, n in sorted(counts.get("repaired_by_attempt", {}).items()))
        lines.append(f"| {prompt} | {sum(counts['repaired'].values()):,} | {by_attempt} | "
                     f"{sum(counts.get('rejected', {}).values()):,} |")
    if cost and "error" not in cost:
        spent = (f"{cost['gpu_seconds'] / 3600:,.2f} GPU-hours" if cost["gpu_seconds"] else
                 f"{cost['cpu_seconds'] / 3600:,.3f} CPU worker-hours")
        lines.append(f"\nThe repair generated {cost['records']:,} records again ({cost['completion_tokens']:,} "
                     f"tokens) in {cost['sub_runs']} sub-runs: {spent}, apart from the cost below.")
    return "\n".join(lines) + "\n"
