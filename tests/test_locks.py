"""The one lock (hpcsynth/locks.py) and its users: the plan lock, the reduce lock, the record of reduce jobs."""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from hpcsynth.locks import LockHeld, acquire_lock, lock_holder, new_owner, process_start, read_holder
from hpcsynth.plan.manifest import take_lock
from hpcsynth.reduce.lock import reduce_lock

REPO = Path(__file__).resolve().parents[1]


def plant(path: Path, owner: str, **extra: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps({"owner": owner, "renewed": time.time(), **extra}))


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_live_holder_refuses_in_one_line_naming_the_holder_the_file_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    with acquire_lock(path, "test"):
        for wait_s in (0.0, 0.3):
            started = time.monotonic()
            with pytest.raises(LockHeld) as caught:
                acquire_lock(path, "test", wait_s=wait_s)
            assert time.monotonic() - started >= wait_s
            message = str(caught.value)
            assert "\n" not in message and f"pid {os.getpid()} on {socket.gethostname()}" in message
            assert f"remove {path}" in message and "another test is writing" in message
        assert lock_holder(path)["owner"].split(":")[1] == str(os.getpid())
    assert not path.exists() and lock_holder(path) is None


def test_a_holder_whose_process_is_gone_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    plant(path, f"{socket.gethostname()}:{dead_pid()}:{process_start(os.getpid())}:cafe")
    with acquire_lock(path, "test") as lock:
        assert read_holder(path)["owner"] == lock.owner
    assert not path.exists()


def test_a_reused_pid_with_another_start_time_does_not_keep_the_plan_lock(tmp_path: Path) -> None:
    """The plan lock judged its holder by pid alone: a pid reused by any live process kept it for ever."""
    from hpcsynth.rundir import RunDir

    run = tmp_path / "run"
    reused = subprocess.Popen(["sleep", "60"])
    try:
        start = process_start(reused.pid)
        assert start
        plant(run / ".plan.lock", f"{socket.gethostname()}:{reused.pid}:{int(start) - 1}:beef")  # pid reused
        with pytest.raises(Exception, match="has no manifest.json"):  # not "is being planned now"
            RunDir(run).require_planned()
        lock = take_lock(run)
        assert read_holder(run / ".plan.lock")["owner"] == lock.owner
        lock.release()
        plant(run / ".plan.lock", f"{socket.gethostname()}:{reused.pid}:{start}:beef")  # that very process
        with pytest.raises(LockHeld, match=f"another `hpcsynth plan` is writing .*pid {reused.pid}"):
            take_lock(run)
        with pytest.raises(Exception, match="is being planned now"):
            RunDir(run).require_planned()
    finally:
        reused.kill()
        reused.wait()


