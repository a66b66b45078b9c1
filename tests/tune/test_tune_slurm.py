"""`hpcsynth tune --executor slurm` on the real single-node cluster (slurm/start-cluster.sh) with the shipped
site-dev profile: the login side prepares the tune directory, one job runs every trial on the node, and the
table and winner come back as from a local tune."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import yaml

from conftest import REPO, write_corpus
from slurm_cluster import ClusterInfo

pytestmark = pytest.mark.slurm


def test_tune_runs_its_trials_as_one_slurm_job(cluster: ClusterInfo, tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "sample.jsonl", 30)
    config = tmp_path / "tune.yaml"
    config.write_text(yaml.safe_dump({"model": {"engine": "fake", "path": "fake-model"}, "prompts": ["faq", "math"],
                                      "sampling": {"max_tokens": 32}}))
    environ = {**cluster.env, "HPCSYNTH_FAKE_FAULTS": json.dumps({"step_s": 0.02, "oom_above": 4})}
    proc = subprocess.run([sys.executable, "-m", "hpcsynth", "tune", str(config), "--input", str(corpus), "--out",
                           str(tmp_path / "tune"), "--try", "worker.batch_size=2,4,8", "--budget", "5",
                           "--executor", "slurm", "--profile", "site-dev", "--json"],
                          env=environ, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    data = orjson.loads(proc.stdout)
    states = [(t["settings"].get("worker.batch_size", 8), t["state"]) for t in data["trials"]]
    assert states == [(8, "oom"), (2, "ok"), (4, "ok")], states
    assert data["winner"]["settings"] == {"worker.batch_size": 4}
    # The trials ran inside the job: its log shows them, under the tune directory's slurm/ folder.
    logs = list((tmp_path / "tune" / "slurm").rglob("*_log.out"))
    assert logs and any("trial 2" in log.read_text() for log in logs), logs


def test_a_requeued_tune_job_goes_on_from_the_trials_it_finished(cluster: ClusterInfo, tmp_path: Path) -> None:
    """`scontrol requeue` of the running tune job (as preemption does): the job starts again and its search
    keeps the trials tune.json holds; the tune waiting on it gets the whole table."""
    import time

    corpus = write_corpus(tmp_path / "sample.jsonl", 30)
    config = tmp_path / "tune.yaml"
    config.write_text(yaml.safe_dump({"model": {"engine": "fake", "path": "fake-model"}, "prompts": ["faq", "math"],
                                      "sampling": {"max_tokens": 32}}))
    environ = {**cluster.env, "HPCSYNTH_FAKE_FAULTS": json.dumps({"step_s": 0.3})}  # ~5 s per trial
    out = tmp_path / "tune"
    proc = subprocess.Popen([sys.executable, "-m", "hpcsynth", "tune", str(config), "--input", str(corpus), "--out",
                             str(out), "--try", "worker.batch_size=1,2,4", "--budget", "5", "--executor", "slurm",
                             "--profile", "site-dev", "--json"], env=environ, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)
    deadline = time.monotonic() + 120
    first: list = []
    while time.monotonic() < deadline and not first:
        if (out / "tune.json").exists():
            first = [t for t in orjson.loads((out / "tune.json").read_bytes())["trials"] if t["state"] == "ok"]
        time.sleep(0.2)
    assert first, "no trial finished in the job"
    (job,) = [p.name for p in (out / "slurm").iterdir() if p.name.startswith("tune-")]
    subprocess.run(["scontrol", "requeue", job.removeprefix("tune-")], env=cluster.env, check=True,
                   capture_output=True)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    data = orjson.loads(stdout)
    assert [t["settings"] for t in data["trials"]] == [{}, {"worker.batch_size": 1}, {"worker.batch_size": 2},
                                                       {"worker.batch_size": 4}]
    assert data["trials"][0] == first[0]  # measured before the requeue, kept as it was
    assert data["winner"]["settings"] == {}  # batch 8, the config's own, is the fastest
