"""Faults: kill -9 anywhere, hung engines, out-of-memory, several workers sharing shards."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from hpcsynth.generate.engines.fake import FakeEngine
from hpcsynth.files import read_json, read_jsonl_zst
from hpcsynth.execute.launch import launch_run
from hpcsynth.generate.pull import pull_shards
from hpcsynth.rundir import RunDir
from hpcsynth.generate.worker import run_shard

from conftest import planned_fake_run, run_cli


def planned_run(tmp_path: Path, name: str, docs: int = 40, **sections) -> RunDir:
    return planned_fake_run(tmp_path, name, docs, shard_docs=10, **sections)


def outputs(run: RunDir) -> list[dict]:
    return [r for shard in run.shard_ids() for r in read_jsonl_zst(run.output_path(shard))]


def worker(run: RunDir, faults: dict | None = None, args: tuple[str, ...] = (), **kwargs) -> subprocess.Popen:
    env = {**os.environ, "HPCSYNTH_FAKE_FAULTS": json.dumps(faults or {})}
    return subprocess.Popen([sys.executable, "-m", "hpcsynth.generate.pull", str(run.root), *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kwargs)


def test_kill_9_at_random_points_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    reference = planned_run(tmp_path, "reference")
    pull_shards(reference.root)
    expected = outputs(reference)
    assert len(expected) == 40 * 4

    run = planned_run(tmp_path, "killed")
    rng = random.Random(1234)
    kills = attempts = 0
    while kills < 20:
        attempts += 1
        assert attempts < 80, "the worker kept finishing before it could be killed"
        proc = worker(run, {"delay_s": 0.05})
        time.sleep(rng.uniform(0.2, 0.6))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        assert not all(run.is_done(s, run.fingerprint()) for s in run.shard_ids()) or kills >= 20, \
            f"finished after only {kills} kills"
    proc = worker(run)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()[-2000:]
    got = outputs(run)
    ids = [r["id"] for r in got]
    assert len(ids) == len(set(ids)), "a record was produced twice"
    assert ids == [r["id"] for r in expected], "a record was lost or reordered"
    assert [r["text"] for r in got] == [r["text"] for r in expected]
    assert kills >= 20


def test_watchdog_fails_a_hung_shard_with_a_reason(tmp_path: Path) -> None:
    run = planned_run(tmp_path, "hang", docs=10, worker={"watchdog_s": 0.5, "heartbeat_interval_s": 0.1})
    proc = worker(run, {"hang_on": "Document 3 "})
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err.decode()[-2000:]
    reason = read_json(run.failed_path(0))["reason"]
    assert reason.startswith("watchdog: no completion for") and "in flight" in reason
    # The records finished before the hang are kept for the retry.
    assert len(run.progress_path(0).read_bytes().splitlines()) == 1 + 3 * 4  # the fingerprint header


def test_out_of_memory_steps_down_and_is_recorded(tmp_path: Path) -> None:
    run = planned_run(tmp_path, "oom", docs=10, worker={"batch_size": 16})
    config = run.config()
    result = run_shard(run, 0, FakeEngine(config, oom_above=4), config, "me")
    assert result.state == "done" and result.records == 40
    assert read_json(run.done_path(0))["step_downs"] == ["concurrency 16 -> 8", "concurrency 8 -> 4"]


def test_out_of_memory_past_the_floor_fails(tmp_path: Path) -> None:
    run = planned_run(tmp_path, "oom2", docs=10, worker={"batch_size": 16, "oom_retries": 1})
    config = run.config()
    result = run_shard(run, 0, FakeEngine(config, oom_above=2), config, "me")
    assert result.state == "failed" and "out of memory" in result.error


def test_crashing_engine_fails_the_shard_and_retry_completes(tmp_path: Path) -> None:
    run = planned_run(tmp_path, "crash", docs=20)
    os.environ["HPCSYNTH_FAKE_FAULTS"] = json.dumps({"crash_on": "Document 12 "})
    try:
        report = launch_run(run)
    finally:
        del os.environ["HPCSYNTH_FAKE_FAULTS"]
    assert report.done == 1 and [s for s, _ in report.failed] == [1]
    assert "engine crashed" in report.failed[0][1]
    assert launch_run(run).failed, "failed shards are skipped unless asked"
    report = launch_run(run, retry_failed=True)
    assert report.done == 2 and not report.failed


def test_local_workers_share_shards_and_see_their_gpu(tmp_path: Path) -> None:
    run = planned_run(tmp_path, "multi", docs=60)
    os.environ["HPCSYNTH_FAKE_FAULTS"] = json.dumps({"delay_s": 0.005})
    try:
        report = launch_run(run, workers=2)
    finally:
        del os.environ["HPCSYNTH_FAKE_FAULTS"]
    assert report.done == 6 and not report.failed
    ids = [r["id"] for r in outputs(run)]
    assert len(ids) == len(set(ids)) == 240
    logs = [run.log_path(f"worker-local-{i}").read_text() for i in range(2)]
    assert "CUDA_VISIBLE_DEVICES=0" in logs[0] and "CUDA_VISIBLE_DEVICES=1" in logs[1]
    shards_per_worker = [log.count(" committed: ") for log in logs]
    assert sum(shards_per_worker) == 6 and min(shards_per_worker) >= 1, shards_per_worker


def test_status_sees_a_killed_local_worker_at_once(tmp_path: Path) -> None:
    from hpcsynth.status.collect import collect_status

    run = planned_run(tmp_path, "dead", docs=20)
    proc = worker(run, {"delay_s": 0.05})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and collect_status(run).records_done < 4:
        time.sleep(0.1)
    assert collect_status(run).shards.running == 1
    proc.send_signal(signal.SIGKILL)
    # Killed but not yet reaped (a zombie, as where PID 1 reaps nothing): already gone for status.
    while Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline + 30
        time.sleep(0.05)
    zombie = collect_status(run)
    assert zombie.live_workers == 0 and zombie.shards.running == 0, zombie.shards
    proc.wait()
    current = collect_status(run)
    assert current.shards.running == 0 and current.shards.stale == 1, current.shards
    assert current.tasks[0]["state"] == "generating" and current.tasks[0]["startup_s"] >= 0


def test_worker_takes_over_a_shard_whose_holder_died_meanwhile(tmp_path: Path) -> None:
    import threading

    from hpcsynth.generate.worker import WorkerSession

    run = planned_run(tmp_path, "takeover", docs=20)
    # Shard 0 only: a worker goes round its shards from an offset of its own, and this one must hold 0.
    holder = worker(run, {"delay_s": 0.2}, args=("--shards", "0"))
    deadline = time.monotonic() + 30
    while not run.progress_path(0).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    config = run.config()
    def kill_holder() -> None:
        holder.send_signal(signal.SIGKILL)
        holder.wait()  # reaped, as its parent (Slurm, a shell) would: a zombie still answers kill(pid, 0)

    threading.Timer(0.4, kill_holder).start()
    results = WorkerSession(run, FakeEngine(config, delay_s=0.05), config, "taker").work([0, 1])
    holder.wait()
    assert [(r.shard, r.state) for r in results] == [(1, "done"), (0, "done")], results
    ids = [r["id"] for r in outputs(run)]
    assert len(ids) == len(set(ids)) == 80


def test_a_missing_model_is_refused_before_any_worker_starts(tmp_path: Path) -> None:
    # A worker that starts and then fails to load its model: tests/execute/test_launch_local.py.
    run = planned_run(tmp_path, "nostart", docs=5)
    config_path = tmp_path / "broken.yaml"
    config_path.write_text(run.config_path.read_text().replace("engine: fake", "engine: transformers")
                           .replace("path: fake-model", f"path: {tmp_path / 'no-model'}"))
    proc = run_cli("launch", str(run.root), "--config", str(config_path), "--force")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "no-model is not a directory" in proc.stderr
    assert not (run.root / "tasks").exists()
