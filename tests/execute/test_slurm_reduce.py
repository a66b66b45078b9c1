"""`hpcsynth reduce --executor slurm` on the real dev cluster: a CPU array over the parts, then a merge job;
the files are the same bytes as a local reduce."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from conftest import write_corpus
from slurm_cluster import ClusterInfo

pytestmark = pytest.mark.slurm

CONFIG = """\
prompts: [faq, math]
plan: {{shard_docs: 3}}
model: {{engine: fake}}
reduce: {{tokenizer: {tokenizer}, part_shards: 1, bucket_docs: 4, min_chars: 1,
         mix: {{sources: [{{name: run_originals, weight: 0.5}}, {{name: hq, path: "{corpus}", weight: 0.25}}]}}}}
validate: {{action: keep}}  # the fake engine's words have no format to validate
slurm: {{array_tasks: 3, partition: debug, gpus_per_task: 0, cpus_per_task: 1, mem_gb: 1, time_min: 20}}
"""


def cli(cluster: ClusterInfo, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "hpcsynth", *args], env=cluster.env, capture_output=True,
                          text=True, timeout=300)
    if proc.returncode != 0:
        raise AssertionError(f"hpcsynth {' '.join(args)}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_slurm_reduce_matches_local(tmp_path: Path, cluster: ClusterInfo, tiny_model: Path) -> None:
    config = tmp_path / "config.yaml"
    # A mix-in corpus of two files: two more parts, one per file, in the same array.
    write_corpus(tmp_path / "hq" / "a.jsonl", 6, prefix="hq")
    write_corpus(tmp_path / "hq" / "b.jsonl", 6, prefix="hq-b")
    config.write_text(CONFIG.format(tokenizer=tiny_model, corpus=tmp_path / "hq" / "*.jsonl"))
    run = tmp_path / "run"
    cli(cluster, "plan", str(config), "--run", str(run), "--input", str(write_corpus(tmp_path / "c.jsonl", 15)))
    cli(cluster, "launch", str(run))
    cli(cluster, "reduce", str(run), "--out", str(tmp_path / "local"))
    out = tmp_path / "slurm"
    said = cli(cluster, "reduce", str(run), "--out", str(out), "--executor", "slurm").stdout
    assert "7 parts pending in array" in said and "merge job" in said
    deadline = time.monotonic() + 240
    while not (out / "report.json").exists() and time.monotonic() < deadline:
        time.sleep(1)
    logs = "\n".join(p.read_text()[-800:] for p in out.glob("slurm/*/*.out"))
    assert (out / "report.json").exists(), logs
    for name in ("mix.bin", "mix.idx", "mix.docs.jsonl", "mix.json"):
        assert (out / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    report = orjson.loads((out / "report.json").read_bytes())
    assert report["parts"] == 7 and report["corpus_documents"] > 0
    assert "is whole" in cli(cluster, "verify", str(out)).stdout
