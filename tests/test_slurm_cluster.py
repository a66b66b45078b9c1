"""The dev cluster itself: real sbatch jobs on the fake-GPU `gpu` partition, states read back with sacct."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

try:
    from slurm_cluster import ClusterInfo
except ImportError:  # tests/ not on sys.path (e.g. --import-mode=importlib)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from slurm_cluster import ClusterInfo

pytestmark = pytest.mark.slurm

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE", "REVOKED"}
WAIT_S = 60
CVD_LINE = re.compile(r"^CUDA_VISIBLE_DEVICES=(\d+(?:,\d+)*)$", re.M)
# the job prints what it saw; an empty value fails the regex above
REPORT = 'echo "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-}"; echo "SLURM_JOB_GPUS=${SLURM_JOB_GPUS:-}"'


def sbatch(cluster: ClusterInfo, *args: str) -> str:
    proc = subprocess.run(["sbatch", "--parsable", *args], env=cluster.env, capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, f"sbatch failed: {proc.stderr}"
    return proc.stdout.strip().split(";")[0]


def wait_for_states(cluster: ClusterInfo, job_id: str, count: int) -> dict[str, str]:
    """Poll sacct until `count` allocations of job_id (array tasks count one each) reached a final state."""
    deadline = time.monotonic() + WAIT_S
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        proc = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "JobID,State"],
                              env=cluster.env, capture_output=True, text=True, check=False)
        states = {}
        for line in proc.stdout.splitlines():
            jid, _, state = line.partition("|")
            if jid and "[" not in jid:  # "12_[0-1]": tasks not started yet
                states[jid] = state.split()[0] if state else ""
        if len(states) >= count and all(s in TERMINAL for s in states.values()):
            return states
        time.sleep(0.5)
    squeue = subprocess.run(["squeue", "-j", job_id], env=cluster.env, capture_output=True, text=True).stdout
    pytest.fail(f"job {job_id}: not {count} finished allocations within {WAIT_S} s; sacct: {states}\n{squeue}")


def test_gpu_job_completes_and_sees_a_gpu(cluster: ClusterInfo, tmp_path: Path) -> None:
    job_id = sbatch(cluster, "--partition=gpu", "--gres=gpu:1", f"--chdir={tmp_path}",
                    f"--output={tmp_path}/job-%j.out", "--job-name=hpcsynth-smoke", f"--wrap={REPORT}")
    assert wait_for_states(cluster, job_id, 1) == {job_id: "COMPLETED"}
    output = (tmp_path / f"job-{job_id}.out").read_text()
    assert CVD_LINE.search(output), output


def test_gpu_array_job_completes_each_task_sees_a_gpu(cluster: ClusterInfo, tmp_path: Path) -> None:
    job_id = sbatch(cluster, "--partition=gpu", "--gres=gpu:1", "--array=0-1", f"--chdir={tmp_path}",
                    f"--output={tmp_path}/array-%A_%a.out", "--job-name=hpcsynth-array",
                    f"--wrap={REPORT}; echo TASK=$SLURM_ARRAY_TASK_ID")
    assert wait_for_states(cluster, job_id, 2) == {f"{job_id}_0": "COMPLETED", f"{job_id}_1": "COMPLETED"}
    for task in (0, 1):
        output = (tmp_path / f"array-{job_id}_{task}.out").read_text()
        assert CVD_LINE.search(output), output
        assert f"TASK={task}" in output, output


def test_the_running_test_cluster_keeps_its_ports(cluster: ClusterInfo) -> None:
    from slurm_cluster import port_knobs

    conf = cluster.conf.read_text()
    knobs = port_knobs(cluster.dir)
    assert f"SlurmctldPort={knobs['HPCSYNTH_SLURM_PORT_BASE']}\n" in conf


@pytest.mark.parametrize("taken", [0, 1, 2, "db"])
def test_ports_taken_by_another_dev_cluster_are_avoided(taken) -> None:
    import socket

    from slurm_cluster import pick_free_ports

    base, db = 26817, 33306
    with socket.socket() as listener:  # stands in for a user's dev cluster on one of those ports
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", db if taken == "db" else base + taken))
        listener.listen()
        knobs = pick_free_ports(base, db)
    assert knobs == {"HPCSYNTH_SLURM_PORT_BASE": str(base + 10), "HPCSYNTH_SLURM_DB_PORT": str(db + 10)}


def test_a_second_cluster_starts_beside_a_running_one(cluster: ClusterInfo, tmp_path: Path) -> None:
    """The README's two paths: a dev cluster already holds the default ports (here: the tests' own, which
    stands in for a user's) and another cluster starts beside it on free ports and runs a job."""
    from slurm_cluster import ensure_cluster, port_knobs, stop_cluster

    import tempfile

    base = Path(tempfile.mkdtemp(prefix="hpcsynth-2nd-"))  # short: MariaDB's socket path has a length limit
    knobs = port_knobs(base)
    assert knobs["HPCSYNTH_SLURM_PORT_BASE"] not in cluster.conf.read_text()
    second = ensure_cluster(base, timeout=300)
    try:
        assert f"SlurmctldPort={knobs['HPCSYNTH_SLURM_PORT_BASE']}\n" in second.conf.read_text()
        job = sbatch(second, "--partition=gpu", "--gres=gpu:1", f"--output={tmp_path}/job-%j.out", "--wrap=true")
        assert wait_for_states(second, job, 1) == {job: "COMPLETED"}
    finally:
        stop_cluster(second)
        shutil.rmtree(base, ignore_errors=True)
        Path(f"{base}.lock").unlink(missing_ok=True)
    assert subprocess.run(["sinfo", "-h"], env=cluster.env, capture_output=True).returncode == 0
