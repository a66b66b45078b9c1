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


def test_site_profile_asking_for_tensor_parallel_runs_one_worker_across_the_gpus(tmp_path: Path,
                                                                                 cluster: ClusterInfo) -> None:
    """gpu_mode comes from the site profile: tensor_parallel there makes the 2-GPU task run one worker
    (in the task's own process) instead of one per GPU. The fake engine cannot span GPUs, which the
    worker says in its log, naming the mode it was given."""
    run = planned(tmp_path, cluster, docs=20, tasks=1, gpus=2)
    profile = tmp_path / "site.yaml"
    profile.write_text("slurm: {gpu_mode: tensor_parallel}\n")
    cli(cluster, "launch", str(run), "--executor", "slurm", "--profile", str(profile), faults={"delay_s": 0.02})
    final = wait_for(cluster, run, 4)
    assert final["shards"]["done"] == 4 and not final["shards"]["failed"], final
    assert records(run) == expected_ids(20, 5), "every record generated exactly once"
    job = job_ids(run)[0]
    wait_sacct(cluster, job, {"COMPLETED"})
    workers = status(cluster, run)["tasks"]
    assert [t["name"] for t in workers] == [f"{job}-r0"] and workers[0]["shards_done"] == 4, workers
    assert not list((run / "logs").glob("*-gpu*.log"))
    log = "".join(p.read_text() for p in (run / "logs").glob(f"worker-{job}*.log"))
    assert "slurm.gpu_mode=tensor_parallel needs model.engine=vllm; fake uses one of 2 GPUs" in log, log
