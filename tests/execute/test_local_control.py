"""A local run is under the user's control as a Slurm one is: its workers end with their launcher however
it ends, `hpcsynth cancel RUN` stops them (found by host, pid and start time, never by name), a second
launch refuses unless asked to add workers, and a GPU is never handed out twice.

Before: kill -9 or kill -TERM of `launch` left its workers running as orphans; cancel said "no Slurm jobs
to cancel"; a second launch started more workers without a word, and two workers numbered 0 both had
CUDA_VISIBLE_DEVICES=0."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpcsynth.locks import process_start
from hpcsynth.rundir import RunDir

from conftest import all_gone, planned_fake_run, run_cli, same_process

SLOW = {"HPCSYNTH_FAKE_FAULTS": json.dumps({"delay_s": 0.5})}  # 6 s a shard: a run that outlasts every wait here


def start_launch(run: RunDir, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hpcsynth", "launch", str(run.root), "--progress", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **SLOW, **(env or {})})


def records(run: RunDir) -> list[dict]:
    folder = run.root / "local"
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            pass  # being replaced
    return out


def wait_for(what, timeout: float = 60.0, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = what()
        if found:
            return found
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"launch ended early ({proc.returncode}): {proc.communicate()}")
        time.sleep(0.1)
    raise AssertionError("timed out")


def launch_with_workers(run: RunDir, proc: subprocess.Popen, count: int) -> dict:
    """The launch's record once its `count` workers have started (and are generating)."""
    def ready():
        mine = [r for r in records(run) if r["pid"] == proc.pid]
        return mine[0] if mine and len(mine[0]["workers"]) == count else None

    record = wait_for(ready, proc=proc)
    wait_for(lambda: any(run.work_dir(s).exists() for s in range(run.shard_count())), proc=proc)
    return record


def stop(proc: subprocess.Popen, workers: list[dict]) -> None:
    """Leave nothing running, whatever the test did."""
    for pid, start in [(proc.pid, None)] + [(w["pid"], w["start"]) for w in workers]:
        if (start is None and proc.poll() is None) or (start is not None and same_process(pid, start)):
            os.kill(pid, signal.SIGKILL)
    proc.communicate()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_workers_end_with_their_launcher_and_a_relaunch_finishes(tmp_path: Path, sig: int) -> None:
    run = planned_fake_run(tmp_path, docs=24, shard_docs=3)
    proc = start_launch(run, "--workers", "2")
    record = launch_with_workers(run, proc, 2)
    try:
        os.kill(proc.pid, sig)
        proc.wait(timeout=30)
        assert all_gone(record["workers"]), "a worker ran on after its launcher ended"
        if sig == signal.SIGTERM:  # a polite stop unwinds as Ctrl-C does: workers ended, record removed
            assert proc.returncode == 130, proc.communicate()
            assert "interrupted; committed shards are kept" in proc.communicate()[1]
            assert records(run) == []
    finally:
        stop(proc, record["workers"])
    # A record left by kill -9 is stale (its pid is gone): the next launch neither refuses nor keeps it.
    result = run_cli("launch", str(run.root), "--workers", "2", "--progress", "0")
    assert result.returncode == 0, result.stderr
    assert f"{run.shard_count()}/{run.shard_count()} shards done" in result.stdout
    assert records(run) == []


def test_cancel_stops_a_local_run_and_the_run_goes_on_from_its_shards(tmp_path: Path) -> None:
    run = planned_fake_run(tmp_path, docs=24, shard_docs=3)
    proc = start_launch(run, "--workers", "2")
    record = launch_with_workers(run, proc, 2)
    try:
        result = run_cli("cancel", str(run.root))
        assert result.returncode == 0, result.stderr
        assert f"stopped the local launch pid {proc.pid} on {socket.gethostname()}" in result.stdout
        assert "2 worker process(es) on GPU(s) 0,1" in result.stdout
        assert "goes on from them" in result.stdout
        assert proc.wait(timeout=30) == 130
        assert all_gone(record["workers"], timeout=1)
        assert records(run) == []
        assert run_cli("cancel", str(run.root)).stdout.strip().endswith("has no local workers or Slurm jobs to cancel")
    finally:
        stop(proc, record["workers"])
    result = run_cli("launch", str(run.root), "--workers", "2", "--progress", "0")
    assert result.returncode == 0 and f"{run.shard_count()}/{run.shard_count()} shards done" in result.stdout


def test_cancel_stops_a_worker_running_inside_its_launcher(tmp_path: Path) -> None:
    run = planned_fake_run(tmp_path, docs=12, shard_docs=3)
    proc = start_launch(run)
    try:
        wait_for(lambda: [r for r in records(run) if r["pid"] == proc.pid], proc=proc)
        result = run_cli("cancel", str(run.root))
        assert "its worker in-process" in result.stdout, result.stdout
        assert proc.wait(timeout=30) == 130
    finally:
        stop(proc, [])


def test_a_second_launch_refuses_and_added_workers_take_other_gpus(tmp_path: Path) -> None:
    run = planned_fake_run(tmp_path, docs=24, shard_docs=3)
    proc = start_launch(run, "--workers", "2")
    first = launch_with_workers(run, proc, 2)
    added = None
    try:
        again = run_cli("launch", str(run.root), "--workers", "2", "--progress", "0", env=SLOW)
        assert again.returncode == 2 and again.stderr.count("\n") == 1, again.stderr
        assert f"already has a local launch running (pid {proc.pid}" in again.stderr
        assert "--add-workers" in again.stderr and "hpcsynth cancel" in again.stderr
        assert len(records(run)) == 1  # the refused launch left no record and no worker
        added = start_launch(run, "--workers", "2", "--add-workers")
        second = launch_with_workers(run, added, 2)
        assert set(first["gpus"]) == {"0", "1"} and set(second["gpus"]) == {"2", "3"}
        assert sorted(w["gpu"] for w in second["workers"]) == ["2", "3"]
        assert (run.root / "logs" / "worker-local-2.log").exists()  # its own logs, not the first's
        result = run_cli("cancel", str(run.root))
        assert result.stdout.count("stopped the local launch") == 2, result.stdout
        assert all_gone(first["workers"] + second["workers"], timeout=1)
    finally:
        stop(proc, first["workers"])
        if added is not None:
            stop(added, [])