def test_an_earlier_incarnation_of_this_slurm_task_is_gone_a_sibling_is_not(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    path = tmp_path / "parts" / "lock"
    plant(path, "node9:4242:555:feed", task="77_3", restart="1")  # this incarnation, on another node
    with pytest.raises(LockHeld, match="pid 4242 on node9, Slurm task 77_3"):
        with reduce_lock(tmp_path):
            pass
    plant(path, "node9:4242:555:feed", task="77_3", restart="0")  # requeued since: that one is gone
    with reduce_lock(tmp_path):
        assert read_holder(path)["restart"] == "1"


def test_locks_of_older_hpcsynth_are_read(tmp_path: Path) -> None:
    """A plan lock was 'HOST:PID', a reduce lock {"host", "pid"}: an upgrade mid-run meets them."""
    plan, parts = tmp_path / ".plan.lock", tmp_path / "parts" / "lock"
    plan.write_text("elsewhere:123\n")
    assert lock_holder(plan) == {"owner": "elsewhere:123"}
    plan.write_text(f"{socket.gethostname()}:{dead_pid()}\n")
    assert lock_holder(plan) is None
    parts.parent.mkdir()
    parts.write_bytes(orjson.dumps({"host": "elsewhere", "pid": 5}))
    with pytest.raises(LockHeld, match=f"another reduce is writing {tmp_path} \\(pid 5 on elsewhere\\)"):
        with reduce_lock(tmp_path):
            pass


def test_a_symlink_at_the_lock_path_is_never_followed(tmp_path: Path) -> None:
    precious, missing = tmp_path / "precious", tmp_path / "elsewhere" / "new"
    precious.write_bytes(orjson.dumps({"owner": new_owner()}))  # names a live holder: this process
    before = precious.read_bytes()
    for target in (precious, missing):
        path = tmp_path / "run" / "lock"
        path.parent.mkdir(exist_ok=True)
        path.symlink_to(target)
        with acquire_lock(path, "test") as lock:
            assert not path.is_symlink() and read_holder(path)["owner"] == lock.owner
        assert not path.exists() and not path.is_symlink()
    assert precious.read_bytes() == before and not missing.parent.exists()


FIFO_AT_EACH_LOCK = """
import os, sys
from pathlib import Path
from hpcsynth.execute.slurm_jobs import record_reduce, recorded_reduce_ids
from hpcsynth.plan.manifest import take_lock
from hpcsynth.reduce.lock import reduce_lock
root = Path(sys.argv[1])
os.mkfifo(root / ".plan.lock")
take_lock(root).release()
(root / "out" / "parts").mkdir(parents=True)
os.mkfifo(root / "out" / "parts" / "lock")
with reduce_lock(root / "out"):
    pass
os.mkfifo(root / "reduce-jobs.json.lock")
record_reduce(root / "reduce-jobs.json", "reduce", {"array": "41", "merge": "42"})
print(recorded_reduce_ids(root / "reduce-jobs.json"))
"""


def test_a_fifo_at_a_lock_path_does_not_hang(tmp_path: Path) -> None:
    """record_reduce opened its flock file with open(): a FIFO there hung `reduce --executor slurm`."""
    proc = subprocess.run([sys.executable, "-c", FIFO_AT_EACH_LOCK, str(tmp_path)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['41', '42']"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "reduce-jobs.json"]  # every lock released


def test_the_empty_lock_file_of_the_flock_record_is_taken_over(tmp_path: Path) -> None:
    from hpcsynth.execute.slurm_jobs import record_reduce, recorded_reduce_ids

    (tmp_path / "reduce-jobs.json.lock").touch()  # left by the record's flock of before, for ever
    record_reduce(tmp_path / "reduce-jobs.json", "reduce", {"array": "7", "merge": None})
    assert recorded_reduce_ids(tmp_path / "reduce-jobs.json") == ["7"]
    assert not (tmp_path / "reduce-jobs.json.lock").exists()


TAKE_AT = """
import sys, time
from pathlib import Path
from hpcsynth.locks import LockHeld, acquire_lock
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
try:
    lock = acquire_lock(Path(sys.argv[1]), "test")
except LockHeld:
    print("refused")
else:
    print("held")
    time.sleep(3)  # past every other taker's try
    lock.release()
"""


def test_racing_takers_of_a_dead_holders_lock_yield_one_holder(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    plant(path, f"{socket.gethostname()}:{dead_pid()}:1:dead")
    start = str(time.time() + 2)
    procs = [subprocess.Popen([sys.executable, "-c", TAKE_AT, str(path), start], stdout=subprocess.PIPE, text=True)
             for _ in range(5)]
    said = sorted(proc.communicate(timeout=120)[0].strip() for proc in procs)
    assert said == ["held", "refused", "refused", "refused", "refused"]
    assert not path.exists() and not list(tmp_path.glob("*takeover*"))


COUNT_UNDER_LOCK = """
import sys, time
from pathlib import Path
from hpcsynth.locks import acquire_lock
path = Path(sys.argv[1])
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
for _ in range(40):
    with acquire_lock(path.with_name("lock"), "test", wait_s=60):
        count = int(path.read_text())  # read, then write back one more: lost without the lock
        path.write_text(str(count + 1))
"""


def test_waiting_takers_each_get_the_lock_in_turn(tmp_path: Path) -> None:
    counter = tmp_path / "count"
    counter.write_text("0")
    start = str(time.time() + 2)
    procs = [subprocess.Popen([sys.executable, "-c", COUNT_UNDER_LOCK, str(counter), start]) for _ in range(4)]
    assert [proc.wait(timeout=120) for proc in procs] == [0, 0, 0, 0]
    assert counter.read_text() == "160"


def test_the_lock_stands_on_the_ground_floor() -> None:
    """locks.py imports no stage, and rundir no longer climbs to plan/ for the plan lock."""
    def imported(module: str) -> set[str]:
        tree = ast.parse((REPO / "hpcsynth" / module).read_text())
        return {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}

    assert {m for m in imported("locks.py") if m.startswith("hpcsynth")} <= {"hpcsynth.errors", "hpcsynth.files"}
    assert not any(m.startswith("hpcsynth.plan") for m in imported("rundir.py"))
