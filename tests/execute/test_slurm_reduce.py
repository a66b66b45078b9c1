"""`hpcsynth reduce --executor slurm` on the real dev cluster: a CPU array over the parts, then a merge job;
the files are the same bytes as a local reduce."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from conftest import write_corpus
from slurm_cluster import ClusterInfo, hpcsynth_on as cli, wait_cancelled

pytestmark = pytest.mark.slurm

CONFIG = """\
prompts: [faq, math]
plan: {{shard_docs: 3}}
model: {{engine: fake}}
reduce: {{tokenizer: {tokenizer}, part_shards: 1, bucket_docs: 4, min_chars: 1,
         mix: {{sources: [{{name: run_originals, weight: 0.5}}, {{name: hq, path: "{corpus}", weight: 0.25}}]}}}}
validate: {{action: keep}}  # the fake engine's words have no format to validate
slurm: {{array_tasks: 3, partition: debug, gpus_per_task: 0, cpus_per_task: 1, mem_gb: 1, time_min: 20}}
"""


def test_slurm_reduce_matches_local(tmp_path: Path, cluster: ClusterInfo, tiny_model: Path) -> None:
    config = tmp_path / "config.yaml"
    # A mix-in corpus of two files: two more parts, one per file, in the same array.
    write_corpus(tmp_path / "hq" / "a.jsonl", 6, prefix="hq")
    write_corpus(tmp_path / "hq" / "b.jsonl", 6, prefix="hq-b")
    config.write_text(CONFIG.format(tokenizer=tiny_model, corpus=tmp_path / "hq" / "*.jsonl"))
    run = tmp_path / "run"
    cli(cluster, "plan", str(config), "--run", str(run), "--input", str(write_corpus(tmp_path / "c.jsonl", 15)))
    cli(cluster, "launch", str(run))
    cli(cluster, "reduce", str(run), "--out", str(tmp_path / "local"))
    out = tmp_path / "slurm"
    # slurm.python with a space in its path (a site profile's): quoted in both jobs' command lines, it runs
    python = tmp_path / "my env" / "python"
    python.parent.mkdir()
    python.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} \"$@\"\n")
    python.chmod(0o755)
    profile = tmp_path / "site.yaml"
    profile.write_text(f"slurm:\n  python: {json.dumps(str(python))}\n")
    said = cli(cluster, "reduce", str(run), "--out", str(out), "--executor", "slurm", "--profile", str(profile)).stdout
    assert "7 parts pending in array" in said and "merge job" in said
    deadline = time.monotonic() + 240
    while not (out / "report.json").exists() and time.monotonic() < deadline:
        time.sleep(1)
    logs = "\n".join(p.read_text()[-800:] for p in out.glob("slurm/*/*.out"))
    assert (out / "report.json").exists(), logs
    for name in ("mix.bin", "mix.idx", "mix.docs.jsonl", "mix.json"):
        assert (out / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    report = orjson.loads((out / "report.json").read_bytes())
    assert report["parts"] == 7 and report["corpus_documents"] > 0
    assert "is whole" in cli(cluster, "verify", str(out)).stdout


def test_cancel_stops_a_plain_runs_slurm_reduce(tmp_path: Path, cluster: ClusterInfo, tiny_model: Path) -> None:
    """`hpcsynth cancel RUN` stopped a grid's Slurm reduce but not a plain run's: its array and merge job
    ids were not recorded anywhere cancel looks. They go to RUN/reduce-jobs.json now."""
    config = tmp_path / "config.yaml"
    write_corpus(tmp_path / "hq" / "a.jsonl", 6, prefix="hq")
    config.write_text(CONFIG.format(tokenizer=tiny_model, corpus=tmp_path / "hq" / "*.jsonl").replace(
        "time_min: 20}", "time_min: 20, sbatch: ['begin=now+3600']}"))  # held: still queued when cancelled
    run = tmp_path / "run"
    cli(cluster, "plan", str(config), "--run", str(run), "--input", str(write_corpus(tmp_path / "c.jsonl", 15)))
    cli(cluster, "launch", str(run))
    cli(cluster, "reduce", str(run), "--executor", "slurm")
    recorded = orjson.loads((run / "reduce-jobs.json").read_bytes())["jobs"]
    ids = [job[key] for job in recorded for key in ("array", "merge") if job[key]]
    assert len(recorded) == 1 and len(ids) == 2, recorded
    # Its jobs write RUN/reduce without the lock: no other reduce starts into it while Slurm holds them.
    for again in (("reduce", str(run)), ("reduce", str(run), "--executor", "slurm"),
                  ("reduce", str(run), "--clean-parts")):
        said = subprocess.run([sys.executable, "-m", "hpcsynth", *again], env=cluster.env, capture_output=True,
                              text=True, timeout=120)
        assert said.returncode == 2 and said.stderr.count("\n") == 1, said.stderr
        assert "is being written by the Slurm reduce jobs" in said.stderr and ids[0] in said.stderr
    said = cli(cluster, "cancel", str(run)).stdout
    assert all(i in said for i in ids), said
    wait_cancelled(cluster, ids)
    assert cli(cluster, "reduce", str(run)).returncode == 0  # once they are gone, a local reduce goes on


REQUEUE_CONFIG = """\
prompts: [faq]
plan: {{shard_docs: 15}}
model: {{engine: fake}}
reduce: {{tokenizer: {tokenizer}, part_shards: 1, bucket_docs: 50, min_chars: 1}}
validate: {{action: keep}}  # the fake engine's words have no format to validate
slurm: {{array_tasks: 2, partition: debug, gpus_per_task: 0, cpus_per_task: 1, mem_gb: 1, time_min: 20}}
"""
PARTS = 40  # 600 documents in shards of 15, one shard a part; array task 0 does the even ones
OUTPUTS = ("mix.bin", "mix.idx", "mix.docs.jsonl")


@pytest.fixture(scope="module")
def long_run(tmp_path_factory, cluster: ClusterInfo, tiny_model: Path) -> tuple[Path, Path]:
    """(a run of 40 parts of a few tenths of a second each, its reduce done locally)."""
    from hpcsynth.generate.pull import pull_shards

    root = tmp_path_factory.mktemp("slurm-reduce-kill")
    config = root / "config.yaml"
    config.write_text(REQUEUE_CONFIG.format(tokenizer=tiny_model))
    corpus = root / "c.jsonl"  # long originals to mix in are what makes a part take its time
    corpus.write_bytes(b"".join(orjson.dumps({"id": f"doc-{i}", "text": f"Document {i}.\n" + " ".join(
        f"word{(i * 13 + j) % 997}" for j in range(3000))}) + b"\n" for i in range(600)))
    run = root / "run"
    cli(cluster, "plan", str(config), "--run", str(run), "--input", str(corpus))
    pull_shards(run)
    cli(cluster, "reduce", str(run), "--out", str(root / "local"))
    return run, root / "local"


def task_process(array: str, task: int) -> int | None:
    """The Python process of one array task on this (single-node) cluster, found by its Slurm environment."""
    wanted = {f"SLURM_ARRAY_JOB_ID={array}".encode(), f"SLURM_ARRAY_TASK_ID={task}".encode()}
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            variables = set(environ.read_bytes().split(b"\0"))
            if wanted <= variables and b"submitit" in (environ.parent / "cmdline").read_bytes():
                return int(environ.parent.name)
        except OSError:  # gone, or not ours to read
            continue
    return None


def slurm_reduce(cluster: ClusterInfo, run: Path, out: Path) -> tuple[str, str, int]:
    """Submit; (array id, merge job id, parts pending)."""
    import re

    said = cli(cluster, "reduce", str(run), "--out", str(out), "--executor", "slurm").stdout
    found = re.search(r"(\d+) parts pending in array (\d+|-), merge job (\d+)", said)
    assert found, said
    return found.group(2), found.group(3), int(found.group(1))


def stop_task_midway(array: str, out: Path) -> tuple[int, dict[str, int]]:
    """SIGSTOP array task 0 once some but not all of its parts are done: (its pid, done parts' mtimes)."""
    import os
    import signal

    parts = out / "parts"
    ours = [f"part-{i:06d}.done.json" for i in range(0, PARTS, 2)]
    deadline = time.monotonic() + 180
    pid = None
    while time.monotonic() < deadline and not (pid and any((parts / name).exists() for name in ours)):
        pid = pid or task_process(array, 0)
        time.sleep(0.01)
    assert pid, f"array task {array}_0 never ran a part"
    os.kill(pid, signal.SIGSTOP)  # frozen where it is: between or, far more likely, inside a part
    done = {name: (parts / name).stat().st_mtime_ns for name in ours if (parts / name).exists()}
    assert 1 <= len(done) < len(ours), f"{len(done)} of task 0's {len(ours)} parts done when it was stopped"
    return pid, done


def wait_for_report(out: Path, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not (out / "report.json").exists() and time.monotonic() < deadline:
        time.sleep(1)
    logs = "\n".join(p.read_text()[-800:] for p in out.glob("slurm/*/*.out"))
    assert (out / "report.json").exists(), logs


def assert_same_reduce(out: Path, local: Path, done_before: dict[str, int], cluster: ClusterInfo) -> None:
    for name in OUTPUTS:
        assert (out / name).read_bytes() == (local / name).read_bytes(), name
    parts = out / "parts"  # parts finished before the kill were kept, not redone
    assert all((parts / name).stat().st_mtime_ns == ns for name, ns in done_before.items())
    assert len(list(parts.glob("*.done.json"))) == PARTS and not list(parts.glob(".part-*.tmp"))
    assert "is whole" in cli(cluster, "verify", str(out)).stdout


def test_reduce_task_killed_mid_run_and_requeued_gives_the_same_bytes(long_run, tmp_path: Path,
                                                                         cluster: ClusterInfo) -> None:
    """Preemption of a reduce array task: its process is stopped with some of its parts done and the rest
    to do, `scontrol requeue`d and killed; Slurm starts the task again, which skips the parts done before
    and redoes the others, and the merge (afterok on the array) writes the bytes of an uninterrupted reduce."""
    import os
    import signal

    run, local = long_run
    out = tmp_path / "slurm"
    array, _, _ = slurm_reduce(cluster, run, out)
    pid, done_before = stop_task_midway(array, out)
    subprocess.run(["scontrol", "requeue", f"{array}_0"], env=cluster.env, check=True, capture_output=True)
    os.kill(pid, signal.SIGKILL)  # as Slurm would once KillWait is over
    wait_for_report(out)
    shown = subprocess.run(["scontrol", "show", "job", f"{array}_0"], env=cluster.env, capture_output=True,
                           text=True).stdout
    assert "Restarts=1" in shown, shown  # the task really ran twice
    assert_same_reduce(out, local, done_before, cluster)


def test_reduce_task_killed_outright_leaves_no_merge_queued_and_a_rerun_finishes(long_run, tmp_path: Path,
                                                                                   cluster: ClusterInfo) -> None:
    """A part task killed for good (out of memory, a bad node): the array fails, so the merge's afterok
    can never hold and Slurm ends the merge (it used to wait in the queue forever); running reduce again
    submits only the unfinished parts and a new merge, and the bytes are an uninterrupted reduce's."""
    import os
    import signal

    run, local = long_run
    out = tmp_path / "slurm"
    array, merge, _ = slurm_reduce(cluster, run, out)
    pid, done_before = stop_task_midway(array, out)
    os.kill(pid, signal.SIGKILL)
    deadline, state = time.monotonic() + 120, ""
    while not state.startswith("CANCELLED") and time.monotonic() < deadline:
        time.sleep(1)
        state = subprocess.run(["sacct", "-X", "-n", "-o", "State", "-j", merge], env=cluster.env,
                               capture_output=True, text=True).stdout.strip()
    assert state.startswith("CANCELLED"), f"merge job {merge} is {state!r}, not ended by Slurm"
    assert not (out / "report.json").exists()
    done = len(list((out / "parts").glob("*.done.json")))
    _, _, pending = slurm_reduce(cluster, run, out)
    assert pending == PARTS - done
    wait_for_report(out)
    assert_same_reduce(out, local, done_before, cluster)
