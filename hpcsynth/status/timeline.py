"""A run's progress over time, from the done markers it already has: no extra file, no extra reads.

Every done marker carries `committed` (when its shard was committed) and the shard's completion tokens,
so the history of committed work is on disk for as long as the markers are. Status bins it into at most
TIMELINE_BINS equal spans (bounded output at any number of shards) for `status --json`, `--watch`'s
sparklines and `status --plot`. A shard counts when it commits: the tokens of a shard still generating
are not in any bin yet, and a run of few long shards looks steppy.

The engine's telemetry (KV-cache use, prefix-cache hits, speculative acceptance, queue, preemptions) comes
from the workers' task files, which status reads anyway: `run_telemetry` gives the run's numbers now and
bins the readings each file keeps of its recent past (status --json: timeline.telemetry).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hpcsynth.generate.engines.telemetry import (COUNTERS, GAUGES, HISTORY_FIELDS, clean_history, history_rows,
                                                 telemetry_of, with_rates)

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


# --- engine telemetry over the run (RUN/tasks/NAME.json's "telemetry"; generate/engines/telemetry.py)

def run_telemetry(tasks: list[tuple[dict, bool]], now: float) -> dict[str, Any] | None:
    """The run's engine telemetry from its workers' task files, (file, live) pairs; None when no worker
    reports any. Gauges (KV-cache use, running, waiting) are the live workers' now: KV use averaged (and
    its maximum: the worker nearest to preempting), requests added up; counters and the rates they give
    are every worker's, added up. Workers that read one server (endpoint) count it once. "history" bins
    their recent readings (each file keeps its last HISTORY_SAMPLES) like the timeline's bins."""
    workers: list[tuple[dict[str, Any], bool, np.ndarray]] = []
    servers: dict[str, tuple[dict[str, Any], bool, np.ndarray]] = {}
    for data, is_live in tasks:
        raw = data.get("telemetry")
        latest = telemetry_of(raw)
        if latest is None:
            continue
        entry = (latest, is_live, history_rows(raw))
        server = latest.get("server")
        if not server:
            workers.append(entry)
            continue
        # Every worker on one server reads the same numbers: keep the latest reading, the longest count.
        kept = servers.get(server)
        if kept is None:
            servers[server] = entry
            continue
        newest = max((kept, entry), key=lambda e: e[0].get("read_at") or 0.0)
        longest = max((kept, entry), key=lambda e: sum(e[0].get(k, 0) for k in COUNTERS))
        merged = {**{k: v for k, v in newest[0].items() if k not in COUNTERS},
                  **{k: v for k, v in longest[0].items() if k in COUNTERS}}
        servers[server] = (merged, kept[1] or entry[1], newest[2])
    workers += servers.values()
    if not workers:
        return None
    live = [latest for latest, is_live, _ in workers if is_live]
    # engines: each worker's own, a server once; live: those of live workers.
    out: dict[str, Any] = {"engines": len(workers), "live": len(live),
                           "sources": sorted({str(w.get("source")) for w, _, _ in workers if w.get("source")})}
    kv = [w["kv_cache_usage"] for w in live if "kv_cache_usage" in w]
    if kv:
        out["kv_cache_usage"] = round(sum(kv) / len(kv), 4)
        out["kv_cache_usage_max"] = round(max(kv), 4)
    for key in GAUGES[1:]:
        if any(key in w for w in live):
            out[key] = sum(w.get(key, 0) for w in live)
    for key in COUNTERS:
        if any(key in w for w, _, _ in workers):
            out[key] = sum(w.get(key, 0) for w, _, _ in workers)
    out = with_rates(out)
    out["history"] = _telemetry_bins([rows for _, _, rows in workers], now)
    return out


def _telemetry_bins(histories: list[np.ndarray], now: float) -> dict[str, Any]:
    """The workers' readings (history_rows, one array a worker) in at most TIMELINE_BINS spans of their
    recent past: per span, KV-cache use averaged over workers, running and waiting added up (each
    worker's mean in the span), preemptions and the two rates from what the counters gained in it (a
    counter that falls started again from zero). A reading dated outside what a clock could have written
    is dropped."""
    # All workers' rows in one array (a thousand workers' in a few dozen numpy calls, not per worker).
    rows = np.concatenate(histories) if histories else np.empty((0, len(HISTORY_FIELDS)))
    rows, worker = clean_history(rows, np.repeat(np.arange(len(histories)), [len(h) for h in histories]))
    plausible = (rows[:, 0] >= EARLIEST) & (rows[:, 0] <= now + 60)
    rows, worker = rows[plausible], worker[plausible]
    if not len(rows):
        return {"start": None, "bin_s": 0.0}
    start, end = float(rows[:, 0].min()), float(rows[:, 0].max())
    bins = TIMELINE_BINS if end > start else 1
    width = max((end - start) / bins, 1e-3)
    index = np.minimum(((rows[:, 0] - start) / width).astype(np.int64), bins - 1)
    cell = worker * bins + index  # (worker, bin)
    cells = len(histories) * bins
    gauge_sum, gauge_workers = {}, {}
    for key in GAUGES:
        values = rows[:, HISTORY_FIELDS.index(key)]
        seen = ~np.isnan(values)
        counts = np.bincount(cell[seen], minlength=cells).reshape(-1, bins)
        sums = np.bincount(cell[seen], weights=values[seen], minlength=cells).reshape(-1, bins)
        gauge_sum[key] = (sums / np.maximum(counts, 1)).sum(axis=0)  # each worker's mean in a bin, added
        gauge_workers[key] = (counts > 0).sum(axis=0)
    gained = {}
    for key in COUNTERS:
        values = rows[:, HISTORY_FIELDS.index(key)]
        seen = np.flatnonzero(~np.isnan(values))
        same = worker[seen[1:]] == worker[seen[:-1]]  # consecutive readings of one worker
        before, after = values[seen[:-1]][same], values[seen[1:]][same]
        added = np.where(after >= before, after - before, after)  # a counter that fell started again
        gained[key] = np.bincount(index[seen[1:]][same], weights=added, minlength=bins)
    out: dict[str, Any] = {"start": round(start, 3), "bin_s": round(width, 3)}
    shown = gauge_workers["kv_cache_usage"]
    out["kv_cache_usage"] = _listed(np.round(gauge_sum["kv_cache_usage"] / np.maximum(shown, 1), 4), shown > 0)
    for key in ("requests_running", "requests_waiting"):
        out[key] = _listed(np.round(gauge_sum[key], 2), gauge_workers[key] > 0)
    out["preemptions"] = [float(v) for v in gained["preemptions"]]
    for rate, part, whole in (("prefix_cache_hit_rate", "prefix_cache_hits", "prefix_cache_queries"),
                              ("spec_acceptance_rate", "spec_accepted_tokens", "spec_draft_tokens")):
        out[rate] = _listed(np.round(gained[part] / np.maximum(gained[whole], 1e-12), 4), gained[whole] > 0)
    return out


def _listed(values: np.ndarray, shown: np.ndarray) -> list[float | None]:
    """A bin's value, or None where no worker said anything in it."""
    return [float(v) if s else None for v, s in zip(values.tolist(), shown.tolist())]
