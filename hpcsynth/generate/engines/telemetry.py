"""Engine telemetry: what decides throughput, as the engine itself reports it.

A *reading* is a flat dict of the names below, each present only where the engine reports it:
  kv_cache_usage            share of the KV cache in use now, 0..1 (vLLM: vllm:kv_cache_usage_perc)
  requests_running          requests in the running batch now (vllm:num_requests_running)
  requests_waiting          requests queued inside the engine now (vllm:num_requests_waiting)
  preemptions               requests preempted so far (vllm:num_preemptions)
  prefix_cache_queries      prompt tokens looked up in the prefix cache (vllm:prefix_cache_queries)
  prefix_cache_hits         of those, tokens found cached (vllm:prefix_cache_hits)
  spec_drafts               speculative drafts proposed (vllm:spec_decode_num_drafts)
  spec_draft_tokens         tokens drafted (vllm:spec_decode_num_draft_tokens)
  spec_accepted_tokens      drafted tokens accepted (vllm:spec_decode_num_accepted_tokens)
The first three are gauges (a value now); the rest are counters that only grow while the engine lives.

Engines produce readings (`engine.telemetry()`): vllm from `LLM.get_metrics()` (its Prometheus registry,
in the worker's own process), endpoint from the server's `/metrics` (Prometheus text), fake from what it
generated. The worker's clock (generate/clock.py) folds them with a TelemetryLog into RUN/tasks/NAME.json
(latest gauges, this worker's cumulative counters, the rates they give, the last HISTORY_SAMPLES
readings); status reads them back through `telemetry_of` and `history_of`, which keep finite numbers in
range only: a damaged or forged task file's values count as absent.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from typing import Any

import numpy as np

from hpcsynth.redact import redact

GAUGES = ("kv_cache_usage", "requests_running", "requests_waiting")
COUNTERS = ("preemptions", "prefix_cache_queries", "prefix_cache_hits", "spec_drafts", "spec_draft_tokens",
            "spec_accepted_tokens")
# vLLM's metric names (v1 engine, 0.32; the same on `vllm serve`'s /metrics, where counters end in _total).
VLLM_NAMES = {
    "vllm:kv_cache_usage_perc": "kv_cache_usage",
    "vllm:num_requests_running": "requests_running",
    "vllm:num_requests_waiting": "requests_waiting",
    "vllm:num_preemptions": "preemptions",
    "vllm:prefix_cache_queries": "prefix_cache_queries",
    "vllm:prefix_cache_hits": "prefix_cache_hits",
    "vllm:spec_decode_num_drafts": "spec_drafts",
    "vllm:spec_decode_num_draft_tokens": "spec_draft_tokens",
    "vllm:spec_decode_num_accepted_tokens": "spec_accepted_tokens",
}
# Older servers' spellings, read only where the current name is absent (a server of the transition
# reports both, and adding them up would count every hit twice).
VLLM_OLD_NAMES = {
    "vllm:gpu_cache_usage_perc": "kv_cache_usage",
    "vllm:gpu_prefix_cache_queries": "prefix_cache_queries",
    "vllm:gpu_prefix_cache_hits": "prefix_cache_hits",
}
# Readings a worker keeps in its task file: 60 at the default 10-s heartbeat is its last ten minutes,
# ~6 KB a worker (status reads every worker's file each refresh).
HISTORY_SAMPLES = 60
HISTORY_FIELDS = ("t", *GAUGES, *COUNTERS)
# Past 2**53 a float no longer counts by ones: no real counter gets near it.
MAX_COUNT = float(2 ** 53)
SOURCES = ("vllm", "endpoint", "fake")


def reading_from_samples(samples: Iterable[tuple[str, float]]) -> dict[str, float]:
    """(metric name, value) pairs -> one reading. A metric reported under several label sets (vLLM's
    engines of one data-parallel group) is added up, but KV-cache use, which is averaged."""
    found: dict[str, list[float]] = {}
    old: dict[str, list[float]] = {}
    for name, value in samples:
        ours = VLLM_NAMES.get(name)
        into = found
        if ours is None:
            ours, into = VLLM_OLD_NAMES.get(name), old
        if ours is None or not _finite(value):
            continue
        into.setdefault(ours, []).append(float(value))
    for key, values in old.items():
        found.setdefault(key, values)
    return {key: (sum(values) / len(values) if key == "kv_cache_usage" else sum(values))
            for key, values in found.items()}


def from_vllm_metrics(metrics: Iterable[Any]) -> dict[str, float]:
    """A reading from `vllm.LLM.get_metrics()`: its Counter and Gauge objects (name, labels, value);
    histograms and vectors carry no `value` and are passed over."""
    return reading_from_samples((m.name, m.value) for m in metrics
                                if isinstance(getattr(m, "name", None), str) and _finite(getattr(m, "value", None)))


def parse_prometheus(text: str) -> dict[str, float]:
    """A reading from a server's /metrics (Prometheus text format): `name{labels} value [time]` lines;
    a counter's sample is NAME_total (its NAME_created line is not a count). Lines of other metrics are
    skipped on their first characters, so a server's long histograms cost little."""
    wanted = (*VLLM_NAMES, *VLLM_OLD_NAMES)

    def samples() -> Iterable[tuple[str, float]]:
        for line in text.splitlines():
            if not line.startswith("vllm:"):
                continue
            name, rest = _split_sample(line)
            if name.endswith("_total") and name[:-6] in wanted:
                name = name[:-6]
            elif name not in wanted:
                continue
            fields = rest.split()
            if not fields:
                continue
            try:
                value = float(fields[0])
            except ValueError:
                continue
            yield name, value

    return reading_from_samples(samples())


