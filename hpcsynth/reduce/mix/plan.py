"""The merge's mix plan: every part's counts -> targets (targets.py) -> key thresholds (choose.py)."""

from __future__ import annotations

from typing import Any

from hpcsynth.reduce.mix.choose import part_arrays, thresholds
from hpcsynth.reduce.mix.targets import plan_targets


def plan_mix(spec: Any, markers: dict[int, dict]) -> dict[str, Any]:
    sources = spec.mix["sources"]
    counted = [{key: sum(m["mix"][i][key] for m in markers.values()) for key in ("documents", "tokens", "cut",
                                                                                   "dropped")}
               for i in range(len(sources))]
    for i, counts in enumerate(counted):
        counts["largest"] = max((m["mix"][i]["largest"] for m in markers.values()), default=0)
    targets = plan_targets(sources, [c["tokens"] for c in counted], spec.mix)
    limits = thresholds(part_arrays(spec), len(sources), targets["fractions"])
    return {**targets, "available": counted, "limits": limits}
