"""`hpcsynth demo`: the whole pipeline on the embedded default, CPU only, nothing downloaded.

Builds a tiny model and tokenizer, writes a small corpus from the help topics that ship with Python,
then runs plan -> launch (local) -> status -> reduce through the same functions the CLI uses.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from hpcsynth.config import Config, load_config
from hpcsynth.errors import RunError
from hpcsynth.execute.launch import LaunchReport, launch_run
from hpcsynth.plan.planner import Plan, plan_corpus
from hpcsynth.reduce.reducer import ReduceReport, reduce_run
from hpcsynth.resources import data_dir
from hpcsynth.rundir import RunDir
from hpcsynth.status.collect import collect_status
from hpcsynth.status.runstatus import RunStatus


@dataclass(frozen=True)
class DemoResult:
    run: RunDir
    plan: Plan
    launch: LaunchReport
    status: RunStatus
    reduce: ReduceReport
    seconds: dict[str, float]


def write_demo_corpus(path: Path, documents: int) -> Path:
    """A dolma-style JSONL corpus made from Python's own pydoc help topics."""
    from pydoc_data.topics import topics

    path.parent.mkdir(parents=True, exist_ok=True)
    keys = sorted(topics)[:documents]
    with open(path, "wb") as handle:
        for key in keys:
            record = {"id": f"pydoc/{key}", "text": topics[key].strip(), "source": "python-pydoc-topics"}
            handle.write(orjson.dumps(record) + b"\n")
    return path


def demo_config(model_dir: Path, corpus: Path) -> Config:
    config = load_config(data_dir("configs") / "demo.yaml")
    return dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, path=str(model_dir)),
        plan=dataclasses.replace(config.plan, inputs=(str(corpus),)),
    )


DEMO_ENTRIES = ("model", "corpus.jsonl", "run")


def run_demo(out_dir: Path, documents: int = 64, progress=print) -> DemoResult:
    # One thread each: on a small shared machine more threads only contend.
    os.environ.setdefault("RAYON_NUM_THREADS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out_dir = Path(out_dir).resolve()
    run = RunDir(out_dir / "run")
    if run.manifest_path.exists():
        raise RunError(f"{out_dir} already holds a demo run; pass an empty or new directory")
    # The demo writes model/, corpus.jsonl and run/ here: anything else is the user's (it once put its
    # corpus beside theirs). What an interrupted demo left is its own and is written over.
    others = sorted(p.name for p in out_dir.iterdir() if p.name not in DEMO_ENTRIES) if out_dir.is_dir() else []
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise RunError(f"{out_dir} is not empty ({shown}) and not a demo's; pass a new or empty directory "
                       f"(the demo writes {', '.join(DEMO_ENTRIES)} there)")
    seconds: dict[str, float] = {}

    clock = time.monotonic()
    from hpcsynth.tinymodel import build_tiny_model

    model_dir = build_tiny_model(out_dir / "model")
    corpus = write_demo_corpus(out_dir / "corpus.jsonl", documents)
    seconds["model"] = time.monotonic() - clock
    progress(f"built a tiny Llama and tokenizer in {seconds['model']:.1f}s -> {model_dir}")

    clock = time.monotonic()
    plan = plan_corpus(demo_config(model_dir, corpus), run)
    seconds["plan"] = time.monotonic() - clock
    progress(f"plan: {plan.documents} documents -> {plan.shards} shards in {run.root / 'shards'}")

    clock = time.monotonic()
    launch = launch_run(run, "local")
    seconds["launch"] = time.monotonic() - clock
    progress(f"launch (local): {launch.done}/{launch.total} shards done, {len(launch.failed)} failed "
             f"in {seconds['launch']:.1f}s")

    status = collect_status(run)
    progress(f"status: {status.records_done} records, {status.tokens_done} tokens generated")

    clock = time.monotonic()
    reduced = reduce_run(run)
    seconds["reduce"] = time.monotonic() - clock
    return DemoResult(run, plan, launch, status, reduced, seconds)
