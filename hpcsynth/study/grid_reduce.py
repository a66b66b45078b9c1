"""Reducing a grid: one training dataset per (generator, prompt, mix-in), then the trainer's arguments.

Each dataset is a plain reduce (hpcsynth/reduce/) of its generator's run, restricted to the prompt and
with the mix-in's reduce: keys (reduce/view.py), written to RUN/datasets/GEN-PROMPT-MIXIN/ with its own
report.json (counts, the quality checks of that prompt, tokens by source) and text export. Resumable as
any reduce: a dataset whose parts are done only merges again. Last, RUN/datasets/TRAIN.md and
data_args.json (and data_args.txt in each dataset's directory) give, per dataset, the arguments a trainer takes: Megatron-LM's `--data-path` (weighted
prefixes when reduce.max_file_mb split the files) and, for .ds, the nanotron / datatrove folder form.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpcsynth.files import atomic_write_bytes, atomic_write_json
from hpcsynth.rundir import RunDir
from hpcsynth.study.grid import check_mixins, generator_run, require_generator_run


def datasets_dir(run: RunDir) -> Path:
    return run.datasets_dir


def reduce_grid(run: RunDir, grid: dict[str, Any], tokenizer: str | None = None, partial: bool = False,
                jobs: int = 1, on_dataset: Callable[[str, dict], None] | None = None) -> list[dict[str, Any]]:
    """Reduce every dataset of the grid in turn; returns their entries (name, cell, report) in grid order."""
    from hpcsynth.reduce.lock import reduce_lock
    from hpcsynth.reduce.merge import merge_parts
    from hpcsynth.reduce.reducer import prepare_reduce, run_parts_local

    mixins = {m["name"]: m.get("reduce") or {} for m in grid["mixins"]}
    for name in dict.fromkeys(d["generator"] for d in grid["datasets"]):
        check_mixins(run, grid, require_generator_run(run, name))
    entries = []
    for dataset in grid["datasets"]:
        out = datasets_dir(run) / dataset["name"]
        sub = generator_run(run, dataset["generator"])
        view = {"prompts": [dataset["prompt"]], "reduce": mixins[dataset["mixin"]]}
        with reduce_lock(out):
            spec = prepare_reduce(sub, out, tokenizer, partial, view=view)
            run_parts_local(spec, jobs)
            report = merge_parts(str(spec.out_dir))
        entry = {**dataset, "dir": str(out), "report": report}
        entries.append(entry)
        if on_dataset:
            on_dataset(dataset["name"], report)
    write_train_args(run, entries)
    return entries


def submit_grid_reduce(run: RunDir, grid: dict[str, Any], slurm, tokenizer: str | None = None,
                       partial: bool = False) -> list[dict[str, Any]]:
    """Every dataset's reduce as a Slurm CPU array and a merge job (as `reduce --executor slurm` does)."""
    from hpcsynth.reduce.lock import reduce_lock
    from hpcsynth.reduce.reducer import prepare_reduce
    from hpcsynth.reduce.slurm import submit_reduce

    mixins = {m["name"]: m.get("reduce") or {} for m in grid["mixins"]}
    for name in dict.fromkeys(d["generator"] for d in grid["datasets"]):
        check_mixins(run, grid, require_generator_run(run, name))
    submitted = []
    for dataset in grid["datasets"]:
        view = {"prompts": [dataset["prompt"]], "reduce": mixins[dataset["mixin"]]}
        out = datasets_dir(run) / dataset["name"]
        with reduce_lock(out):  # as reduce --executor slurm: no other reduce writes DIR while it is prepared
            spec = prepare_reduce(generator_run(run, dataset["generator"]), out, tokenizer, partial, view=view)
            submitted.append({**dataset, "dir": str(spec.out_dir), "jobs": submit_reduce(spec, slurm)})
            record_reduce_jobs(run, submitted[-1])  # after each: a failure midway leaves the others cancellable
    return submitted


def reduce_jobs_path(run: RunDir) -> Path:
    return datasets_dir(run) / "slurm-jobs.json"


def record_reduce_jobs(run: RunDir, entry: dict[str, Any]) -> None:
    """RUN/datasets/slurm-jobs.json: every reduce array and merge submitted, so that `hpcsynth cancel RUN`
    stops a grid's reduce as it stops its generation (those ids live in each generator's launches/)."""
    from hpcsynth.execute.slurm_jobs import record_reduce

    record_reduce(reduce_jobs_path(run), entry["name"], entry["jobs"])


