"""The merge's mix plan: every part's counts -> targets (targets.py) -> key thresholds (choose.py).

Parts may have tokenized only the first of their originals in key order (feed.py). The plan is exact
only when every threshold stays below the key where each such part stopped and no decision rests on a
partial count; otherwise `redo` tokenizes those parts' originals in full and the plan is made again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hpcsynth.errors import RunError
from hpcsynth.reduce.mix.choose import part_arrays, thresholds
from hpcsynth.reduce.mix.targets import plan_targets

SUMMED = ("documents", "tokens", "cut", "dropped", "chars", "rest_documents", "rest_chars")


def plan_mix(spec: Any, markers: dict[int, dict],
             redo: Callable[[list[int]], dict[int, dict]]) -> tuple[dict[str, Any], dict[int, dict]]:
    """The plan and the markers it rests on; `redo(parts)` re-tokenizes those parts with all their
    originals and returns every part's marker."""
    for _ in range(2):
        partial = {i: m["mix"][s]["limit"] for i, m in markers.items() for s in range(len(m["mix"]))
                   if m["mix"][s]["limit"] is not None}
        try:
            plan = _plan(spec, markers)
        except RunError:
            if not partial:
                raise
            markers = redo(sorted(partial))  # a decision on a partial count: count them all, decide again
            continue
        short = [i for i, limit in partial.items() if _unsafe(spec, markers[i], plan)]
        if not short:
            return plan, markers
        markers = redo(sorted(short))
    return _plan(spec, markers), markers


def _unsafe(spec: Any, marker: dict, plan: dict[str, Any]) -> bool:
    """True when the plan needs originals this part did not tokenize."""
    for s, counts in enumerate(marker["mix"]):
        if counts["limit"] is None:
            continue
        if plan["copies"][s] >= 1 or plan["limits"][s] > counts["limit"] or spec.mix["sources"][s]["name"] in plan["short"]:
            return True
    return False


def _plan(spec: Any, markers: dict[int, dict]) -> dict[str, Any]:
    sources = spec.mix["sources"]
    counted = [{key: sum(m["mix"][i][key] for m in markers.values()) for key in SUMMED} for i in range(len(sources))]
    for i, counts in enumerate(counted):
        counts["largest"] = max((m["mix"][i]["largest"] for m in markers.values()), default=0)
        counts["estimated"] = bool(counts["rest_documents"])
    targets = plan_targets(sources, [c["tokens"] for c in counted], spec.mix)
    limits = thresholds(part_arrays(spec), len(sources), targets["fractions"])
    return {**targets, "available": counted, "limits": limits}
