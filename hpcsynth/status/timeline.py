"""A run's progress over time, from the done markers it already has: no extra file, no extra reads.

Every done marker carries `committed` (when its shard was committed) and the shard's completion tokens,
so the history of committed work is on disk for as long as the markers are. Status bins it into at most
TIMELINE_BINS equal spans (bounded output at any number of shards) for `status --json`, `--watch`'s
sparklines and `status --plot`. A shard counts when it commits: the tokens of a shard still generating
are not in any bin yet, and a run of few long shards looks steppy.
"""

from __future__ import annotations

from typing import Any

TIMELINE_BINS = 60  # a terminal sparkline's width; enough points for a chart of a campaign's days
SPARK = "▁▂▃▄▅▆▇█"


# Before this (2000-01-01), a time is no clock's: a marker or task file written by hand, or zeroed.
EARLIEST = 946684800.0


def plausible_times(commits: list[tuple[float, float]], starts: list[float],
                    now: float) -> tuple[list[tuple[float, float]], float | None]:
    """(commits, first start) with every time inside what the run's clocks could have written: a forged
    commit centuries ahead or behind would stretch the bins until every real one falls in one of them.
    Such a shard still counts, at the nearest plausible time (now, or the run's earliest real time); a
    missing, zero or negative time is dropped. A worker start outside that span is ignored."""
    real = [t for t in starts if EARLIEST <= t <= now]
    committed = [(t, n) for t, n in commits if t == t and 0 < t < float("inf")]  # t == t: not NaN
    earliest = min(real + [t for t, _ in committed if EARLIEST <= t <= now], default=now)
    return [(min(max(t, earliest), now), n) for t, n in committed], min(real, default=None)


def build_timeline(commits: list[tuple[float, float]], start: float | None, end: float) -> dict[str, Any]:
    """{"start", "bin_s", "tokens": [...], "shards": [...]}: tokens and shards committed in each bin,
    from (committed time, completion tokens) pairs; `start` is the run's first worker start if known."""
    if not commits:
        return {"start": start, "bin_s": 0.0, "tokens": [], "shards": []}
    first = min(t for t, _ in commits)
    start = first if start is None else min(start, first)
    end = max(end, max(t for t, _ in commits))
    bins = TIMELINE_BINS
    width = max((end - start) / bins, 1e-3)
    tokens, shards = [0.0] * bins, [0] * bins
    for when, count in commits:
        index = min(int((when - start) / width), bins - 1)
        tokens[index] += count
        shards[index] += 1
    return {"start": round(start, 3), "bin_s": round(width, 3), "tokens": tokens, "shards": shards}


def sparkline(values: list[float]) -> str:
    """One character per value, scaled to the largest; empty for no values."""
    top = max(values, default=0.0)
    if top <= 0:
        return SPARK[0] * len(values)
    return "".join(SPARK[min(int(v / top * (len(SPARK) - 1) + 0.5), len(SPARK) - 1)] for v in values)


def cumulative(values: list[float]) -> list[float]:
    out, total = [], 0.0
    for value in values:
        total += value
        out.append(total)
    return out
