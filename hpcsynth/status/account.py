"""What a run did cost, during or after it: GPU-hours, $ per million tokens, and where time was wasted.

Every figure is labelled by how it is known:
  measured  Slurm accounting (one sacct call, through status), or the workers' own clocks (RUN/tasks/),
            or the committed done markers;
  inferred  computed from measured figures under a stated assumption (tokens turned into hours at the
            run's measured rate).
The engine gives no count for a generation cut off by a kill (in flight, never finished), so that part
of redone work is not in any figure; a worker's clock is written every few seconds, so a killed
worker's last seconds are missing too (both make "redone" an under-estimate).
"""

from __future__ import annotations

from typing import Any

from hpcsynth.rundir import RunDir
from hpcsynth.status.collect import Collected, collect_run
from hpcsynth.status.collect import count_number as _number  # a forged 1e308 or a negative count is 0


def account_run(run: RunDir, price: float = 0.0, collected: Collected | None = None) -> dict[str, Any]:
    """The account of a run so far; `collected` (collect_run's: status with its one sacct call, and the done
    table it read) is reused if given, so `estimate RUN` reads the run once."""
    collected = collected if collected is not None else collect_run(run)
    status = collected.status
    tasks = status.tasks
    gpu = bool(status.gpu_hours) or any(_number(t.get("gpus")) > 0 for t in tasks)
    unit = "GPU" if gpu else "CPU worker"
    sacct = bool(status.slurm.sacct_calls)
    weight = _weights(run, tasks, gpu, sacct)

    def task_hours(key: str, which=lambda t: True) -> float:
        return sum(_number(t.get(key)) * weight[id(t)] for t in tasks if which(t)) / 3600

    failed_start = lambda t: t.get("state") == "failed"  # noqa: E731 - the engine never came up
    startup = task_hours("startup_s", lambda t: not failed_start(t)) + task_hours("wall_s", failed_start)
    idle = task_hours("idle_s", lambda t: not failed_start(t))
    generation = task_hours("generation_s")
    in_workers = task_hours("wall_s")
    # Slurm's bill when there is one; else the workers' own wall time, unrounded (a short run is seconds).
    hours = (status.gpu_hours if gpu else status.cpu_worker_hours) if sacct else in_workers
    generated = sum(_number(t.get("tokens")) for t in tasks)
    rate = generated / (generation * 3600) if generation > 0 else 0.0
    committed, failed_tokens = _tokens_on_disk(run, collected)
    redone_tokens = max(0.0, generated - status.tokens_done)
    redone = redone_tokens / rate / 3600 if rate else 0.0
    failed = failed_tokens / rate / 3600 if rate else 0.0
    cost = hours * price
    how_total = ("measured: Slurm accounting (elapsed x GPUs asked, every attempt)" if sacct
                 else "measured: the workers' clocks (RUN/tasks/, wall time x GPUs)")
    clocks = "measured: the workers' clocks (RUN/tasks/)"
    return {
        "unit": unit, "price_per_hour": price,
        "hours": _fig(hours, how_total),
        "generation": _fig(generation, clocks),
        "useful": _fig(max(0.0, generation - redone - failed), "inferred: generation less redone and failed"),
        "wasted": {
            "startup": _fig(startup, clocks + "; a worker whose engine never started counts whole"),
            "idle": _fig(idle, clocks + " (neither starting nor generating: waiting for shards, committing)"),
            "outside_worker": _fig(max(0.0, hours - in_workers) if sacct else 0.0,
                                   "measured: Slurm time minus the workers' wall time (setup lines, Python "
                                   "start-up, time a task ran with no worker clock)" if sacct
                                   else "not measured without Slurm accounting"),
            "redone": _fig(redone, f"inferred: {redone_tokens:,.0f} tokens generated but in no output or "
                                   f"progress log (lost to a kill, a lost lease, a config change), at the run's rate"),
            "failed_shards": _fig(failed, f"inferred: {failed_tokens:,.0f} tokens in the logs of failed shards, "
                                          f"at the run's rate; launch --retry-failed resumes them"),
        },
        "tokens_generated": generated, "tokens_committed": committed,
        "tokens_per_s_generating": round(rate, 2),  # per GPU (per worker on CPU) while generating
        # Committed tokens per hour of the whole bill: what the campaign really delivered.
        "tokens_per_s_effective": round(committed / (hours * 3600), 2) if hours else 0.0,
        "cost": cost,
        "cost_per_million_tokens": cost / (committed / 1e6) if committed else None,
    }


