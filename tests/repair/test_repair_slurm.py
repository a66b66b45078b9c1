"""`hpcsynth repair --executor slurm` on the real single-node cluster (slurm/start-cluster.sh), with the shipped
site-dev profile: an attempt's sub-runs are submitted as arrays and `repair` returns; run again while they
run it waits (submits nothing twice), once they end it validates the attempt and submits the next;
`scontrol requeue` of a running sub-run task resumes from its progress log and commits each record once;
`hpcsynth cancel RUN` cancels the repair sub-runs' jobs; what was cancelled is finished by a local repair.

Before: cancel left the repair sub-runs' jobs running ("has no local workers or Slurm jobs to cancel")."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from hpcsynth.files import read_json
from hpcsynth.rundir import RunDir

from conftest import REPO, run_cli
from slurm_cluster import ClusterInfo
from test_repair import outputs, refusing_run, truncated

pytestmark = pytest.mark.slurm


def cli(cluster: ClusterInfo, *args: str | Path, faults: dict | None = None) -> subprocess.CompletedProcess:
    """hpcsynth as a process, from the repository (the array tasks import the code it submits from there)."""
    environ = {**cluster.env, "HPCSYNTH_FAKE_FAULTS": json.dumps(faults or {})}
    proc = subprocess.run([sys.executable, "-m", "hpcsynth", *map(str, args)], env=environ, capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, f"hpcsynth {args}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def jobs_of(run: RunDir, attempt: int) -> list[str]:
    return [a["job_id"] for path in sorted(run.repair_dir.glob(f"attempt-{attempt}/*/launches/*.json"))
            for a in orjson.loads(path.read_bytes())["arrays"]]


def queued(cluster: ClusterInfo, jobs: list[str], state: str = "") -> list[str]:
    """The array tasks of `jobs` Slurm still holds (in `state`: R, PD), as JOB_TASK."""
    command = ["squeue", "-h", "-r", "-j", ",".join(jobs), "-o", "%i"] + (["-t", state] if state else [])
    return subprocess.run(command, env=cluster.env, capture_output=True, text=True).stdout.split()


def wait(what, timeout: float, why: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = what()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:g}s: {why}")


def logs(run: RunDir) -> str:
    paths = sorted(run.repair_dir.glob("attempt-*/*/logs/*.log"))
    return "\n".join(f"--- {p}\n{p.read_text()[-1500:]}" for p in paths)


def test_repair_on_slurm_submits_resumes_a_requeued_task_and_is_cancelled(tmp_path: Path,
                                                                          cluster: ClusterInfo) -> None:
    run = refusing_run(tmp_path, docs=40, shard_docs=10)
    refused = truncated(outputs(run))
    # A sub-run shard of ~9 records takes ~11 s: a task requeued two records in still works on it when
    # Slurm kills it (KillWait, 5 s on the dev cluster), so its next incarnation resumes from the log.
    slow = {"delay_s": 1.2}
    try:
        first = cli(cluster, "repair", run.root, "--attempts", "2", "--executor", "slurm", "--profile", "site-dev",
                    faults=slow)
        assert first.stdout.count(": submitted ") == 2 and "waiting for attempt-1/" in first.stdout, first.stdout
        jobs = jobs_of(run, 1)
        assert len(jobs) == 2, jobs
        again = cli(cluster, "repair", run.root, "--attempts", "2", "--executor", "slurm", "--profile", "site-dev")
        assert "submitted" not in again.stdout and "waiting for attempt-1/" in again.stdout, again.stdout
        assert jobs_of(run, 1) == jobs, "an attempt whose jobs Slurm holds is not submitted twice"

        # The running tasks of one sub-run, requeued once it holds records not yet committed.
        sub = next(s for a, _, s in run.repair_runs() if a == 1)
        sub_job = [a["job_id"] for p in sub.launches_dir.glob("*.json")
                   for a in orjson.loads(p.read_bytes())["arrays"]]
        wait(lambda: any(len(p.read_bytes().splitlines()) > 2 for p in sub.root.glob("work/*/records.jsonl")),
             90, f"no sub-run records in progress\n{logs(run)}")
        for task in wait(lambda: queued(cluster, sub_job, "R"), 30, "no running task to requeue"):
            subprocess.run(["scontrol", "requeue", task], env=cluster.env, check=True, capture_output=True)
        wait(lambda: not queued(cluster, jobs), 240, f"attempt 1's jobs never ended\n{logs(run)}")
        resumed = [read_json(p)["resumed_records"] for p in sub.root.glob("done/*.json")]
        assert len(resumed) == sub.shard_count() and sum(resumed) > 0, "the requeued task resumed from its log"
        ids = [r["id"] for a, _, s in run.repair_runs() if a == 1 for r in outputs(s)]
        assert Counter(ids).most_common(1)[0][1] == 1 and set(ids) == refused, "each (record, attempt 1) once"
        seen = orjson.loads(cli(cluster, "status", run.root, "--json").stdout)["repair"]
        assert all(e["shards_done"] == e["shards"] for e in seen if e["attempt"] == 1), seen

        # Run again once the jobs ended: attempt 1 is validated and attempt 2 submitted; cancel RUN cancels it.
        second = cli(cluster, "repair", run.root, "--attempts", "2", "--executor", "slurm", "--profile", "site-dev",
                     faults=slow)
        assert "attempt 2: planned" in second.stdout and "waiting for attempt-2/" in second.stdout, second.stdout
        later = jobs_of(run, 2)
        assert later and queued(cluster, later)
        cancelled = cli(cluster, "cancel", run.root)
        said = [x.removeprefix("cancelled Slurm jobs ") for x in cancelled.stdout.splitlines()
                if x.startswith("cancelled Slurm jobs ")]
        assert said and set(later) <= set(said[0].split(", ")), cancelled.stdout
        assert f"`hpcsynth repair {run.root}` goes on" in cancelled.stdout
        wait(lambda: not queued(cluster, later), 60, "the cancelled repair jobs are still queued")
        history = subprocess.run(["sacct", "-X", "-n", "-P", "-j", ",".join(later), "-o", "State"], env=cluster.env,
                                 capture_output=True, text=True).stdout.splitlines()
        assert history and {state.split()[0] for state in history} <= {"CANCELLED", "COMPLETED"}, history
    finally:  # nothing of this test left queued, whatever failed
        left = jobs_of(run, 1) + jobs_of(run, 2)
        if left:
            subprocess.run(["scancel", "--", *left], env=cluster.env, capture_output=True)

    # What the cancel left is finished here; the report is written and each record of each attempt is once.
    done = run_cli("repair", run.root, "--attempts", "2")
    assert done.returncode == 0, done.stderr
    report = read_json(run.repair_report_path)
    assert report["attempts_finished"] == 2
    for attempt in (1, 2):
        ids = [r["id"] for a, _, s in run.repair_runs() if a == attempt for r in outputs(s)]
        assert len(ids) == len(set(ids)) and set(ids) <= refused
