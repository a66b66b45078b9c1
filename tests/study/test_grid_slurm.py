"""A 2 x 2 grid with two mix-ins on the real dev Slurm cluster: one array per generator (each task one
engine start), status per cell, then every dataset's reduce as a CPU array and a merge job, and the
trainer's arguments once the merges are done. Fake engines: the Slurm path is what is tested here."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from conftest import write_corpus
from slurm_cluster import ClusterInfo, hpcsynth_on as cli

pytestmark = pytest.mark.slurm

CONFIG = """\
prompts: [faq, math]
plan: {{inputs: [{corpus}], shard_docs: 4}}
model: {{engine: fake, path: fake-a}}
worker: {{flush_interval_s: 0.2, heartbeat_interval_s: 0.5, lease_timeout_s: 120}}
reduce: {{tokenizer: {tokenizer}, min_chars: 1}}
validate: {{action: keep}}
slurm: {{array_tasks: 2, partition: gpu, gpus_per_task: 1, cpus_per_task: 1, mem_gb: 1, time_min: 20}}
grid:
  generators:
    - {{name: a}}
    - {{name: b, model: {{path: fake-b}}, slurm: {{array_tasks: 1, job_name: grid-b}}}}
  mixins:
    - {{name: none, original_ratio: 0}}
    - {{name: web, original_ratio: 1.0}}
"""


def wait(what, timeout: float, describe) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            raise AssertionError(describe())
        time.sleep(1)


def test_grid_on_slurm(tmp_path: Path, cluster: ClusterInfo, tiny_model: Path) -> None:
    config = tmp_path / "grid.yaml"
    config.write_text(CONFIG.format(corpus=write_corpus(tmp_path / "c.jsonl", 12), tokenizer=tiny_model))
    run = tmp_path / "run"
    cli(cluster, "plan", str(config), "--run", str(run))
    out = cli(cluster, "launch", str(run), "--executor", "slurm").stdout
    assert "a (slurm): 3 shards pending" in out and "(2 tasks)" in out
    assert "b (slurm): 3 shards pending" in out and "(1 tasks)" in out

    def status() -> dict:
        return orjson.loads(cli(cluster, "status", str(run), "--json").stdout)

    def logs() -> str:
        return "\n".join(p.read_text()[-800:] for p in run.glob("generators/*/logs/*.log"))

    wait(lambda: all(c["state"] == "done" for c in status()["cells"]), 200, lambda: f"{status()}\n{logs()}")
    final = status()
    assert [(c["generator"], c["prompt"], c["records"]) for c in final["cells"]] == [
        ("a", "faq", 12), ("a", "math", 12), ("b", "faq", 12), ("b", "math", 12)]
    jobs = {}
    for name, tasks in (("a", 2), ("b", 1)):
        sub = run / "generators" / name
        launches = [orjson.loads(p.read_bytes()) for p in (sub / "launches").glob("*.json")]
        assert len(launches) == 1 and [a["tasks"] for a in launches[0]["arrays"]] == [tasks], "one array"
        jobs[name] = launches[0]["arrays"][0]["job_id"]
        # One engine start per array task, each pulling the generator's shards (both prompts per request stream).
        workers = [orjson.loads(p.read_bytes()) for p in (sub / "tasks").glob("*.json")]
        assert len(workers) <= tasks and sum(w["shards_done"] for w in workers) == 3
    assert jobs["a"] != jobs["b"]
    script = next((run / "generators" / "b" / "slurm" / jobs["b"]).glob("*_submission.sh")).read_text()
    assert "#SBATCH --job-name=grid-b\n" in script, "a generator's own slurm: keys reach its array"

    said = cli(cluster, "reduce", str(run), "--executor", "slurm").stdout
    assert "8 datasets submitted" in said and said.count("merge job") == 8
    reports = [run / "datasets" / f"{g}-{p}-{m}" / "report.json" for g in "ab" for p in ("faq", "math")
               for m in ("none", "web")]
    wait(lambda: all(r.exists() for r in reports), 300,
         lambda: "\n".join(p.read_text()[-500:] for p in run.glob("datasets/*/slurm/*/*.out")))
    assert "8 of 8 datasets" in cli(cluster, "reduce", str(run), "--train-args").stdout
    train = (run / "datasets" / "TRAIN.md").read_text()
    for report in reports:
        data = orjson.loads(report.read_bytes())
        assert f"--data-path {data['prefix']}" in train and data["synthetic_documents"] == 12
        assert (data["original_documents"] > 0) == report.parent.name.endswith("-web")
        assert "is whole" in cli(cluster, "verify", str(report.parent)).stdout


def test_cancel_stops_every_generators_array(tmp_path: Path, cluster: ClusterInfo, tiny_model: Path) -> None:
    config = tmp_path / "grid.yaml"
    config.write_text(CONFIG.format(corpus=write_corpus(tmp_path / "c.jsonl", 12), tokenizer=tiny_model))
    run = tmp_path / "run"
    cli(cluster, "plan", str(config), "--run", str(run))
    env = {**cluster.env, "HPCSYNTH_FAKE_FAULTS": '{"delay_s": 2}'}
    subprocess.run([sys.executable, "-m", "hpcsynth", "launch", str(run), "--executor", "slurm"], env=env,
                   check=True, capture_output=True, timeout=120)
    jobs = [orjson.loads(p.read_bytes())["arrays"][0]["job_id"] for p in run.glob("generators/*/launches/*.json")]
    assert len(jobs) == 2
    said = cli(cluster, "cancel", str(run)).stdout
    assert all(job in said for job in jobs), said

    def cancelled() -> bool:
        out = subprocess.run(["sacct", "-X", "-n", "-P", "-j", ",".join(jobs), "-o", "State"], env=cluster.env,
                             capture_output=True, text=True).stdout.splitlines()
        return bool(out) and all(state.startswith("CANCELLED") for state in out)

    wait(cancelled, 60, lambda: "jobs not cancelled")