def _split_sample(line: str) -> tuple[str, str]:
    """(metric name, what follows its labels) of one sample line; label values are quoted strings that
    may hold braces, spaces and escaped quotes (a model path as model_name)."""
    brace = line.find("{")
    space = line.find(" ")
    if brace < 0 or (0 <= space < brace):
        return (line, "") if space < 0 else (line[:space], line[space:])
    quoted = escaped = False
    for i in range(brace + 1, len(line)):
        char = line[i]
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = quoted
        elif char == '"':
            quoted = not quoted
        elif char == "}" and not quoted:
            return line[:brace], line[i + 1:]
    return line[:brace], ""  # unterminated labels: no value


def with_rates(values: dict[str, Any]) -> dict[str, Any]:
    """values plus the rates its counters give: prefix-cache hits per query, accepted per drafted token."""
    out = dict(values)
    for rate, part, whole in (("prefix_cache_hit_rate", "prefix_cache_hits", "prefix_cache_queries"),
                              ("spec_acceptance_rate", "spec_accepted_tokens", "spec_draft_tokens")):
        if isinstance(out.get(part), (int, float)) and isinstance(out.get(whole), (int, float)) and out[whole] > 0:
            out[rate] = round(out[part] / out[whole], 4)
    return out


class TelemetryLog:
    """A worker's telemetry as its task file holds it, folded from the engine's readings.

    Gauges are the latest reading's. Counters are this worker's own: the sum of what each reading added.
    scope "engine" (vllm, fake): the engine's counters start at zero with it, so a first reading counts
    whole. scope "server" (endpoint): the counters are a server's, since it started and shared with
    whoever else sends to it, so a first reading is only the baseline; a counter that falls (the server
    restarted) counts again from zero.
    """

    def __init__(self, source: str, scope: str = "engine", server: str = "", every_s: float = 0.0) -> None:
        self.source, self.scope, self.server, self.every_s = source, scope, server, every_s
        self.raw: dict[str, float] = {}
        self.totals: dict[str, float] = {}
        self.gauges: dict[str, float] = {}
        self.read_at: float | None = None
        self.samples: deque[list[float | None]] = deque(maxlen=HISTORY_SAMPLES)

    def add(self, reading: dict[str, Any] | None, now: float) -> bool:
        """Fold one reading in; False (nothing changes) for none, or one without a number we know."""
        if not isinstance(reading, dict):
            return False
        values = {k: float(reading[k]) for k in (*GAUGES, *COUNTERS) if _finite(reading.get(k)) and reading[k] >= 0}
        if not values:
            return False
        for key in COUNTERS:
            if key not in values:
                continue
            value, last = values[key], self.raw.get(key)
            if last is None:
                added = value if self.scope == "engine" else 0.0
            else:
                added = value - last if value >= last else value
            self.raw[key] = value
            self.totals[key] = self.totals.get(key, 0.0) + added
        self.gauges = {k: values[k] for k in GAUGES if k in values}
        self.read_at = now
        self.samples.append([round(now, 1), *(self._number(k) for k in HISTORY_FIELDS[1:])])
        return True

    def _number(self, key: str) -> float | None:
        value = self.gauges.get(key, self.totals.get(key))
        if value is None:
            return None
        return round(value, 4) if key == "kv_cache_usage" else round(value, 2)

    def to_json(self) -> dict[str, Any] | None:
        """The task file's "telemetry" object; None before the first reading (the key is left out)."""
        if self.read_at is None:
            return None
        out: dict[str, Any] = {"source": self.source}
        if self.server:
            out["server"] = self.server
        out["read_at"] = round(self.read_at, 3)
        out.update({k: self._number(k) for k in GAUGES if k in self.gauges})
        out.update({k: self._number(k) for k in COUNTERS if k in self.totals})
        out = with_rates(out)
        out["history"] = {"every_s": self.every_s, "fields": list(HISTORY_FIELDS), "samples": list(self.samples)}
        return out


def shard_window(before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, Any] | None:
    """What the engine reported while one shard was open, for its done marker: the counters gained between
    the clock's readings at its opening and at its commit (shared with any shard open beside it, and to the
    clock's tick), the gauges at its commit, and the rates they give. None when the engine reports nothing."""
    if not after:
        return None
    before = before or {}
    out: dict[str, Any] = {}
    for key in COUNTERS:
        if key in after:
            gained = after[key] - before.get(key, 0.0)
            out[key] = round(gained if gained >= 0 else after[key], 2)
    out.update({k: round(after[k], 4) for k in GAUGES if k in after})
    return with_rates(out)


