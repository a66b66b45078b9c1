"""The run directories of tools/bench_campaign.py: planned once per size and checkout layout, made
partly done, kept under --work, and put back to that state before every measurement.

A run is planned for real (`python -m hpcsynth plan CONFIG --run RUN`, 1-document shards), copied per
done fraction (the shard files as hard links: nothing rewrites them), and made partly done by
tools/campaign_state.py under the checkout. Its state is then remembered as the names in its done and
output directories (new ones are deleted on restore: O(new commits), never a copy of 10^5 files) plus a
copy of everything else but shards/ (config, manifest, any index, tasks/; small next to the shards).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
# Defaults where they matter to the counts: heartbeats every 10 s and a 60 s progress flush (a bench
# shard takes well under a second, so the time-based writes stay out of the per-shard counts; they are
# measured on their own, see bench_campaign.heartbeat_rate).
CONFIG = """prompts: [faq, math, table, tutorial]
plan:
  shard_docs: 1
  inputs: [{corpus}]
model:
  engine: fake
  path: fake-model
  max_model_len: 2048
  max_input_chars: 1200
sampling: {{temperature: 1.0, top_p: 1.0, top_k: 0, max_tokens: 64, seed: 0}}
worker: {{batch_size: 16, flush_interval_s: 60, heartbeat_interval_s: {heartbeat}, threads: 1, device: cpu}}
"""
MISSING = "/missing"  # no file is named so: the directory did not exist
TEXT = "the campaign rephrases web text into training data, one document at a time. " * 5


def env_for(code: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "HPCSYNTH_FAKE_FAULTS")}
    env.update(PYTHONPATH=str(code), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               **extra)
    return env


def state(code: Path, command: str, run: Path, *args: str) -> dict:
    done = subprocess.run([sys.executable, str(TOOLS / "campaign_state.py"), command, str(run), *args],
                          env=env_for(code), check=True, capture_output=True, text=True)
    return json.loads(done.stdout.splitlines()[-1])


def code_key(code: Path) -> str:
    """Runs are cached per checkout layout: its LAYOUT_VERSION and the text of rundir.py."""
    text = (code / "hpcsynth" / "rundir.py").read_bytes()
    version = subprocess.run([sys.executable, "-c", "from hpcsynth.rundir import LAYOUT_VERSION as v; print(v)"],
                             env=env_for(code), check=True, capture_output=True, text=True).stdout.strip()
    return f"layout{version}-{hashlib.sha256(text).hexdigest()[:10]}"


def write_config(work: Path, heartbeat: float = 10.0) -> tuple[Path, Path]:
    corpus = work / "corpus.jsonl"
    config = work / f"campaign-hb{heartbeat:g}.yaml"
    config.write_text(CONFIG.format(corpus=corpus, heartbeat=heartbeat))
    return corpus, config


def write_corpus(corpus: Path, documents: int) -> None:
    if corpus.exists() and _lines(corpus) == documents:
        return
    with open(corpus.with_suffix(".tmp"), "w") as handle:
        for i in range(documents):
            handle.write(json.dumps({"id": f"doc-{i}", "text": f"document {i}: {TEXT}"}) + "\n")
    os.replace(corpus.with_suffix(".tmp"), corpus)


def _lines(path: Path) -> int:
    with open(path, "rb") as handle:
        return sum(1 for _ in handle)


def planned(code: Path, work: Path, shards: int, log) -> tuple[Path, float]:
    """A plain planned run of `shards` 1-document shards (cached); returns it and the plan's seconds."""
    base = work / code_key(code)
    run = base / f"n{shards}-plan"
    stamp = run / ".bench-planned"
    if stamp.exists():
        return run, float(stamp.read_text())
    shutil.rmtree(run, ignore_errors=True)
    corpus_dir = work / f"corpus-{shards}"
    corpus_dir.mkdir(parents=True, exist_ok=True)
    corpus, config = write_config(corpus_dir)
    write_corpus(corpus, shards)
    log(f"planning {shards:,} shards ({code_key(code)}) ...")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "hpcsynth", "plan", str(config), "--run", str(run)], env=env_for(code),
                   check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    stamp.write_text(f"{seconds:.2f}")
    return run, seconds


def template(code: Path, work: Path, shards: int, fraction: float, log) -> tuple[Path, dict]:
    """A run of `shards` with `fraction` of them done (cached, with its restore snapshot)."""
    plan, plan_s = planned(code, work, shards, log)
    run = plan.parent / f"n{shards}-f{round(fraction * 100)}"
    meta_path = run.parent / f"{run.name}.json"
    if meta_path.exists() and run.is_dir():
        return run, json.loads(meta_path.read_text())
    shutil.rmtree(run, ignore_errors=True)
    shutil.rmtree(_rest(run), ignore_errors=True)
    shutil.copytree(plan, run, ignore=shutil.ignore_patterns("shards", ".bench-planned"), symlinks=True)
    subprocess.run(["cp", "-al", str(plan / "shards"), str(run / "shards")], check=True)
    log(f"making {fraction:.0%} of {shards:,} shards done ...")
    started = time.perf_counter()
    made = state(code, "fabricate", run, "--fraction", str(fraction))
    info = state(code, "info", run)
    meta = {"plan_s": plan_s, "fabricate_s": round(time.perf_counter() - started, 1), "fabricated": made,
            "info": info}
    _remember(run, info)
    meta_path.write_text(json.dumps(meta, indent=1))
    return run, meta


def _rest(run: Path) -> Path:
    return run.parent / f"{run.name}.rest"


def _big(info: dict) -> list[Path]:
    return [Path(info["done_dir"]), Path(info["outputs_dir"])]


def _remember(run: Path, info: dict) -> None:
    rest = _rest(run)
    rest.mkdir()
    for directory in _big(info):
        names = sorted(os.listdir(directory)) if directory.is_dir() else [MISSING]
        (rest / f"{directory.name}.names").write_text("\n".join(names))
    big = {d.name for d in _big(info)} | {"shards"}
    (rest / "copy").mkdir()
    for entry in os.scandir(run):
        if entry.name not in big:
            copy = shutil.copytree if entry.is_dir(follow_symlinks=False) else shutil.copy2
            copy(entry.path, rest / "copy" / entry.name)


def restore(run: Path, info: dict) -> None:
    """Put the run back to its remembered state: new done markers and outputs deleted, the rest copied back."""
    rest = _rest(run)
    big = {d.name for d in _big(info)} | {"shards"}
    for directory in _big(info):
        keep = set((rest / f"{directory.name}.names").read_text().split("\n"))
        if MISSING in keep:  # not there before: a plan-only run has no done/ until a worker commits
            shutil.rmtree(directory, ignore_errors=True)
            continue
        for name in os.listdir(directory):
            if name not in keep:
                os.unlink(directory / name)
    for entry in os.scandir(run):
        if entry.name not in big:
            shutil.rmtree(entry.path) if entry.is_dir(follow_symlinks=False) else os.unlink(entry.path)
    for entry in os.scandir(rest / "copy"):
        (shutil.copytree if entry.is_dir(follow_symlinks=False) else shutil.copy2)(entry.path, run / entry.name)
