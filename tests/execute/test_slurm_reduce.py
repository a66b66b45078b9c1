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
reduce: {{tokenizer: {tokenizer}, part_shards: 1, bucket_docs: 4, min_chars: 1}}
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
    config.write_text(CONFIG.format(tokenizer=tiny_model))
    run = tmp_path / "run"
    cli(cluster, "plan", str(config), "--run", str(run), "--input", str(write_corpus(tmp_path / "c.jsonl", 15)))
    cli(cluster, "launch", str(run))
    cli(cluster, "reduce", str(run), "--out", str(tmp_path / "local"))
    out = tmp_path / "slurm"
    said = cli(cluster, "reduce", str(run), "--out", str(out), "--executor", "slurm").stdout
    assert "5 parts pending in array" in said and "merge job" in said
    deadline = time.monotonic() + 240
    while not (out / "report.json").exists() and time.monotonic() < deadline:
        time.sleep(1)
    logs = "\n".join(p.read_text()[-800:] for p in out.glob("slurm/*/*.out"))
    assert (out / "report.json").exists(), logs
    for name in ("mix.bin", "mix.idx", "mix.docs.jsonl"):
        assert (out / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    assert orjson.loads((out / "report.json").read_bytes())["parts"] == 5
    assert "is whole" in cli(cluster, "verify", str(out)).stdout


REQUEUE_CONFIG = """\
prompts: [faq]
plan: {{shard_docs: 15}}
model: {{engine: fake}}
reduce: {{tokenizer: {tokenizer}, part_shards: 1, bucket_docs: 50, min_chars: 1}}
validate: {{action: keep}}  # the fake engine's words have no format to validate
slurm: {{array_tasks: 2, partition: debug, gpus_per_task: 0, cpus_per_task: 1, mem_gb: 1, time_min: 20}}
"""


def task_process(array: str, task: int) -> int | None:
    """The Python process of one array task on this (single-node) cluster, found by its Slurm environment."""
    wanted = {f"SLURM_ARRAY_JOB_ID={array}".encode(), f"SLURM_ARRAY_TASK_ID={task}".encode()}
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if wanted <= set(environ.read_bytes().split(b"\0")) and b"submitit" in (environ.parent / "cmdline").read_bytes():
                return int(environ.parent.name)
        except OSError:  # gone, or not ours to read
            continue
    return None


def test_reduce_task_killed_mid_run_and_requeued_gives_the_same_bytes(tmp_path: Path, cluster: ClusterInfo,
                                                                         tiny_model: Path) -> None:
    """Preemption of a reduce array task: its process is stopped with some of its parts done and the rest
    to do, `scontrol requeue`d and killed; Slurm starts the task again, which skips the parts done before
    and redoes the others, and the merge (afterok on the array) writes the bytes of an uninterrupted reduce."""
    import os
    import re
    import signal

    from hpcsynth.generate.pull import pull_shards

    config = tmp_path / "config.yaml"
    config.write_text(REQUEUE_CONFIG.format(tokenizer=tiny_model))
    corpus = tmp_path / "c.jsonl"  # long originals to mix in: each part takes a few tenths of a second
    corpus.write_bytes(b"".join(orjson.dumps({"id": f"doc-{i}", "text": f"Document {i}.\n" + " ".join(
        f"word{(i * 13 + j) % 997}" for j in range(3000))}) + b"\n" for i in range(600)))
    run = tmp_path / "run"
    cli(cluster, "plan", str(config), "--run", str(run), "--input", str(corpus))
    pull_shards(run)
    cli(cluster, "reduce", str(run), "--out", str(tmp_path / "local"))
    out = tmp_path / "slurm"
    said = cli(cluster, "reduce", str(run), "--out", str(out), "--executor", "slurm").stdout
    array = re.search(r"parts pending in array (\d+)", said).group(1)
    parts = out / "parts"
    ours = [f"part-{i:06d}.done.json" for i in range(0, 40, 2)]  # task 0's group: every other part

    def done() -> list[str]:
        return [name for name in ours if (parts / name).exists()]

    deadline = time.monotonic() + 180
    pid = None
    while time.monotonic() < deadline and not (pid and done()):
        pid = pid or task_process(array, 0)
        time.sleep(0.01)
    assert pid, f"array task {array}_0 never ran a part"
    os.kill(pid, signal.SIGSTOP)  # frozen where it is: between or, far more likely, inside a part
    done_before = {name: (parts / name).stat().st_mtime_ns for name in done()}
    assert 1 <= len(done_before) < 20, f"{len(done_before)} of task 0's 20 parts done when it was stopped"
    subprocess.run(["scontrol", "requeue", f"{array}_0"], env=cluster.env, check=True, capture_output=True)
    os.kill(pid, signal.SIGKILL)  # as Slurm would once KillWait is over
    deadline = time.monotonic() + 240
    while not (out / "report.json").exists() and time.monotonic() < deadline:
        time.sleep(1)
    logs = "\n".join(p.read_text()[-800:] for p in out.glob("slurm/*/*.out"))
    assert (out / "report.json").exists(), logs
    shown = subprocess.run(["scontrol", "show", "job", f"{array}_0"], env=cluster.env, capture_output=True,
                           text=True).stdout
    assert "Restarts=1" in shown, shown  # the task really ran twice
    for name in ("mix.bin", "mix.idx", "mix.docs.jsonl"):
        assert (out / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    # Parts finished before the kill were kept, not redone; the rest were made by the second start.
    assert all((parts / name).stat().st_mtime_ns == ns for name, ns in done_before.items())
    assert len(list(parts.glob("*.done.json"))) == 40 and not list(parts.glob(".part-*.tmp"))
    assert "is whole" in cli(cluster, "verify", str(out)).stdout
