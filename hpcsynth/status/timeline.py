"""A run's progress over time, from the done markers it already has: no extra file, no extra reads.

Every done marker carries `committed` (when its shard was committed) and the shard's completion tokens,
so the history of committed work is on disk for as long as the markers are. Status bins it into at most
TIMELINE_BINS equal spans (bounded output at any number of shards) for `status --json`, `--watch`'s
sparklines and `status --plot`. A shard counts when it commits: the tokens of a shard still generating
are not in any bin yet, and a run of few long shards looks steppy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

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
    times, counts = _arrays(commits)
    times, counts, start = _plausible(times, counts, starts, now)
    return list(zip(times.tolist(), counts.tolist())), start


def build_timeline(commits: list[tuple[float, float]], start: float | None, end: float) -> dict[str, Any]:
    """{"start", "bin_s", "tokens": [...], "shards": [...]}: tokens and shards committed in each bin,
    from (committed time, completion tokens) pairs; `start` is the run's first worker start if known."""
    return _bins(*_arrays(commits), start, end)


def commit_timeline(times: np.ndarray, counts: np.ndarray, starts: list[float], now: float,
                    end: float) -> dict[str, Any]:
    """build_timeline(plausible_times(...)) over arrays: status's done table at 10^5 shards in a few ms."""
    times, counts, start = _plausible(times, counts, starts, now)
    return _bins(times, counts, start, end)


def _arrays(commits: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([t for t, _ in commits], dtype=np.float64),
            np.array([n for _, n in commits], dtype=np.float64))


def _plausible(times: np.ndarray, counts: np.ndarray, starts: list[float],
               now: float) -> tuple[np.ndarray, np.ndarray, float | None]:
    real = [t for t in starts if EARLIEST <= t <= now]
    keep = (times > 0) & np.isfinite(times)  # NaN and inf fail both
    times, counts = times[keep], counts[keep]
    inside = times[(times >= EARLIEST) & (times <= now)]
    earliest = min(real + ([float(inside.min())] if inside.size else []), default=now)
    return np.minimum(np.maximum(times, earliest), now), counts, min(real, default=None)


def _bins(times: np.ndarray, counts: np.ndarray, start: float | None, end: float) -> dict[str, Any]:
    if not times.size:
        return {"start": start, "bin_s": 0.0, "tokens": [], "shards": []}
    first = float(times.min())
    start = first if start is None else min(start, first)
    end = max(end, float(times.max()))
    bins = TIMELINE_BINS
    width = max((end - start) / bins, 1e-3)
    index = np.minimum(((times - start) / width).astype(np.int64), bins - 1)
    tokens = np.bincount(index, weights=counts, minlength=bins)
    shards = np.bincount(index, minlength=bins)
    return {"start": round(start, 3), "bin_s": round(width, 3), "tokens": [float(t) for t in tokens.tolist()],
            "shards": [int(n) for n in shards.tolist()]}


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
