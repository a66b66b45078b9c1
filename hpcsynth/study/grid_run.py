"""Launching a grid and reading its progress: every generator's sub-run through the single-run code.

launch: each generator's run is launched as a plain run is (hpcsynth/execute/launch.py), so exactly-once,
resume, --retry-failed, --verify and failure messages hold per generator. Local: one generator after the
other (its workers claim its shards, one engine start each); Slurm: one array per generator, submitted
together, each task one engine start. status: each generator's status as `hpcsynth status` collects it,
and a table generator x prompt from the done markers' per-prompt counts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcsynth.errors import HpcsynthError
from hpcsynth.files import read_json
from hpcsynth.rundir import RunDir
from hpcsynth.status.runstatus import RunStatus
from hpcsynth.study.grid import grid_generator_runs, require_generator_run


@dataclass(frozen=True)
class GeneratorLaunch:
    name: str
    run: RunDir
    report: Any = None  # the generator's LaunchReport
    error: str = ""  # why its launch stopped (an engine that did not start, a run that needs fixing)


def launch_grid(run: RunDir, grid: dict[str, Any], executor: str = "local", retry_failed: bool = False,
                workers: int = 1, force: bool = False, profile: Path | None = None,
                verify: str = "sha256", add_workers: bool = False) -> list[GeneratorLaunch]:
    """Launch every generator's run; one that cannot start is reported and the others still run."""
    from hpcsynth.execute.launch import launch_run

    results = []
    for name, sub in grid_generator_runs(run, grid):
        logger = logging.getLogger("hpcsynth")
        before = list(logger.handlers)
        try:
            require_generator_run(run, name)
            report = launch_run(sub, executor, retry_failed=retry_failed, workers=workers, force=force,
                                profile=profile, verify=verify, add_workers=add_workers)
            results.append(GeneratorLaunch(name, sub, report))
        except HpcsynthError as exc:
            results.append(GeneratorLaunch(name, sub, error=str(exc)))
        finally:
            # An in-process worker logs to its run's logs/; the next generator's worker gets its own file.
            for handler in [h for h in logger.handlers if h not in before]:
                logger.removeHandler(handler)
                handler.close()
    return results


def collect_grid_status(run: RunDir, grid: dict[str, Any], slurm: bool = True) -> dict[str, Any]:
    """Per generator: its status (as `hpcsynth status` sees it); per cell: done shards, records, tokens."""
    from hpcsynth.status.collect import collect_status

    generators: dict[str, RunStatus] = {}
    cells: list[dict[str, Any]] = []
    for name, sub in grid_generator_runs(run, grid):
        require_generator_run(run, name)
        status = collect_status(sub, slurm=slurm)
        generators[name] = status
        per_prompt = _done_by_prompt(sub, status.fingerprint)
        for prompt in grid["prompts"]:
            counts = per_prompt.get(prompt, {})
            cells.append({"generator": name, "prompt": prompt, "shards_done": status.shards.done,
                          "shards_total": status.shards.total, "records": counts.get("records", 0),
                          "rejected": counts.get("rejected", 0), "tokens": counts.get("completion_tokens", 0),
                          "state": _state(status)})
    return {"run": str(run.root), "grid": True, "prompts": grid["prompts"],
            "mixins": [m["name"] for m in grid["mixins"]], "cells": cells, "generators": generators}


def _done_by_prompt(sub: RunDir, digest: str) -> dict[str, dict[str, int]]:
    """Sum of the done markers' per-prompt counts (markers of this fingerprint only)."""
    totals: dict[str, dict[str, int]] = {}
    done = sub.done_dir
    for path in sorted(done.glob("*.json")) if done.is_dir() else []:
        try:
            marker = read_json(path)
        except (OSError, ValueError):
            continue
        if not isinstance(marker, dict) or marker.get("fingerprint") != digest:
            continue
        for prompt, counts in (marker.get("by_prompt") or {}).items():
            into = totals.setdefault(str(prompt), {})
            for key in ("records", "rejected", "completion_tokens"):
                value = counts.get(key, 0) if isinstance(counts, dict) else 0
                into[key] = into.get(key, 0) + (value if isinstance(value, int) else 0)
    return totals


def _state(status: RunStatus) -> str:
    shards = status.shards
    if shards.done == shards.total:
        return "done"
    parts = [f"{shards.of(k)} {k}" for k in ("running", "requeued", "stale", "failed", "pending") if shards.of(k)]
    return ", ".join(parts)


def render_grid_status(status: dict[str, Any], console=None) -> None:
    from rich.console import Console

    console = console or Console()
    for part in grid_renderables(status):
        console.print(part)


def watch_grid_status(run: RunDir, grid: dict[str, Any], interval: float, console=None) -> dict[str, Any]:
    """Refresh the table in place until every generator's run is finished (as `status --watch` judges)."""
    import time

    from rich.console import Console, Group
    from rich.live import Live

    console = console or Console()
    status = collect_grid_status(run, grid)
    with Live(Group(*grid_renderables(status)), console=console, auto_refresh=False) as live:
        try:
            while not grid_finished(status):
                time.sleep(interval)
                status = collect_grid_status(run, grid)
                live.update(Group(*grid_renderables(status)), refresh=True)
        except KeyboardInterrupt:
            pass
    return status


def grid_renderables(status: dict[str, Any]) -> list:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"grid {status['run']}: {len(status['generators'])} generators x "
                        f"{len(status['prompts'])} prompts (mix-ins at reduce: {', '.join(status['mixins'])})")
    right = ("shards done", "records", "tokens")
    for column in ("generator", "prompt", "shards done", "records", "tokens", "state"):
        table.add_column(column, justify="right" if column in right else "left")
    for cell in status["cells"]:
        table.add_row(cell["generator"], cell["prompt"], f"{cell['shards_done']}/{cell['shards_total']}",
                      f"{cell['records']:,}" + (f" (+{cell['rejected']:,} refused)" if cell["rejected"] else ""),
                      f"{cell['tokens']:,}", cell["state"])
    lines = []
    for name, gen in status["generators"].items():
        eta = f", ETA {gen.eta_s / 60:.0f} min" if gen.eta_s else ""
        line = f"{name}: {gen.tokens_per_s:,.0f} tok/s{eta}, {gen.live_workers} live worker(s)"
        for failure in gen.failed_shards[:3]:
            line += f"\n  shard {failure.shard:06d} failed: {failure.reason} (log {failure.log or '-'})"
        lines.append(line)
    if all(c["state"] == "done" for c in status["cells"]):
        lines.append(f"every cell is done; next: hpcsynth reduce {status['run']}")
    elif any(g.shards.failed for g in status["generators"].values()):
        lines.append(f"rerun failed shards with: hpcsynth launch {status['run']} --retry-failed")
    return [table, *(Text(line) for line in lines)]


def grid_finished(status: dict[str, Any]) -> bool:
    """Every generator's run is finished as `status --watch` judges a plain run."""
    from hpcsynth.status.view import finished

    return all(finished(gen) for gen in status["generators"].values())
