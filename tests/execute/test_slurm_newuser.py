"""Slurm for a first-time user, against the real dev cluster: a profile that asks too much is reported
as never starting (Slurm's own reason), the shipped site-dev profile runs on the dev cluster as it is,
and a failing setup line fails its task with the line and its exit code in status."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from hpcsynth.execute.slurm import SETUP_FAILED_EXIT, guarded_setup_line

from slurm_cluster import ClusterInfo
from test_slurm_launch import cli, job_ids, planned, status, wait_for, wait_sacct


def wait_status(cluster: ClusterInfo, run: Path, check, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = status(cluster, run)
        if check(current):
            return current
        time.sleep(1)
    raise AssertionError(f"status never matched after {timeout}s: {current['slurm']}")


def test_guarded_setup_lines_stop_the_script_with_their_message(tmp_path: Path) -> None:
    script = "\n".join([guarded_setup_line("export A=1"), guarded_setup_line("echo \"it's $A\""),
                        guarded_setup_line("source /nonexistent/venv/bin/activate"), "echo never"])
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert proc.returncode == SETUP_FAILED_EXIT and proc.stdout == "it's 1\n"
    assert proc.stderr.endswith("hpcsynth: setup line failed (exit 1): source /nonexistent/venv/bin/activate\n")


@pytest.mark.slurm
def test_a_profile_the_cluster_cannot_satisfy_is_reported_as_never_starting(tmp_path: Path,
                                                                           cluster: ClusterInfo) -> None:
    run = planned(tmp_path, cluster, docs=10)  # two shards: an array of two tasks, one sacct line
    # An earlier test's job still running out its last requeue (time-limit tests) left this array without a
    # reason for minutes in a full run: the controller judges it on an idle node at once.
    deadline = time.monotonic() + 180
    while subprocess.run(["squeue", "-h"], env=cluster.env, capture_output=True, text=True).stdout.strip():
        assert time.monotonic() < deadline, "the dev cluster's queue never emptied"
        time.sleep(1)
    cli(cluster, "launch", str(run), "--executor", "slurm", "--profile", "site-example")  # 12 CPUs, 96 GB
    try:
        current = wait_status(cluster, run, lambda s: s["slurm"]["pending_reasons"], timeout=120)
        assert current["slurm"]["pending_reasons"] == {"PartitionConfig": 2}
        assert current["slurm"]["array_tasks"] == {"PENDING": 2}
        assert current["slurm"]["never_starts"].startswith("PartitionConfig: the partition cannot give")
        table = cli(cluster, "status", str(run), env={"COLUMNS": "300"}).stdout
        assert "waiting: PartitionConfig (2)" in table and "these tasks can never start" in table
    finally:
        cli(cluster, "cancel", str(run))


@pytest.mark.slurm
def test_the_site_dev_profile_runs_on_the_dev_cluster_as_it_is(tmp_path: Path, cluster: ClusterInfo) -> None:
    run = planned(tmp_path, cluster, docs=40, shard_docs=5)
    out = cli(cluster, "launch", str(run), "--executor", "slurm", "--profile", "site-dev",
              faults={"delay_s": 0.2}).stdout
    assert "(2 tasks)" in out
    # While the array tasks generate, status shows their live time split and rate, as for local workers.
    live = wait_status(cluster, run, lambda s: s["live_workers"] == 2 and all(
        t["generation_s"] > 1 for t in s["tasks"]) or s["shards"]["done"] == 8)
    assert live["shards"]["done"] < 8, "the run ended before status saw it live"
    assert live["tokens_per_s"] > 0 and live["eta_s"] is not None
    assert all(t["task"] and t["idle_s"] < t["generation_s"] for t in live["tasks"]), live["tasks"]
    final = wait_for(cluster, run, 8)
    assert final["shards"]["done"] == 8 and final["records_done"] == 80
    job = job_ids(run)[0]
    script = (run / "slurm" / job / f"{job}_submission.sh").read_text()
    assert "#SBATCH --cpus-per-task=2\n" in script and "#SBATCH --mem=2GB\n" in script


@pytest.mark.slurm
def test_a_failing_setup_line_fails_the_task_with_its_message_in_status(tmp_path: Path,
                                                                      cluster: ClusterInfo) -> None:
    run = planned(tmp_path, cluster, docs=5)
    profile = tmp_path / "site.yaml"
    profile.write_text("slurm:\n  array_tasks: 1\n  setup:\n    - source /nonexistent/venv/bin/activate\n")
    cli(cluster, "launch", str(run), "--executor", "slurm", "--profile", str(profile))
    wait_sacct(cluster, job_ids(run)[0], {"FAILED"})
    current = wait_status(cluster, run, lambda s: s["slurm"]["failed_tasks"])
    failed = current["slurm"]["failed_tasks"][0]
    assert failed["setup_error"] == "hpcsynth: setup line failed (exit 1): source /nonexistent/venv/bin/activate"
    assert current["shards"]["done"] == 0 and not (run / "tasks").exists()  # no worker ran in a wrong env
    table = cli(cluster, "status", str(run), env={"COLUMNS": "300"}).stdout
    assert f"array task {failed['task']} failed: hpcsynth: setup line failed (exit 1)" in table
