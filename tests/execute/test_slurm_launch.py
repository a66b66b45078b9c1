"""`hpcsynth launch --executor slurm` against the real single-node cluster (slurm/start-cluster.sh).

Arrays end to end, a real preemption, a time-limit requeue, `scontrol requeue`, array splitting,
cancel, a failing shard in status, fake GPUs reaching the worker, and the one-line errors.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from hpcsynth.files import read_jsonl_zst

from conftest import write_corpus
from slurm_cluster import ClusterInfo

pytestmark = pytest.mark.slurm

CONFIG = """\
prompts: [faq, math]
plan: {{shard_docs: {shard_docs}}}
model: {{engine: fake}}
worker: {{flush_interval_s: 0.2, heartbeat_interval_s: 0.5, lease_timeout_s: 120}}
slurm: {{array_tasks: {tasks}, partition: {partition}, gpus_per_task: {gpus}, cpus_per_task: 1, mem_gb: 1,
        time_min: {time_min}, signal_delay_s: {signal_delay}}}
"""


def cli(cluster: ClusterInfo, *args: str, faults: dict | None = None, env: dict | None = None,
        check: bool = True) -> subprocess.CompletedProcess:
    environ = {**cluster.env, "HPCSYNTH_FAKE_FAULTS": json.dumps(faults or {}), **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "hpcsynth", *args], env=environ, capture_output=True, text=True,
                          timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"hpcsynth {' '.join(args)}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def planned(tmp_path: Path, cluster: ClusterInfo, docs: int = 20, shard_docs: int = 5, tasks: int = 2,
            partition: str = "gpu", gpus: int = 1, time_min: int = 20, signal_delay: int = 30) -> Path:
    corpus = write_corpus(tmp_path / "corpus.jsonl", docs)
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(shard_docs=shard_docs, tasks=tasks, partition=partition, gpus=gpus,
                                    time_min=time_min, signal_delay=signal_delay))
    run = tmp_path / "run"
    cli(cluster, "plan", str(config), "--run", str(run), "--input", str(corpus))
    return run


def status(cluster: ClusterInfo, run: Path) -> dict:
    return orjson.loads(cli(cluster, "status", str(run), "--json").stdout)


def wait_for(cluster: ClusterInfo, run: Path, done: int, timeout: float = 150.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = status(cluster, run)
        if current["shards"]["done"] >= done or current["shards"]["failed"]:
            return current
        time.sleep(1)
    raise AssertionError(f"not done after {timeout}s: {current}\n{_logs(run)}")


def wait_sacct(cluster: ClusterInfo, job: str, states: set[str], timeout: float = 90.0, tasks: int = 1) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["sacct", "-X", "-n", "-P", "-j", job, "-o", "JobID,State"], env=cluster.env,
                             capture_output=True, text=True).stdout
        lines = [line for line in out.splitlines() if "|" in line]
        seen = {line.split("|")[1].split()[0] for line in lines}
        if len(lines) >= tasks and seen <= states:
            return out
        time.sleep(1)
    raise AssertionError(f"job {job} never reached {states}: {out}")


def job_ids(run: Path) -> list[str]:
    return [a["job_id"] for p in sorted((run / "launches").glob("*.json")) for a in orjson.loads(p.read_bytes())["arrays"]]


def records(run: Path) -> list[str]:
    return [r["id"] for p in sorted((run / "outputs").glob("*.jsonl.zst")) for r in read_jsonl_zst(p)]


def expected_ids(docs: int, shard_docs: int) -> list[str]:
    return [f"{i // shard_docs:06d}-{i % shard_docs:06d}/{p}" for i in range(docs) for p in ("faq", "math")]


def _logs(run: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted((run / "logs").glob("*.log")))


def test_array_end_to_end_with_fake_gpus(tmp_path: Path, cluster: ClusterInfo) -> None:
    run = planned(tmp_path, cluster, docs=30, tasks=2)
    out = cli(cluster, "launch", str(run), "--executor", "slurm", faults={"delay_s": 0.02}).stdout
    assert "6 shards pending" in out and "(2 tasks)" in out
    final = wait_for(cluster, run, 6)
    assert final["shards"]["done"] == 6 and final["records_done"] == 60
    assert records(run) == expected_ids(30, 5)
    job = job_ids(run)[0]
    script = (run / "slurm" / job / f"{job}_submission.sh").read_text()
    for line in ("--array=0-1%2", "--gres=gpu:1", "--partition=gpu", "--cpus-per-task=1", "--mem=1GB",
                 "--time=20", "--signal=USR2@30", "--job-name=hpcsynth"):
        assert f"#SBATCH {line}\n" in script, line
    wait_sacct(cluster, job, {"COMPLETED"}, tasks=2)
    after = status(cluster, run)
    assert after["slurm"]["array_tasks"] == {"COMPLETED": 2} and after["slurm"]["sacct_calls"] == 1
    worker_logs = sorted((run / "logs").glob("worker-*.log"))
    # Named as docs/run-directory.md says: worker-JOB_TASK-rRESTART.log
    assert [p.name for p in worker_logs] == [f"worker-{job}_{i}-r0.log" for i in (0, 1)], worker_logs
    seen = {re.search(r"CUDA_VISIBLE_DEVICES=(\d+)", p.read_text()).group(1) for p in worker_logs}
    assert len(seen) == 2, "each array task got its own fake GPU"
    assert after["workers"] == 2 and after["worker_hours"]["generation_s"] > 0
    # A relaunch finds nothing to do and submits nothing.
    assert "nothing to submit" in cli(cluster, "launch", str(run), "--executor", "slurm").stdout


def test_preemption_requeues_and_resumes(tmp_path: Path, cluster: ClusterInfo) -> None:
    run = planned(tmp_path, cluster, docs=40, tasks=1, partition="low", gpus=4, time_min=30)
    cli(cluster, "launch", str(run), "--executor", "slurm", faults={"delay_s": 0.25})
    job = job_ids(run)[0]
    _wait_progress(cluster, run, records_done=12)
    high = subprocess.run(["sbatch", "--parsable", "-p", "high", "--gres=gpu:1", "-c", "1", "--mem=256M",
                           "-o", str(tmp_path / "high-%j.out"), "--wrap", "sleep 2"], env=cluster.env, capture_output=True, text=True, check=True)
    wait_sacct(cluster, high.stdout.strip(), {"COMPLETED"}, timeout=120)
    final = wait_for(cluster, run, 8, timeout=240)
    assert final["shards"]["done"] == 8, final
    ids = records(run)
    assert ids == expected_ids(40, 5) and len(set(ids)) == len(ids)
    history = subprocess.run(["sacct", "-X", "-n", "-P", "-D", "-j", job, "-o", "JobID,State"], env=cluster.env,
                             capture_output=True, text=True).stdout
    assert "PREEMPTED" in history or "REQUEUED" in history, history
    logs = _logs(run)
    assert "checkpoint: requeueing" in logs
    resumed = [orjson.loads(p.read_bytes())["resumed_records"] for p in (run / "done").glob("*.json")]
    assert sum(resumed) > 0, "the requeued task resumed from the progress log, not from scratch"


def test_scontrol_requeue_resumes_from_disk(tmp_path: Path, cluster: ClusterInfo) -> None:
    run = planned(tmp_path, cluster, docs=30, tasks=1, time_min=30)
    cli(cluster, "launch", str(run), "--executor", "slurm", faults={"delay_s": 0.2})
    job = job_ids(run)[0]
    _wait_progress(cluster, run, records_done=10)
    subprocess.run(["scontrol", "requeue", job], env=cluster.env, check=True, capture_output=True)
    final = wait_for(cluster, run, 6, timeout=240)
    assert final["shards"]["done"] == 6
    assert records(run) == expected_ids(30, 5)
    resumed = [orjson.loads(p.read_bytes())["resumed_records"] for p in (run / "done").glob("*.json")]
    assert sum(resumed) > 0


def test_time_limit_requeues_and_completes(tmp_path: Path, cluster: ClusterInfo) -> None:
    # Limits are checked every 30 s; a 1-minute limit with USR2 45 s early lands within ~15-45 s, so the
    # work (120 records x 0.6 s = 72 s) must outlast that.
    run = planned(tmp_path, cluster, docs=60, tasks=1, time_min=1, signal_delay=45)
    cli(cluster, "launch", str(run), "--executor", "slurm", faults={"delay_s": 0.6})
    final = wait_for(cluster, run, 12, timeout=300)
    assert final["shards"]["done"] == 12
    assert records(run) == expected_ids(60, 5)
    assert "checkpoint: requeueing" in _logs(run)


def test_arrays_split_at_max_array_size(tmp_path: Path, cluster: ClusterInfo) -> None:
    run = planned(tmp_path, cluster, docs=35, tasks=1)
    profile = tmp_path / "site.yaml"
    profile.write_text("slurm: {shards_per_task: 1, max_array_size: 3, partition: gpu, cpus_per_task: 1, "
                       "mem_gb: 1, array_parallelism: 2, sbatch: [comment=hpcsynth-test], "
                       "setup: ['export HPCSYNTH_SETUP_RAN=1']}\n")
    out = cli(cluster, "launch", str(run), "--executor", "slurm", "--profile", str(profile)).stdout
    launch = orjson.loads(next((run / "launches").glob("*.json")).read_bytes())
    assert [a["tasks"] for a in launch["arrays"]] == [3, 3, 1] and out.count("tasks)") == 3
    script = (run / "slurm" / launch["arrays"][0]["job_id"] / f"{launch['arrays'][0]['job_id']}_submission.sh")
    text = script.read_text()
    assert "#SBATCH --array=0-2%2\n" in text and "#SBATCH --comment=hpcsynth-test\n" in text
    assert "export HPCSYNTH_SETUP_RAN=1" in text
    assert wait_for(cluster, run, 7)["shards"]["done"] == 7
    assert records(run) == expected_ids(35, 5)


def test_max_array_size_is_read_from_the_cluster(cluster: ClusterInfo) -> None:
    from hpcsynth.config import SlurmConfig
    from hpcsynth.execute.slurm import max_array_size

    os.environ["SLURM_CONF"] = str(cluster.conf)
    conf = cluster.conf.read_text()
    assert max_array_size(SlurmConfig()) == int(re.search(r"MaxArraySize=(\d+)", conf).group(1))


def test_cancel_stops_jobs_and_keeps_finished_work(tmp_path: Path, cluster: ClusterInfo) -> None:
    run = planned(tmp_path, cluster, docs=40, tasks=1)
    cli(cluster, "launch", str(run), "--executor", "slurm", faults={"delay_s": 0.3})
    _wait_progress(cluster, run, records_done=12)
    again = cli(cluster, "launch", str(run), "--executor", "slurm", check=False)
    assert again.returncode == 2 and "already has Slurm jobs pending or running" in again.stderr
    out = cli(cluster, "cancel", str(run)).stdout
    job = job_ids(run)[0]
    assert f"cancelled Slurm jobs {job}" in out
    wait_sacct(cluster, job, {"CANCELLED"})
    current = status(cluster, run)
    assert current["shards"]["done"] >= 1 and current["shards"]["done"] < 8
    assert current["slurm"]["array_tasks"] == {"CANCELLED": 1}
    assert current["shards"]["stale"] >= 1, "the cancelled task's shard shows as stale, not running"


def test_failing_shard_shows_in_status_with_log_tail(tmp_path: Path, cluster: ClusterInfo) -> None:
    run = planned(tmp_path, cluster, docs=20, tasks=1)
    cli(cluster, "launch", str(run), "--executor", "slurm", faults={"crash_on": "Document 7 "})
    final = wait_for(cluster, run, 4)
    failures = final["failed_shards"]
    assert [f["shard"] for f in failures] == [1]
    assert "engine crashed (injected)" in failures[0]["reason"]
    assert any("shard 1 failed" in line for line in failures[0]["log_tail"]), failures[0]
    table = cli(cluster, "status", str(run)).stdout
    assert "failed" in table and "engine crashed" in table
    # The array task reports the failure to Slurm too.
    wait_sacct(cluster, job_ids(run)[0], {"FAILED"})


def test_unknown_partition_is_one_line(tmp_path: Path, cluster: ClusterInfo) -> None:
    run = planned(tmp_path, cluster, docs=5, partition="nosuchpartition")
    proc = cli(cluster, "launch", str(run), "--executor", "slurm", check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "sbatch refused the array" in proc.stderr and "partition" in proc.stderr.lower()


def test_no_slurm_on_path_suggests_local(tmp_path: Path, cluster: ClusterInfo) -> None:
    run = planned(tmp_path, cluster, docs=5)
    bare = tmp_path / "bin"
    bare.mkdir()
    proc = cli(cluster, "launch", str(run), "--executor", "slurm", env={"PATH": str(bare)}, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "not on PATH" in proc.stderr and "--executor local" in proc.stderr


def test_changed_config_is_refused_unless_forced(tmp_path: Path, cluster: ClusterInfo) -> None:
    run = planned(tmp_path, cluster, docs=5)
    changed = tmp_path / "changed.yaml"
    changed.write_text((tmp_path / "config.yaml").read_text().replace("prompts: [faq, math]", "prompts: [faq]")
                       + "sampling: {temperature: 0.5}\n")
    proc = cli(cluster, "launch", str(run), "--config", str(changed), check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "prompts, sampling.temperature" in proc.stderr and "--force" in proc.stderr
    proc = cli(cluster, "launch", str(run), "--config", str(changed), "--force")
    assert "1/1 shards done" in proc.stdout


def _wait_progress(cluster: ClusterInfo, run: Path, records_done: int, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if status(cluster, run)["records_done"] >= records_done:
            return
        time.sleep(0.5)
    raise AssertionError(f"no progress after {timeout}s\n{_logs(run)}")


def test_sacct_is_on_path(cluster: ClusterInfo) -> None:
    assert shutil.which("sacct", path=cluster.env.get("PATH")) is not None
