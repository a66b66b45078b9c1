"""Status tells the truth while a run is live: a two-worker local run on the fake engine, watched through
`status --json` and through a recorded `status --watch` frame."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import orjson

from hpcsynth.rundir import RunDir

from conftest import run_cli, write_corpus


def planned(tmp_path: Path, docs: int = 160) -> Path:
    corpus = write_corpus(tmp_path / "corpus.jsonl", docs)
    config = tmp_path / "fake.yaml"
    config.write_text("prompts: [faq, math, table, tutorial]\nplan: {shard_docs: 10}\n"
                      "model: {engine: fake, path: fake-model}\n"
                      "worker: {flush_interval_s: 0.2, heartbeat_interval_s: 0.25}\n")
    run = tmp_path / "run"
    assert run_cli("plan", str(config), "--run", str(run), "--input", str(corpus)).returncode == 0
    return run


def launch(run: Path) -> subprocess.Popen:
    env = {**os.environ, "HPCSYNTH_FAKE_FAULTS": json.dumps({"delay_s": 0.02})}
    return subprocess.Popen([sys.executable, "-m", "hpcsynth", "launch", str(run), "--workers", "2"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_live_status_has_generation_time_a_steady_rate_and_cpu_hours(tmp_path: Path) -> None:
    run = planned(tmp_path)
    proc = launch(run)
    snapshots = []
    try:
        deadline = time.time() + 60
        while proc.poll() is None and time.time() < deadline:
            status = orjson.loads(run_cli("status", str(run), "--json").stdout)
            if status["live_workers"] == 2 and min(t["generation_s"] or 0 for t in status["tasks"]) > 1.0:
                snapshots.append(status)
            time.sleep(0.3)
    finally:
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert len(snapshots) >= 3, f"only {len(snapshots)} snapshots while both workers generated"
    for status in snapshots:
        for task in status["tasks"]:
            # generation time grows while the worker generates; idle stays a sliver of it
            assert task["state"] == "generating" and task["idle_s"] < 0.25 * task["generation_s"], task
            assert task["device"] == "cpu" and task["gpus"] == 0
        assert status["gpu_hours"] == 0 and status["cpu_worker_hours"] > 0
        assert status["eta_s"] is not None
    rates = [s["tokens_per_s"] for s in snapshots]
    assert min(rates) > 0 and max(rates) < 2.5 * min(rates), rates  # never 0 at a shard boundary
    final = orjson.loads(run_cli("status", str(run), "--json").stdout)
    assert final["shards"]["done"] == 16 and final["live_workers"] == 0
    assert all(t["state"] == "finished" and t["generation_s"] > 1.0 for t in final["tasks"])
    # The worker logs are named as docs/run-directory.md says, with one line per committed shard.
    assert sorted(p.name for p in (run / "logs").iterdir()) == ["worker-local-0.log", "worker-local-1.log"]
    committed = [re.search(r"shard (\d+) committed: (\d+) records, \d+ rejected, (\d+) completion tokens, "
                           r"(\d+\.\d)s$", line) for log in (run / "logs").iterdir()
                 for line in log.read_text().splitlines() if " committed" in line]
    assert all(committed) and sorted(int(m.group(1)) for m in committed) == list(range(16)), committed
    assert sum(int(m.group(2)) for m in committed) == 640 and all(float(m.group(4)) > 0 for m in committed)
    assert sum(int(m.group(3)) for m in committed) == final["tokens_done"]


def test_gpu_workers_count_gpu_hours_not_cpu_hours(tmp_path: Path) -> None:
    """The other half of "say what was used": workers whose engine ran on GPUs give GPU-hours."""
    run = planned(tmp_path, docs=10)
    (run / "tasks").mkdir()
    for name, device, gpus in (("gpu-a", "cuda", 2), ("gpu-b", "cuda", 1)):
        (run / "tasks" / f"{name}.json").write_bytes(orjson.dumps({
            "name": name, "state": "finished", "device": device, "gpus": gpus, "wall_s": 1800.0,
            "startup_s": 100.0, "generation_s": 1600.0, "idle_s": 100.0, "updated": time.time()}))
    status = orjson.loads(run_cli("status", str(run), "--json").stdout)
    assert status["gpu_hours"] == 1.5 and status["cpu_worker_hours"] == 0
    table = run_cli("status", str(run), env={"COLUMNS": "80"}).stdout
    assert "GPU-hours 1.50" in table and "CPU worker-hours" not in table


def test_watch_shows_live_frames_at_80_columns_and_ends_with_a_summary(tmp_path: Path) -> None:
    from rich.console import Console

    from hpcsynth.status.view import watch_status

    run = planned(tmp_path, docs=120)
    proc = launch(run)
    console = Console(record=True, width=80, file=io.StringIO(), force_terminal=True)
    try:
        watch_status(RunDir(run), 0.4, console=console)  # returns by itself once every shard is done
    finally:
        proc.communicate(timeout=120)
    frames = ["hpcsynth run " + f for f in console.export_text().split("hpcsynth run ")[1:]]
    # frames with both workers generating for a second or more: a rate and an ETA in every one
    live = [f for f in frames if "(2 workers, 2 live)" in f and "generation 0m00s" not in f]
    assert live, frames[:3]
    assert all(" 0 tok/s" not in f and "ETA -" not in f for f in live), live
    rates = [int(re.search(r"([\d,]+) tok/s", f).group(1).replace(",", "")) for f in live]
    assert max(rates) < 2.5 * min(rates), rates
    # The watch ends once every shard is done; a worker may not have written its "finished" yet (N live).
    tail = re.split(r"\d+ live\)\n", frames[-1], maxsplit=1)[1]
    assert tail.startswith("done: all 12 shards,\n")
    assert "".join(tail.split()) == "".join(f"done: all 12 shards, 480 records in {run}/outputs;".split()) + \
        "".join(f"next: hpcsynth reduce {run}".split())
    short = [line for frame in frames for line in frame.splitlines() if str(run) not in line]
    assert short and all(len(line) <= 80 for line in short)
    # piped, as a script reads it (80 columns): the same summary, no phrase broken across lines
    piped = run_cli("status", str(run), env={"COLUMNS": "80"}).stdout.splitlines()
    assert any(line.startswith("CPU worker-hours") for line in piped) and "GPU-hours" not in "\n".join(piped)
    assert piped[-1] == f"next: hpcsynth reduce {run}"  # one line, whatever the path's length: it pastes whole
    assert all(len(line) <= 80 for line in piped if str(run) not in line)


def test_damaged_task_files_do_not_break_status(tmp_path: Path) -> None:
    run = planned(tmp_path, docs=10)
    tasks = run / "tasks"
    tasks.mkdir()
    (tasks / "list.json").write_text("[]")
    (tasks / "torn.json").write_text('{"name": "torn", "state": "gener')
    (tasks / "odd.json").write_text('{"name": "odd", "state": "generating", "pid": "x", "updated": "now", '
                                    '"generation_s": "a lot", "gpus": null, "tokens_per_s": [1]}')
    (tasks / "\u00e9t\u00e9 'q'.json").write_bytes(b"\x00\xff")
    status = orjson.loads(run_cli("status", str(run), "--json").stdout)
    assert status["workers"] == 1 and status["live_workers"] == 0 and status["worker_hours"]["generation_s"] == 0
    proc = run_cli("status", str(run))
    assert proc.returncode == 0 and "(1 workers, 0 live)" in proc.stdout, proc.stderr


def test_piped_status_keeps_long_paths_whole_and_cuts_long_reasons(tmp_path: Path) -> None:
    """At 80 columns, piped: a run path wider than the line stays one line (folded, the next command
    no longer pasted whole); a long failure reason ends in an ellipsis instead of running on."""
    root = tmp_path / ("team-runs-" + "x" * 60)
    root.mkdir()
    run = planned(root, docs=20)  # two shards; the second fails
    env = {"HPCSYNTH_FAKE_FAULTS": json.dumps({"crash_on": "Document 12 "})}
    assert run_cli("launch", str(run), env=env).returncode != 0
    marker = run / "failed" / "000001.json"
    marker.write_bytes(orjson.dumps({**orjson.loads(marker.read_bytes()), "reason": "engine crashed: " + "why " * 60}))
    lines = run_cli("status", str(run), env={"COLUMNS": "80"}).stdout.splitlines()
    assert len(str(run)) > 80 and lines[0] == f"hpcsynth run {run}"
    failed = next(line for line in lines if line.startswith("failed 000001: engine crashed"))
    assert len(failed) == 80 and failed.endswith("\u2026")
    assert lines[-1] == f"next: hpcsynth launch {run} --retry-failed"
    assert all(len(line) <= 80 for line in lines if str(run) not in line), lines


def test_status_json_keeps_its_keys_and_order(tmp_path: Path) -> None:
    """collect_status returns a RunStatus; `status --json` prints it as the dict it used to return, byte
    for byte (orjson writes the dataclass the same way, so a grid's status prints its generators alike)."""
    from hpcsynth.rundir import RunDir
    from hpcsynth.status.collect import collect_status

    run = planned(tmp_path, docs=10)
    printed = run_cli("status", str(run), "--json").stdout
    data = orjson.loads(printed)
    assert list(data) == ["run", "fingerprint", "shards", "documents", "prompts", "docs_done", "records_done",
                          "records_expected", "tokens_done", "tokens_per_s", "eta_s", "stale_shards",
                          "running_shards", "failed_shards", "redo_shards", "gpu_hours", "cpu_worker_hours",
                          "live_workers", "worker_hours", "workers", "tasks", "timeline", "slurm",
                          "repair"]  # `hpcsynth repair`'s sub-runs, added last ([] without repair)
    assert data["repair"] == []
    assert list(data["shards"]) == ["pending", "running", "requeued", "stale", "failed", "done", "total"]
    assert list(data["slurm"]) == ["jobs", "array_tasks", "sacct_calls", "pending_reasons", "never_starts",
                                   "failed_tasks"]
    status = collect_status(RunDir(run))
    assert orjson.dumps(status) == orjson.dumps(status.to_json())
    assert orjson.dumps(status.to_json(), option=orjson.OPT_INDENT_2).decode() + "\n" == printed
