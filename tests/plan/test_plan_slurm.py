"""`hpcsynth plan --executor slurm` on the real dev cluster: the same bytes as a local plan."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from conftest import REPO

pytestmark = pytest.mark.slurm


def digest(run: Path) -> str:
    h = hashlib.sha256((run / "manifest.json").read_bytes() + (run / "manifest.rows.jsonl").read_bytes()
                       + (run / "plan" / "rejects.jsonl").read_bytes())
    for path in sorted((run / "shards").iterdir()):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def squeue(cluster, *args: str) -> list[str]:
    return subprocess.run(["squeue", "-h", *args], env=cluster.env, capture_output=True, text=True,
                          check=True).stdout.split()


@contextlib.contextmanager
def node_held(cluster):
    """A job on every CPU of the one node: array tasks submitted meanwhile stay pending until it ends."""
    import time

    blocker = subprocess.run(["sbatch", "--parsable", "-p", "gpu", "-c", "8", "--mem", "100M", "-o", "/dev/null",
                              "--wrap", "sleep 600"], env=cluster.env, capture_output=True, text=True,
                             check=True).stdout.strip().split(";")[0]
    try:
        deadline = time.monotonic() + 60
        while squeue(cluster, "-j", blocker, "-o", "%T") != ["RUNNING"] and time.monotonic() < deadline:
            time.sleep(0.2)
        yield
    finally:
        subprocess.run(["scancel", blocker], env=cluster.env, check=True)


def slurm_plan(tmp_path: Path, parts: int, docs: int) -> tuple[list[str], Path]:
    """A corpus of `parts` files of `docs` documents, a config, and the `plan --executor slurm` command."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for part in range(parts):
        (inputs / f"p{part}.jsonl").write_bytes(b"".join(
            orjson.dumps({"id": f"p{part}-{i}", "text": f"document {i} " + "words " * 40}) + b"\n" for i in range(docs)))
    config = tmp_path / "c.yaml"
    config.write_text("model: {engine: fake}\nplan: {group_mb: 0}\nslurm: {partition: gpu, mem_gb: 1}\n")
    run = tmp_path / "run"
    return [sys.executable, "-m", "hpcsynth", "plan", str(config), "--run", str(run), "--input", str(inputs),
            "--jobs", "1", "--executor", "slurm"], run


def submitted_array(run: Path, proc: subprocess.Popen) -> str:
    """The id of the plan's scan array, once the planner has submitted it."""
    import time

    array, deadline = "", time.monotonic() + 120
    while not array and time.monotonic() < deadline and proc.poll() is None:
        for folder in (run / "slurm").glob("plan-scan-*"):
            array = folder.name.removeprefix("plan-scan-")
        time.sleep(0.05)
    assert array.isdigit(), "the scan array was submitted"
    return array


def test_plan_as_cpu_arrays_matches_local(tmp_path: Path, cluster) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    for part in range(3):  # three input groups: three scan tasks, three write tasks
        with open(inputs / f"p{part}.jsonl", "wb") as handle:
            for i in range(40):
                text = f"Part {part} document {i}.\n\n" + "words and more words " * (i % 9 + 1) * 30
                handle.write(orjson.dumps({"id": f"d{i % 37}" if part == 2 else f"p{part}-{i}", "text": text}) + b"\n")
    # slurm.python with a space in its path: quoted in the job's command line, it runs (unquoted, the
    # plan's tasks ran "/.../my" and failed; only launch quoted it).
    python = tmp_path / "my env" / "python"
    python.parent.mkdir()
    python.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} \"$@\"\n")
    python.chmod(0o755)
    config = tmp_path / "c.yaml"
    config.write_text("model: {engine: fake}\nplan: {shard_tokens: 3000, max_reject_rate: 1.0, group_mb: 0}\n"
                      f"slurm: {{partition: gpu, mem_gb: 1, python: {json.dumps(str(python))}}}\n")
    runs = {}
    for executor in ("local", "slurm"):
        runs[executor] = tmp_path / executor
        proc = subprocess.run([sys.executable, "-m", "hpcsynth", "plan", str(config), "--run", str(runs[executor]),
                               "--input", str(inputs), "--jobs", "1", "--executor", executor],
                              cwd=REPO, env=cluster.env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
    assert digest(runs["local"]) == digest(runs["slurm"])
    assert len(list((runs["slurm"] / "slurm").glob("plan-scan-*"))) == 1, "one scan array"
    assert not list(runs["slurm"].glob(".plan-tmp-*"))


def test_a_scan_task_cancelled_before_it_starts_fails_the_plan_and_cancels_the_rest(tmp_path: Path, cluster) -> None:
    """An array task cancelled while pending has no accounting record: sacct never says it ended, and
    waiting on it hung the plan for ever. squeue shows it gone: the plan fails in one line naming the task,
    cancels the array's other tasks (they would write into a plan that is gone), leaves nothing that looks
    planned, and the next plan finishes."""
    command, run = slurm_plan(tmp_path, 3, 30)
    with node_held(cluster):
        proc = subprocess.Popen(command, cwd=REPO, env=cluster.env, stderr=subprocess.PIPE, text=True)
        array = submitted_array(run, proc)
        assert f"{array}_0" in squeue(cluster, "-r", "-j", array, "-o", "%i"), "task 0 is pending"
        subprocess.run(["scancel", f"{array}_0"], env=cluster.env, check=True)
        _, stderr = proc.communicate(timeout=120)
        lines = stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, stderr
        assert f"plan-scan array task {array}_0 left Slurm's queue without a result" in lines[0], lines[0]
        assert squeue(cluster, "-r", "-j", array, "-o", "%i") == [], "the array's other tasks were cancelled"
    assert not (run / "manifest.json").exists() and not list(run.glob(".plan-tmp-*")) and not (run / "shards").exists()
    subprocess.run(command, cwd=REPO, env=cluster.env, check=True, capture_output=True, timeout=300)
    assert orjson.loads((run / "manifest.json").read_bytes())["documents"] == 90


def test_an_array_the_controller_forgot_holds_no_tasks(cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """squeue -j on an array purged after its last task (MinJobAge) fails with "Invalid job id": that is
    an empty queue, not "cannot say" (which would keep a planner waiting on a cancelled task for ever)."""
    from hpcsynth.execute.slurm import _queued

    for key, value in cluster.env.items():
        monkeypatch.setenv(key, value)
    assert _queued("999999") == set()


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP])
def test_a_planner_stopped_by_term_or_hup_cancels_its_array(tmp_path: Path, cluster, stop: int) -> None:
    """SIGTERM (a batch system's time limit, `kill`) or SIGHUP (a closed terminal) ended the planner at once
    and left its array queued; now it unwinds as Ctrl-C does and cancels the array."""
    import time

    command, run = slurm_plan(tmp_path, 2, 20)
    with node_held(cluster):
        proc = subprocess.Popen(command, cwd=REPO, env=cluster.env, stderr=subprocess.PIPE, text=True)
        array, deadline = submitted_array(run, proc), time.monotonic() + 60
        while not squeue(cluster, "-r", "-j", array, "-o", "%i") and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # the planner is waiting on its tasks now
        proc.send_signal(stop)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130 and "interrupted" in stderr, (proc.returncode, stderr)
        assert squeue(cluster, "-r", "-j", array, "-o", "%i") == [], "the array was cancelled"
    assert not (run / "manifest.json").exists()
