"""What a run has measured that an estimate can use: completion tokens per record and tok/s per GPU.

Read from the run directory only, through status's one read of it (status/collect.py collect_run: the
done table, heartbeats of shards in progress, the workers' clocks in RUN/tasks/), plus, when done markers
predate per-prompt counts, a bounded sample of committed outputs. A run that has measured nothing leaves
the estimate to the published anchors.
"""

from __future__ import annotations

import numpy as np
import zstandard

from hpcsynth.config import Config
from hpcsynth.errors import HpcsynthError
from hpcsynth.files import read_jsonl_zst
from hpcsynth.prompts import load_prompts
from hpcsynth.rundir import RunDir

from hpcsynth.status.collect import Collected, collect_run
from hpcsynth.status.collect import count_number as _number
from hpcsynth.study.estimate import Inputs

# Outputs read for per-prompt lengths: shards spread over the run (early shards may differ from late
# ones), and a record budget that keeps `estimate` to a second or two on a login node.
SAMPLE_SHARDS = 32
SAMPLE_RECORDS = 50_000


def inputs_from_run(run: RunDir, collected: Collected | None = None, **given) -> Inputs:
    """Documents, prompts, generator and input tokens from the plan; lengths and rate measured when the
    run has them. `given` (the CLI's options) wins over both. `collected`: status's read of the run, when
    the caller has one (the account reads the same), else it is made here."""
    manifest = run.manifest()  # the header only: documents, prompts, est_tokens
    config = run.config()
    prompts = tuple(p["name"] for p in manifest["prompts"])
    generator = config.model.path or config.model.engine
    collected = collected if collected is not None else collect_run(run, slurm=False)
    rate = measured_rate(run, collected)
    documents = int(manifest["documents"])
    routed: dict[str, int] = {}
    input_tokens = (float(manifest.get("est_tokens", 0)) * len(prompts)
                    + instruction_tokens(config, manifest) * documents)
    if manifest.get("routing") is not None and "documents" not in given:  # routed: each prompt, its documents
        from hpcsynth.plan.manifest import planned_routing

        by_prompt = (planned_routing(run, manifest) or {}).get("by_prompt", {})
        routed = {p: int(by_prompt[p]["documents"]) for p in prompts if p in by_prompt}
        instructions = instruction_tokens_by_prompt(config, manifest)
        input_tokens = sum(float(by_prompt[p]["est_tokens"]) + instructions.get(p, 0.0) * routed[p] for p in routed)
    return Inputs(**{"documents": documents, "prompts": prompts, "generators": (generator,), "routed": routed,
                     "input_tokens": input_tokens,
                     "max_output_tokens": float(config.sampling.max_tokens),
                     "measured_lengths": measured_lengths(run, prompts, collected),
                     "measured_rates": {generator: rate[:2]} if rate else {},
                     "unit": rate[2] if rate else "GPU", **given})


def instruction_tokens(config: Config, manifest: dict) -> float:
    """Prompt-side tokens a record adds to its document: the system message and the template around it,
    estimated with the plan's bytes per token (the same yardstick as the documents' est_tokens)."""
    return sum(instruction_tokens_by_prompt(config, manifest).values())


def instruction_tokens_by_prompt(config: Config, manifest: dict) -> dict[str, float]:
    """instruction_tokens, per prompt (a routed plan gives each prompt its own documents)."""
    per_token = float(manifest.get("bytes_per_token") or 0) or 4.0
    return {prompt.name: sum(len(m["content"].encode()) for m in prompt.render("")) / per_token
            for prompt in load_prompts(config)}


def measured_lengths(run: RunDir, prompts: tuple[str, ...],
                     collected: Collected | None = None) -> dict[str, tuple[float, str]]:
    """{prompt: (mean completion tokens per record, how it was measured)}."""
    collected = collected if collected is not None else collect_run(run, slurm=False)
    table = collected.table
    mask = table.ours(collected.status.fingerprint)
    ours = np.flatnonzero(mask).tolist()
    exact = _from_markers(collected, mask, prompts)
    if exact:
        return exact
    sums: dict[str, list[float]] = {}
    read = 0
    step = max(len(ours) / SAMPLE_SHARDS, 1.0)
    picked = sorted({ours[int(i * step)] for i in range(min(SAMPLE_SHARDS, len(ours)))})
    for shard in picked:
        if sum(n for _, n in sums.values()) >= SAMPLE_RECORDS:
            break
        try:
            for record in read_jsonl_zst(run.output_path(shard)):
                entry = sums.setdefault(str(record.get("prompt")), [0.0, 0])
                entry[0] += _number(record.get("completion_tokens"))
                entry[1] += 1
            read += 1
        except (OSError, ValueError, zstandard.ZstdError, HpcsynthError):
            continue  # a damaged output: launch redoes it; the others measure well enough
    lengths = {p: (total / n, f"measured: {n:,} records of {read} done shard(s)")
               for p, (total, n) in sums.items() if n and p in prompts}
    if lengths:
        return lengths
    beats = collected.beats
    records = sum(b["records_done"] for b in beats.values())
    if records:  # in progress only: heartbeats do not split by prompt
        mean = sum(b["completion_tokens"] for b in beats.values()) / records
        how = f"measured: {records:,} records of {len(beats)} shard(s) in progress, all prompts together"
        return {p: (mean, how) for p in prompts}
    return {}


def _from_markers(collected: Collected, mask: np.ndarray, prompts: tuple[str, ...]) -> dict[str, tuple[float, str]]:
    """Per prompt from the done markers' `by_prompt` counts (kept in status's done table): every done shard,
    no output read. Empty when a marker predates the field (then the outputs are sampled)."""
    table = collected.table
    shards = int(mask.sum())
    if not shards or not table.cols["has_by_prompt"][mask].all():
        return {}
    sums = table.cols["by_prompt"][mask].sum(axis=0)  # [prompt, (records, rejected, completion tokens)]
    out = {}
    for name, (records, _, tokens) in zip(table.prompts, sums.tolist()):
        if records and name in prompts:
            how = f"measured: {int(records):,} records of {shards} done shard(s) (done markers)"
            out[name] = (tokens / records, how)
    return out


def measured_rate(run: RunDir, collected: Collected | None = None) -> tuple[float, str, str] | None:
    """(completion tok/s per GPU while generating, how, unit) from the workers' clocks; per CPU worker
    (unit "worker") when none of them had a GPU."""
    collected = collected if collected is not None else collect_run(run, slurm=False)
    tasks = [t for t in collected.status.tasks if _number(t.get("generation_s")) > 0]
    if not tasks or not any(_number(t.get("tokens")) for t in tasks):
        return None
    gpu_tasks = [t for t in tasks if _number(t.get("gpus")) > 0]
    chosen, unit = (gpu_tasks, "GPU") if gpu_tasks else (tasks, "worker")
    tokens = sum(_number(t.get("tokens")) for t in chosen)
    seconds = sum(_number(t.get("generation_s")) * max(_number(t.get("gpus")), 1.0) for t in chosen)
    if seconds <= 0 or tokens <= 0:
        return None
    return (tokens / seconds,
            f"measured: this run's {len(chosen)} worker(s), {tokens:,.0f} tokens in {seconds:,.0f} {unit}-seconds "
            f"of generation", unit)
