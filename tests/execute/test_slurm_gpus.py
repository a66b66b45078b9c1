"""Whole GPU nodes on the real dev cluster: one array task given two (fake) GPUs runs a worker on each."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from slurm_cluster import ClusterInfo
from test_slurm_launch import cli, expected_ids, job_ids, planned, records, status, wait_for, wait_sacct

pytestmark = pytest.mark.slurm


def test_two_gpu_task_runs_two_workers_that_split_the_shards(tmp_path: Path, cluster: ClusterInfo) -> None:
    run = planned(tmp_path, cluster, docs=40, tasks=1, gpus=2)
    out = cli(cluster, "launch", str(run), "--executor", "slurm", faults={"delay_s": 0.02}).stdout
    assert "8 shards pending" in out and "(1 tasks)" in out
    final = wait_for(cluster, run, 8)
    assert final["shards"]["done"] == 8 and not final["shards"]["failed"], final
    ids = records(run)
    assert ids == expected_ids(40, 5), "every record generated exactly once"
    job = job_ids(run)[0]
    assert "#SBATCH --gres=gpu:2\n" in (run / "slurm" / job / f"{job}_submission.sh").read_text()
    wait_sacct(cluster, job, {"COMPLETED"})
    after = status(cluster, run)
    workers = sorted(after["tasks"], key=lambda t: t["name"])
    # One task is submitted as a plain job (no array index); each worker is named after it and its GPU slot.
    assert [t["name"] for t in workers] == [f"{job}-r0-gpu0", f"{job}-r0-gpu1"], workers
    assert all(t["shards_done"] >= 1 for t in workers), workers  # "gpus": what the engine used (fake: none)
    assert sum(t["shards_done"] for t in workers) == 8
    logs = sorted((run / "logs").glob(f"worker-{job}-r0-gpu*.log"))
    devices = [re.search(r"CUDA_VISIBLE_DEVICES=(\d+)", p.read_text()).group(1) for p in logs]
    assert len(logs) == 2 and len(set(devices)) == 2, devices