def reduce_job_ids(run: RunDir) -> list[str]:
    """The recorded reduce jobs' ids, each checked before it reaches scancel."""
    from hpcsynth.execute.slurm_jobs import recorded_reduce_ids

    return recorded_reduce_ids(reduce_jobs_path(run))


def collect_finished(run: RunDir, grid: dict[str, Any]) -> list[dict[str, Any]]:
    """Datasets whose report is written (after Slurm merges), for the trainer's arguments."""
    from hpcsynth.files import read_json

    entries = []
    for dataset in grid["datasets"]:
        out = datasets_dir(run) / dataset["name"]
        for name in ("report.json", "report-partial.json"):
            if (out / name).is_file():
                entries.append({**dataset, "dir": str(out), "report": read_json(out / name)})
                break
    return entries


def data_args(report: dict[str, Any]) -> dict[str, str]:
    """What a trainer takes for one reduce output: its Megatron --data-path, or its .ds folder forms."""
    files = report.get("token_files") or [{"prefix": Path(report["prefix"]).name, "tokens": report["tokens"]}]
    # Absolute paths: the trainer runs from its own directory.
    folder = str(Path(report["prefix"]).absolute().parent)
    if report["format"] == "megatron":
        if len(files) == 1:
            return {"megatron": f"--data-path {shlex.quote(str(Path(folder) / files[0]['prefix']))}"}
        # Weights by tokens: Megatron normalizes them, so each file is drawn as often as its size asks.
        blend = " ".join(f"{f['tokens']} {shlex.quote(str(Path(folder) / f['prefix']))}" for f in files)
        return {"megatron": f"--data-path {blend}"}
    if report["format"] == "datatrove":
        size = 2 if report["dtype"] == "uint16" else 4
        # YAML double-quoted (JSON's escapes are YAML's): a folder with ": ", "#", "," or "]" stays one path.
        return {"nanotron": f"dataset: {{dataset_folder: [{json.dumps(folder, ensure_ascii=False)}], "
                            f"dataset_weights: [1.0]}}",
                "datatrove": f"DatatroveFolderDataset({folder!r}, seq_len=SEQ_LEN, token_size={size})"}
    return {"numpy": f"np.load({str(Path(folder) / files[0]['prefix']) + '.npy'!r}, mmap_mode='r')"}


def write_train_args(run: RunDir, entries: list[dict[str, Any]]) -> Path:
    """RUN/datasets/TRAIN.md (one copy-and-paste per dataset) and data_args.json (the same, for scripts)."""
    out = datasets_dir(run)
    rows = []
    lines = ["# Training data of this grid", "",
             "One dataset per (generator, prompt, mix-in); train one small model on each and compare.",
             "Each line is what your trainer takes; each directory has report.json (counts, tokens by source,",
             "the prompt's quality checks) and text/ with a dataset card.", "",
             "| dataset | generator | prompt | mix-in | documents | tokens (synthetic + original + other corpora) |",
             "|---|---|---|---|---:|---|"]
    for e in entries:
        r = e["report"]
        lines.append(f"| {e['name']} | {e['generator']} | {e['prompt']} | {e['mixin']} | {r['sequences']:,} | "
                     f"{r['tokens']:,} ({r['synthetic_tokens']:,} + {r['original_tokens']:,} + "
                     f"{r.get('corpus_tokens', 0):,}) |")
        rows.append({**{k: e[k] for k in ("name", "generator", "prompt", "mixin", "dir")},
                     "format": r["format"], "tokens": r["tokens"], "partial": r["partial"], "args": data_args(r)})
        # The same next to the dataset itself, for whoever copies one directory away.
        atomic_write_bytes(Path(e["dir"]) / "data_args.txt",
                           "".join(f"{trainer}: {text}\n" for trainer, text in rows[-1]["args"].items()).encode())
    lines.append("")
    for row in rows:
        lines += [f"## {row['name']}" + (" (PARTIAL: not every shard is in)" if row["partial"] else ""), ""]
        for trainer, text in row["args"].items():
            lines += [f"{trainer}:", "", "```", text, "```", ""]
    atomic_write_json(out / "data_args.json", {"datasets": rows})
    path = out / "TRAIN.md"
    atomic_write_bytes(path, "\n".join(lines).encode())
    return path