def test_listed_gpus_are_never_handed_out_twice(tmp_path: Path) -> None:
    run = planned_fake_run(tmp_path, docs=24, shard_docs=3)
    gpus = {"CUDA_VISIBLE_DEVICES": "0,1,2"}
    proc = start_launch(run, "--workers", "2", env=gpus)
    first = launch_with_workers(run, proc, 2)
    try:
        more = run_cli("launch", str(run.root), "--workers", "2", "--add-workers", "--progress", "0",
                       env={**SLOW, **gpus})
        assert more.returncode == 2, more.stderr
        assert "2 GPU(s) asked for, but 1 of the 3 this machine lists (0,1,2) are free" in more.stderr
        assert "--workers 1" in more.stderr
        one = start_launch(run, "--add-workers", env=gpus)
        second = launch_with_workers(run, one, 1)  # a worker process pinned to the one GPU left
        assert second["gpus"] == ["2"] and second["workers"][0]["gpu"] == "2"
        environ = Path(f"/proc/{second['workers'][0]['pid']}/environ").read_bytes().split(b"\0")
        assert b"CUDA_VISIBLE_DEVICES=2" in environ
        stop(one, second["workers"])
    finally:
        stop(proc, first["workers"])


def test_a_pid_given_since_to_another_process_is_never_signalled(tmp_path: Path) -> None:
    """A record of a launch long gone whose pid now names another process (same pid, other start time):
    cancel leaves that process alone, and launch takes the record for stale."""
    run = planned_fake_run(tmp_path, docs=6, shard_docs=3)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        folder = run.root / "local"
        folder.mkdir()
        real = process_start(bystander.pid)
        (folder / f"{socket.gethostname()}.{bystander.pid}.json").write_text(json.dumps({
            "host": socket.gethostname(), "pid": bystander.pid, "start": str(int(real) - 5), "started": 1.0,
            "gpus": ["0"], "workers": [{"pid": bystander.pid, "start": str(int(real) - 5), "gpu": "0"}]}))
        result = run_cli("cancel", str(run.root))
        assert "has no local workers" in result.stdout, result.stdout
        assert bystander.poll() is None and process_start(bystander.pid) == real
        assert not list(folder.glob("*.json"))  # stale: removed
    finally:
        bystander.kill()
        bystander.wait()


def test_a_launch_of_another_host_is_named_not_signalled(tmp_path: Path) -> None:
    run = planned_fake_run(tmp_path, docs=6, shard_docs=3)
    folder = run.root / "local"
    folder.mkdir()
    (folder / "node-7.4242.json").write_text(json.dumps({"host": "node-7", "pid": 4242, "start": "99",
                                                          "started": 1.0, "gpus": ["0"], "workers": []}))
    result = run_cli("cancel", str(run.root))
    assert result.returncode == 1
    assert "a local launch on node-7 (pid 4242) can only be stopped there" in result.stderr
    assert (folder / "node-7.4242.json").exists()


@pytest.mark.parametrize("planted", ["fifo", "garbage", "symlink"])
def test_a_damaged_or_planted_record_is_no_launch(tmp_path: Path, planted: str) -> None:
    run = planned_fake_run(tmp_path, docs=6, shard_docs=3)
    folder = run.root / "local"
    folder.mkdir()
    path = folder / f"{socket.gethostname()}.1.json"
    if planted == "fifo":
        os.mkfifo(path)
    elif planted == "garbage":
        path.write_bytes(b"\x00{not json")
    else:
        path.symlink_to("/dev/zero")
    result = run_cli("cancel", str(run.root))
    assert result.returncode == 0 and "has no local workers" in result.stdout, (result.stdout, result.stderr)
    launched = run_cli("launch", str(run.root), "--progress", "0")
    assert launched.returncode == 0, launched.stderr


def test_a_record_another_user_wrote_never_has_us_signal_our_own_process(tmp_path: Path) -> None:
    """A run directory others may write: a record planted there naming a process of ours (right pid and
    start time) is left alone, since its writer is not the process's user."""
    if os.geteuid() != 0:
        pytest.skip("needs root to write a file as another user")
    run = planned_fake_run(tmp_path, docs=6, shard_docs=3)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        folder = run.root / "local"
        folder.mkdir()
        record = folder / f"{socket.gethostname()}.{bystander.pid}.json"
        start = process_start(bystander.pid)
        record.write_text(json.dumps({"host": socket.gethostname(), "pid": bystander.pid, "start": start,
                                      "started": 1.0, "gpus": [], "workers": []}))
        os.chown(record, 65534, 65534)
        result = run_cli("cancel", str(run.root))
        assert result.returncode == 1 and "another user than the record's writer runs: left alone" in result.stderr
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_help_says_how_to_stop_remix_and_clean_up() -> None:
    launch = run_cli("launch", "--help").stdout
    assert "hpcsynth cancel RUN" in launch and "--add-workers" in launch
    cancel = run_cli("cancel", "--help").stdout
    assert "local workers" in cancel
    reduce = run_cli("reduce", "--help").stdout
    assert "--config MIX.yaml" in reduce and "--clean-parts" in reduce and "--keep-parts" in reduce
