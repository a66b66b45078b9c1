"""The account of a run launched on the real dev Slurm cluster: GPU-hours from sacct, split by the clocks."""

from __future__ import annotations

import json
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
plan: {shard_docs: 5}
model: {engine: fake}
worker: {flush_interval_s: 0.2, heartbeat_interval_s: 0.5, lease_timeout_s: 120}
slurm: {array_tasks: 2, partition: gpu, gpus_per_task: 1, cpus_per_task: 1, mem_gb: 1, time_min: 20}
"""


def cli(cluster: ClusterInfo, *args: str, faults: dict | None = None) -> subprocess.CompletedProcess:
    env = {**cluster.env, "HPCSYNTH_FAKE_FAULTS": json.dumps(faults or {})}
    proc = subprocess.run([sys.executable, "-m", "hpcsynth", *args], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f"hpcsynth {' '.join(args)}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_account_of_a_slurm_run_bills_sacct_hours(tmp_path: Path, cluster: ClusterInfo) -> None:
    corpus = write_corpus(tmp_path / "corpus.jsonl", 20)
    (tmp_path / "config.yaml").write_text(CONFIG)
    run = tmp_path / "run"
    cli(cluster, "plan", str(tmp_path / "config.yaml"), "--run", str(run), "--input", str(corpus))
    cli(cluster, "launch", str(run), "--executor", "slurm", faults={"delay_s": 0.02})
    deadline = time.monotonic() + 150
    while True:  # every shard done and both array tasks ended in Slurm's accounting
        data = orjson.loads(cli(cluster, "estimate", str(run), "--price", "2", "--json").stdout)
        status = orjson.loads(cli(cluster, "status", str(run), "--json").stdout)
        if status["shards"]["done"] == 4 and status["slurm"]["array_tasks"] == {"COMPLETED": 2}:
            break
        assert time.monotonic() < deadline, status
        time.sleep(1)
    data = orjson.loads(cli(cluster, "estimate", str(run), "--price", "2", "--json").stdout)
    account = data["account"]
    assert account["unit"] == "GPU" and account["hours"]["how"].startswith("measured: Slurm accounting")
    assert account["hours"]["hours"] > 0 and account["hours"]["hours"] == pytest.approx(status["gpu_hours"], abs=1e-4)
    # Slurm's bill is at least the workers' own time; what lies outside it is named, not lost.
    wasted = account["wasted"]
    parts = account["useful"]["hours"] + sum(w["hours"] for w in wasted.values())
    assert parts == pytest.approx(account["hours"]["hours"], rel=0.02, abs=2e-4)
    assert wasted["outside_worker"]["hours"] > 0 and wasted["outside_worker"]["how"].startswith("measured: Slurm")
    assert account["tokens_committed"] == account["tokens_generated"] == status["tokens_done"] > 0
    assert account["cost"] == pytest.approx(account["hours"]["hours"] * 2)
