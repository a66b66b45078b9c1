"""What `hpcsynth repair` has done and cost so far, read from RUN/repair/ by the run directory's paths.

Status, `estimate RUN`, `validate` and the repair report read it; it never imports the repair stage (which
stands above status). Each sub-run (RUN/repair/attempt-K/PROMPT/) is an ordinary run: its progress is its
done markers against its manifest, its cost its workers' task clocks (RUN/repair/*/*/tasks/*.json: GPU-seconds
are wall time x GPUs held, CPU-seconds the wall time of workers that held none) and the tokens of its done
markers. The main run's clocks give the same figures for it, so the two compare.
"""

from __future__ import annotations

import os
from typing import Any

import orjson

from hpcsynth.errors import HpcsynthError
from hpcsynth.files import read_json, read_regular
from hpcsynth.rundir import RunDir

MAX_CLOCK_BYTES = 1 << 20  # a task clock is a few hundred bytes: anything larger was not written by a worker


def run_cost(run: RunDir) -> dict[str, float]:
    """GPU- and CPU-seconds of a run's workers, their generation seconds, and the done shards' records and tokens."""
    gpu = cpu = generation = 0.0
    for clock in _clocks(run):
        wall, gpus = _number(clock.get("wall_s")), _number(clock.get("gpus"))
        generation += _number(clock.get("generation_s")) * max(gpus, 1.0)
        if gpus > 0:
            gpu += wall * gpus
        else:
            cpu += wall
    records = tokens = prompt_tokens = 0.0
    for shard in run.done_ids():
        marker = run.done_marker(shard) or {}
        records += _number(marker.get("records"))
        tokens += _number(marker.get("completion_tokens"))
        prompt_tokens += _number(marker.get("prompt_tokens"))
    return {"gpu_seconds": round(gpu, 3), "cpu_seconds": round(cpu, 3), "generation_seconds": round(generation, 3),
            "records": int(records), "completion_tokens": int(tokens), "prompt_tokens": int(prompt_tokens)}


def repair_progress(run: RunDir) -> list[dict[str, Any]]:
    """Per repair sub-run, by attempt then prompt: its shards (done of planned), records planned and its cost."""
    rows = []
    for attempt, prompt, sub in run.repair_runs():
        try:
            header = read_json(sub.manifest_path)
            digest = sub.fingerprint()
            shards = int(header["rows"]["count"])
        except (OSError, ValueError, KeyError, TypeError, HpcsynthError):  # being planned: the next read
            continue
        done = sum(1 for shard in sub.done_ids() if shard < shards and sub.is_done(shard, digest))
        planned = header.get("repair", {}).get("records", header.get("documents", 0))
        rows.append({"attempt": attempt, "prompt": prompt, "shards": shards, "shards_done": done,
                     "records_planned": planned, "failed": len(sub.failed_ids()), **run_cost(sub)})
    return rows


def repair_totals(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The sub-runs' cost summed (what `status` and `estimate RUN` show apart from the main run's)."""
    keys = ("gpu_seconds", "cpu_seconds", "generation_seconds", "records", "completion_tokens", "prompt_tokens")
    return {key: round(sum(row[key] for row in rows), 3) for key in keys}


def repair_report(run: RunDir) -> dict[str, Any] | None:
    """RUN/repair/report.json as the last `hpcsynth repair` wrote it, None without one."""
    try:
        data = read_json(run.repair_report_path)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _clocks(run: RunDir) -> list[dict]:
    try:
        entries = list(os.scandir(run.tasks_dir))
    except FileNotFoundError:
        return []
    clocks = []
    for entry in entries:
        if entry.name.startswith(".") or not entry.name.endswith(".json"):
            continue
        try:
            data = orjson.loads(read_regular(entry.path, MAX_CLOCK_BYTES))
        except (ValueError, OSError):
            continue  # caught mid-write: counted at the next read
        if isinstance(data, dict):
            clocks.append(data)
    return clocks


def _number(value: object) -> float:
    """A count or seconds from a run's file; 0 for anything else, a negative or a forged huge one."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 2 ** 53:
        return float(value)
    return 0.0


__all__ = ["repair_progress", "repair_report", "repair_totals", "run_cost"]
