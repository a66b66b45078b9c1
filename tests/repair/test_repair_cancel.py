"""A local repair is under the user's control as a launch is: `hpcsynth cancel RUN` stops the `hpcsynth repair`
process (found by RUN/repair/.lock: host, pid and start time) and its sub-runs' workers, kill -TERM of
`repair` ends its workers with it, and a repair run again finishes, committing each (record, attempt) once.
Links and damaged records planted among the sub-runs make cancel signal nothing outside the run.

Before: cancel said "has no local workers or Slurm jobs to cancel" while the repair and its workers ran
on, and never looked under RUN/repair/."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from hpcsynth.locks import process_start
from hpcsynth.rundir import RunDir

from conftest import all_gone, planned_fake_run, run_cli, same_process
from test_repair import outputs, refusing_run, truncated


def sub_records(run: RunDir) -> list[dict]:
    """The local launch records of the repair's sub-runs (RUN/repair/attempt-K/PROMPT/local/*.json)."""
    found = []
    for path in sorted(run.repair_dir.glob("attempt-*/*/local/*.json")):
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            pass  # being replaced
    return found


@pytest.mark.parametrize("how", ["cancel", "kill -TERM"])
def test_a_stopped_local_repair_ends_its_workers_and_a_rerun_commits_each_record_once(tmp_path: Path,
                                                                                      how: str) -> None:
    run = refusing_run(tmp_path, docs=60, shard_docs=5)
    refused = truncated(outputs(run))
    counts = tmp_path / "generated.txt"
    env = {**os.environ, "HPCSYNTH_FAKE_FAULTS": json.dumps({"delay_s": 0.04, "count_to": str(counts)})}
    repair = subprocess.Popen([sys.executable, "-m", "hpcsynth", "repair", str(run.root), "--attempts", "1",
                               "--workers", "2"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, start_new_session=True)
    workers: list[dict] = []
    try:  # stopped once a sub-run shard is committed and another holds records but is not committed
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            launches = [r for r in sub_records(run) if r["pid"] == repair.pid and len(r["workers"]) == 2]
            done = list(run.repair_dir.glob("attempt-1/*/done/*.json"))
            logs = [p for p in run.repair_dir.glob("attempt-1/*/work/*/records.jsonl")
                    if len(p.read_bytes().splitlines()) > 2]
            if launches and done and logs:
                workers = launches[0]["workers"]
                break
            assert repair.poll() is None, f"repair ended before it could be stopped: {repair.stderr.read()}"
            time.sleep(0.01)
        else:
            pytest.fail("the repair never reached the middle of a sub-run shard with its two workers")
        if how == "cancel":
            result = run_cli("cancel", run.root)
            assert result.returncode == 0, result.stderr
            assert f"stopped `hpcsynth repair` (pid {repair.pid} on {socket.gethostname()})" in result.stdout
            assert f"`hpcsynth repair {run.root}` goes on from them" in result.stdout
        else:
            os.kill(repair.pid, signal.SIGTERM)
        assert repair.wait(timeout=30) == 130, repair.stderr.read()
        assert "interrupted; committed shards of its sub-runs are kept" in repair.stderr.read()
        assert all_gone(workers, timeout=5), "a sub-run worker ran on after the repair was stopped"
        assert sub_records(run) == [] and not (run.repair_dir / ".lock").exists(), "it unwound: records, lock"
        assert "has no local workers" in run_cli("cancel", run.root).stdout
    finally:
        if repair.poll() is None:
            os.killpg(repair.pid, signal.SIGKILL)
        for worker in workers:
            if same_process(worker["pid"], worker["start"]):
                os.kill(worker["pid"], signal.SIGKILL)
        repair.wait()
    before = {r["id"] for _, _, sub in run.repair_runs() for r in outputs(sub)}
    assert before and before < refused, "stopped mid-attempt"

    again = run_cli("repair", run.root, "--attempts", "1", "--workers", "2",
                    env={"HPCSYNTH_FAKE_FAULTS": json.dumps({"count_to": str(counts)})})
    assert again.returncode == 0, again.stderr
    ids = [r["id"] for _, _, sub in run.repair_runs() for r in outputs(sub)]
    assert len(ids) == len(set(ids)) and set(ids) == refused, "each (record, attempt 1) committed exactly once"
    generated = Counter(counts.read_text().split())
    assert set(generated) == refused
    assert all(generated[i] == 1 for i in before), "records committed before the stop were not generated again"


def test_cancel_follows_no_link_among_the_sub_runs_and_names_a_damaged_one(tmp_path: Path) -> None:
    """Planted under RUN/repair/: a lock linked to one naming a process of ours, a sub-run, an attempt and a
    local/ folder linked to another run's records naming it, a sub-run with a damaged launch record. Only the
    real sub-run's launch is stopped; the damaged one is named (exit 1) and the rest still cancelled."""
    run = planned_fake_run(tmp_path, docs=6, shard_docs=3)
    host = socket.gethostname()
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    launch = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        start = process_start(bystander.pid)
        other = tmp_path / "other"  # another run of the same user: its launch must not be stopped
        (other / "local").mkdir(parents=True)
        (other / "local" / f"{host}.{bystander.pid}.json").write_text(json.dumps(
            {"host": host, "pid": bystander.pid, "start": start, "started": 1.0, "gpus": [], "workers": []}))
        (other / "repair.lock").write_text(json.dumps({"owner": f"{host}:{bystander.pid}:{start}:x", "renewed": 1.0}))
        attempt = run.repair_dir / "attempt-1"
        attempt.mkdir(parents=True)
        (run.repair_dir / ".lock").symlink_to(other / "repair.lock")
        (run.repair_dir / "attempt-2").symlink_to(tmp_path)  # holds other/, a "sub-run" with local/
        (attempt / "linked").symlink_to(other)
        (attempt / "local-linked").mkdir()
        (attempt / "local-linked" / "local").symlink_to(other / "local")
        (attempt / "damaged" / "launches").mkdir(parents=True)
        (attempt / "damaged" / "launches" / "1.json").write_text('{"arrays": [{"job_id": "--user=root"}]}')
        (attempt / "real" / "local").mkdir(parents=True)
        (attempt / "real" / "local" / f"{host}.{launch.pid}.json").write_text(json.dumps(
            {"host": host, "pid": launch.pid, "start": process_start(launch.pid), "started": 1.0, "gpus": [],
             "workers": []}))

        result = run_cli("cancel", run.root)
        assert result.returncode == 1, (result.stdout, result.stderr)
        assert f"attempt-1/real: stopped the local launch pid {launch.pid}" in result.stdout
        assert "attempt-1/damaged:" in result.stderr and "is not a Slurm job id" in result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
        assert launch.wait(timeout=30) == -signal.SIGTERM
        assert bystander.poll() is None and process_start(bystander.pid) == start, "nothing outside was signalled"
        assert (other / "local" / f"{host}.{bystander.pid}.json").exists(), "another run's record left as it was"
    finally:
        for proc in (bystander, launch):
            proc.kill()
            proc.wait()
