"""Two reduces into one directory, racing: whichever starts second fails in one line naming the holder,
and never both write DIR.

`reduce --executor slurm` prepared DIR (dropping parts made under other settings, rewriting
DIR/parts/spec.json) and submitted its jobs without the reduce lock, so a local reduce could take the lock
while the Slurm one was starting (and the Slurm one rewrote the spec under a running local reduce). And a
reduce in a forked process named its parent's start time in its lock, so any other reduce judged that live
holder gone and took the lock over.

Each race is made deterministic by pausing the first reduce at a point of its own (a small wrapper that
imports hpcsynth and wraps one function to wait for a file the test creates); nothing in the product
knows about it.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpcsynth.generate.pull import pull_shards
from hpcsynth.plan import plan_corpus
from hpcsynth.rundir import RunDir

from conftest import fake_config, run_process, write_corpus

# The first reduce, paused: `target` (module:function) is wrapped to write STARTED and wait for GO, then go
# on; a Slurm submission returns made-up job ids instead of calling sbatch (there is no cluster here).
PAUSED = """
import importlib, sys, time
from pathlib import Path
started, go, target, argv = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4:]
module_name, name = target.split(":")
module = importlib.import_module(module_name)
real = getattr(module, name)

def paused(*args, **kwargs):
    started.write_text("paused")
    deadline = time.monotonic() + 120
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    if name == "submit_reduce":
        return {"array": "41", "merge": "42", "parts": 0}
    return real(*args, **kwargs)

setattr(module, name, paused)
import hpcsynth.reduce.slurm as slurm
if name != "submit_reduce":  # a Slurm reduce started second must not reach sbatch either
    slurm.submit_reduce = lambda spec, config: {"array": "41", "merge": "42", "parts": 0}
from hpcsynth.cli.app import main
raise SystemExit(main(argv))
"""


@pytest.fixture(scope="module")
def race_run(tmp_path_factory, tiny_model: Path) -> RunDir:
    root = tmp_path_factory.mktemp("race")
    corpus = write_corpus(root / "c.jsonl", 8)
    config = fake_config(corpus, reduce={"tokenizer": str(tiny_model), "min_chars": 1, "part_shards": 1,
                                         "bucket_docs": 4, "original_ratio": 0.5})
    config = dataclasses.replace(config, plan=dataclasses.replace(config.plan, shard_docs=2))
    run = RunDir(root / "run")
    plan_corpus(config, run)
    pull_shards(run.root)
    return run


def start_paused(tmp_path: Path, target: str, *argv: str) -> tuple[subprocess.Popen, Path]:
    script = tmp_path / "paused.py"
    script.write_text(PAUSED)
    started, go = tmp_path / "started", tmp_path / "go"
    proc = subprocess.Popen([sys.executable, str(script), str(started), str(go), target, *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not started.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            out, err = proc.communicate()
            pytest.fail(f"the first reduce never reached {target}: rc {proc.returncode}\n{out}\n{err}")
        time.sleep(0.02)
    return proc, go


def finish(proc: subprocess.Popen, go: Path) -> tuple[int, str, str]:
    go.write_text("go")
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # a failing test leaves nothing running (this process only)
            proc.kill()
            proc.wait()
    return proc.returncode, out, err


def test_a_local_reduce_cannot_start_while_a_slurm_reduce_is_submitting(race_run: RunDir, tmp_path: Path) -> None:
    """The Slurm reduce has written DIR/parts/spec.json and is submitting: a local reduce into DIR took the
    lock (nobody held it), rewrote the spec and wrote the output beside the jobs being submitted."""
    out = tmp_path / "out"
    first, go = start_paused(tmp_path, "hpcsynth.reduce.slurm:submit_reduce",
                             "reduce", str(race_run.root), "--out", str(out), "--executor", "slurm")
    try:
        spec = (out / "parts" / "spec.json").stat().st_mtime_ns
        second = run_process("reduce", str(race_run.root), "--out", str(out), timeout=120)
    finally:
        rc, said, err = finish(first, go)
    assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stdout + second.stderr
    assert f"another reduce is writing {out} (pid {first.pid} on " in second.stderr
    assert not (out / "report.json").exists() and not (out / "mix.bin").exists()
    assert (out / "parts" / "spec.json").stat().st_mtime_ns == spec
    assert rc == 0 and "merge job 42" in said, said + err
    assert not (out / "parts" / "lock").exists()  # released once the jobs are submitted and recorded


def test_a_slurm_reduce_cannot_start_while_a_local_reduce_runs(race_run: RunDir, tmp_path: Path) -> None:
    """The other way round: a local reduce holds the lock and tokenizes; `reduce --executor slurm` into DIR
    went ahead without the lock, rewrote spec.json under the running parts and submitted jobs into DIR."""
    out = tmp_path / "out"
    first, go = start_paused(tmp_path, "hpcsynth.reduce.reducer:run_parts_local",
                             "reduce", str(race_run.root), "--out", str(out))
    jobs = race_run.root / "reduce-jobs.json"
    recorded = jobs.read_bytes() if jobs.exists() else b""
    try:
        spec = (out / "parts" / "spec.json").stat().st_mtime_ns
        script = tmp_path / "paused.py"
        second = subprocess.run([sys.executable, str(script), str(tmp_path / "never"), str(tmp_path / "never"),
                                 "hpcsynth.reduce.slurm:reduce_parts", "reduce", str(race_run.root), "--out",
                                 str(out), "--executor", "slurm"], capture_output=True, text=True, timeout=120)
    finally:
        rc, said, err = finish(first, go)
    assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stdout + second.stderr
    assert f"another reduce is writing {out} (pid {first.pid} on " in second.stderr
    assert (jobs.read_bytes() if jobs.exists() else b"") == recorded  # no job submitted into DIR
    assert rc == 0 and "wrote " in said, said + err
    assert (out / "report.json").exists() and (out / "parts" / "spec.json").stat().st_mtime_ns == spec


def test_a_reduce_starting_as_clean_parts_ends_takes_the_lock(race_run: RunDir, tmp_path: Path) -> None:
    """`reduce --clean-parts` (or a reduce) ending removes DIR/parts once it is empty: a reduce starting then,
    between making DIR/parts and writing its lock there, failed with "cannot lock ... No such file or
    directory; remove whatever is there". It makes the folder again and takes the lock."""
    out = tmp_path / "out"
    run_process("reduce", str(race_run.root), "--out", str(out), timeout=120).check_returncode()
    second, go = start_paused(tmp_path, "hpcsynth.reduce.lock:acquire_lock",
                              "reduce", str(race_run.root), "--out", str(out))
    try:
        cleaned = run_process("reduce", str(race_run.root), "--out", str(out), "--clean-parts", timeout=120)
        assert cleaned.returncode == 0 and not (out / "parts").exists(), cleaned.stderr
    finally:
        rc, said, err = finish(second, go)
    assert rc == 0 and "wrote " in said, said + err
    assert (out / "parts" / "spec.json").exists() and not (out / "parts" / "lock").exists()