# --- reading a task file's telemetry back (status)

def telemetry_of(data: object) -> dict[str, Any] | None:
    """A task file's "telemetry" object as status shows it: source, when it was read, gauges, counters
    and the rates recomputed from them; None when there is none. Values that are not finite numbers in
    range (a share past 1, a negative or huge count, hits beyond queries, accepted beyond drafted) are
    left out, never trusted."""
    if not isinstance(data, dict):
        return None
    out: dict[str, Any] = {}
    source = data.get("source")
    out["source"] = source if source in SOURCES else ""
    server = data.get("server")
    if isinstance(server, str) and server and len(server) <= 500:
        out["server"] = redact(server)
    read_at = data.get("read_at")
    out["read_at"] = float(read_at) if _finite(read_at) and float(read_at) > 0 else None  # type: ignore[arg-type]
    for key in (*GAUGES, *COUNTERS):
        if _in_range(key, data.get(key)):
            out[key] = data[key]
    _drop_impossible(out)
    if not any(k in out for k in (*GAUGES, *COUNTERS)):
        return None
    return with_rates(out)


def history_of(data: object) -> np.ndarray:
    """A task file's telemetry history: one row per sample, oldest first, one column per HISTORY_FIELDS
    (NaN where absent). A sample that is not a list of the fields' length is dropped, so is one without
    its time or any value; a value that is not a finite number in range is absent; at most
    HISTORY_SAMPLES rows are read."""
    rows, _ = clean_history(history_rows(data))
    return rows


def history_rows(data: object) -> np.ndarray:
    """A task file's history samples as read, one column per HISTORY_FIELDS, NaN for anything not a
    number; not yet checked (clean_history: once over every worker's rows, for status's thousand files)."""
    empty = np.empty((0, len(HISTORY_FIELDS)))
    if not isinstance(data, dict) or not isinstance(data.get("history"), dict):
        return empty
    history = data["history"]
    fields, samples = history.get("fields"), history.get("samples")
    if not isinstance(fields, list) or not isinstance(samples, list) or "t" not in fields:
        return empty
    rows = [s for s in samples[-HISTORY_SAMPLES:] if isinstance(s, list) and len(s) == len(fields)]
    if not rows:
        return empty
    try:
        if not {type(v) for row in rows for v in row} <= {int, float, type(None)}:  # what the clock writes
            raise TypeError("not only numbers")  # a bool, a string ("1.5" would convert), a list
        values = np.array(rows, dtype=np.float64)  # None -> NaN
    except (TypeError, OverflowError):  # only the finite numbers count
        values = np.array([[float(v) if _finite(v) else np.nan for v in row] for row in rows], dtype=np.float64)
    if fields == list(HISTORY_FIELDS):  # as the clock writes it
        return values
    out = np.full((len(rows), len(HISTORY_FIELDS)), np.nan)
    for column, field in enumerate(fields):
        if field in HISTORY_FIELDS:
            out[:, HISTORY_FIELDS.index(field)] = values[:, column]
    return out


def clean_history(rows: np.ndarray, worker: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(rows, worker) with every value out of range made NaN (as telemetry_of leaves it out), rows without
    a time or any value dropped, sorted by worker and then time; `worker` numbers each row's worker."""
    rows = rows.copy()
    worker = np.zeros(len(rows), dtype=np.int64) if worker is None else worker
    with np.errstate(invalid="ignore"):
        rows[~((rows >= 0) & (rows <= MAX_COUNT))] = np.nan  # also NaN and inf
        kv = rows[:, HISTORY_FIELDS.index("kv_cache_usage")]
        kv[kv > 1] = np.nan
        for part, whole in (("prefix_cache_hits", "prefix_cache_queries"),
                            ("spec_accepted_tokens", "spec_draft_tokens")):
            bad = rows[:, HISTORY_FIELDS.index(part)] > rows[:, HISTORY_FIELDS.index(whole)]
            rows[bad, HISTORY_FIELDS.index(part)] = rows[bad, HISTORY_FIELDS.index(whole)] = np.nan
    keep = ~np.isnan(rows[:, 0]) & ~np.isnan(rows[:, 1:]).all(axis=1)
    rows, worker = rows[keep], worker[keep]
    order = np.lexsort((rows[:, 0], worker))
    return rows[order], worker[order]


def _drop_impossible(values: dict[str, Any]) -> None:
    for part, whole in (("prefix_cache_hits", "prefix_cache_queries"), ("spec_accepted_tokens", "spec_draft_tokens")):
        if part in values and whole in values and values[part] > values[whole]:
            del values[part], values[whole]


def _in_range(key: str, value: object) -> bool:
    if not _finite(value):
        return False
    number = float(value)  # type: ignore[arg-type]
    if key == "kv_cache_usage":
        return 0.0 <= number <= 1.0
    return 0.0 <= number <= MAX_COUNT


def _finite(value: object) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int past any float
        return False