def combine_accounts(accounts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One account over several runs (a grid's generators): hours, tokens and cost add up, rates are
    recomputed from the sums; each run's own account stays under "by_run"."""
    parts = list(accounts.values())
    if len(parts) == 1:
        return {**parts[0], "by_run": accounts}
    units = {a["unit"] for a in parts}

    def added(key: str, *path: str) -> dict[str, Any]:
        figs = [a[key] if not path else a[key][path[0]] for a in parts]
        return _fig(sum(f["hours"] for f in figs), figs[0]["how"].split(":")[0] + ": the sum over the runs")

    hours = sum(a["hours"]["hours"] for a in parts)
    generation = sum(a["generation"]["hours"] for a in parts)
    generated = sum(a["tokens_generated"] for a in parts)
    committed = sum(a["tokens_committed"] for a in parts)
    cost = sum(a["cost"] for a in parts)
    return {
        "unit": "GPU" if "GPU" in units else parts[0]["unit"], "price_per_hour": parts[0]["price_per_hour"],
        "hours": added("hours"), "generation": added("generation"), "useful": added("useful"),
        "wasted": {name: added("wasted", name) for name in parts[0]["wasted"]},
        "tokens_generated": generated, "tokens_committed": committed,
        "tokens_per_s_generating": round(generated / (generation * 3600), 2) if generation else 0.0,
        "tokens_per_s_effective": round(committed / (hours * 3600), 2) if hours else 0.0,
        "cost": cost, "cost_per_million_tokens": cost / (committed / 1e6) if committed else None,
        "by_run": accounts,
    }


def _weights(run: RunDir, tasks: list[dict], gpu: bool, sacct: bool) -> dict[int, float]:
    """GPUs (or 1 CPU worker) each worker's seconds count for. A worker says how many GPUs its engine
    used; one that used none inside a Slurm task that asked for GPUs (the fake engine on the dev cluster,
    a CPU engine on a GPU node) still held them: its share of what its task asked, so that the clocks and
    Slurm's bill are in the same unit."""
    if not gpu:
        return {id(t): 1.0 for t in tasks}
    asked: dict[str, float] = {}
    if sacct:
        from hpcsynth.execute.slurm_jobs import recorded_jobs

        for launch in recorded_jobs(run):
            for array in launch.get("arrays", []):
                asked[str(array["job_id"])] = _number(launch.get("gpus_per_task", 1))
    sharing: dict[str, int] = {}
    for t in tasks:
        sharing[str(t.get("task") or "")] = sharing.get(str(t.get("task") or ""), 0) + 1
    weights = {}
    for t in tasks:
        task = str(t.get("task") or "")
        held = asked.get(task.split("_")[0], 0.0) / sharing[task] if task else 0.0
        weights[id(t)] = _number(t.get("gpus")) or held
    return weights


def _fig(hours: float, how: str) -> dict[str, Any]:
    return {"hours": hours, "how": how}


def _tokens_on_disk(run: RunDir, collected: Collected) -> tuple[float, float]:
    """(completion tokens committed in done markers of this fingerprint, tokens in failed shards' logs)."""
    table = collected.table
    committed = float(table.cols["completion_tokens"][table.ours(collected.status.fingerprint)].sum())
    beats = collected.beats  # status's order: done wins over failed
    return committed, float(sum(_number(beats[s]["completion_tokens"]) for s in collected.failed if s in beats))