def test_clean_parts_leaves_a_starting_reduces_lock_file_alone(race_run: RunDir, tmp_path: Path) -> None:
    """A lock is a temporary file hard-linked to DIR/parts/lock. `--clean-parts`, holding the lock, removed
    every file of DIR/parts but the lock, a starting reduce's temporary lock file too: its link then failed
    and it said "cannot lock". It now waits its turn: it takes the lock once the cleaning is over."""
    out = tmp_path / "out"
    run_process("reduce", str(race_run.root), "--out", str(out), timeout=120).check_returncode()
    second, go = start_paused(tmp_path, "os:link", "reduce", str(race_run.root), "--out", str(out))
    try:
        assert [p.name.startswith(".lock.") for p in (out / "parts").glob(".lock.*")] == [True]
        cleaned = run_process("reduce", str(race_run.root), "--out", str(out), "--clean-parts", timeout=120)
        assert cleaned.returncode == 0 and "removed" in cleaned.stdout, cleaned.stderr
    finally:
        rc, said, err = finish(second, go)
    assert rc == 0 and "wrote " in said, said + err


FORKED = """
import os, sys, time
from pathlib import Path
from hpcsynth.locks import LockHeld, new_owner
from hpcsynth.reduce.lock import reduce_lock
out, go = Path(sys.argv[1]), Path(sys.argv[2])
new_owner()  # this process has named itself once (a plan, a record...) before it forks
time.sleep(0.05)  # the child starts at another clock tick than its parent
child = os.fork()
if child == 0:
    with reduce_lock(out):
        while not go.exists():
            time.sleep(0.02)
    os._exit(0)
while not (out / "parts" / "lock").exists():
    time.sleep(0.01)
try:
    with reduce_lock(out):
        print("took the lock of a live reduce")
except LockHeld as exc:
    print(f"refused: {exc}")
go.write_text("go")
os.waitpid(child, 0)
"""


def test_a_reduce_in_a_forked_process_keeps_its_lock(tmp_path: Path) -> None:
    """A forked process named its parent's start time with its own pid: the lock's holder looked like a
    reused pid, so a second reduce judged it gone and took over the lock of a reduce still running."""
    script = tmp_path / "forked.py"
    script.write_text(FORKED)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "out"), str(tmp_path / "go")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("refused: another reduce is writing"), proc.stdout
