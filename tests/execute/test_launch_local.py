"""Local launch as a new user meets it: a run that cannot start is refused in one line before any worker
starts, and workers that fail anyway make launch exit non-zero with their first error."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hpcsynth.config import load_config
from hpcsynth.errors import ConfigError
from hpcsynth.generate.engines import check_model

from conftest import write_corpus


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", **kwargs.pop("env", {})}
    return subprocess.run([sys.executable, "-m", "hpcsynth", *args], capture_output=True, text=True, timeout=300,
                          env=env, **kwargs)


def test_plan_by_name_refuses_a_config_without_a_model(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus.jsonl", 4)
    proc = cli("plan", "demo", "--run", str(tmp_path / "run"), "--input", str(corpus))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "'model.path' is empty" in proc.stderr and "hpcsynth demo DIR" in proc.stderr
    assert not (tmp_path / "run").exists()  # nothing half-planned is left behind
    empty = tmp_path / "empty-model"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    mine = tmp_path / "mine.yaml"
    # The model's path set inside the config's own model: section (a second model: section is refused).
    mine.write_text(cli("config", "demo").stdout.replace("model:\n", f"model:\n  path: {empty}\n", 1))
    proc = cli("plan", str(mine), "--run", str(tmp_path / "run"), "--input", str(corpus))
    assert proc.returncode == 2 and "holds no weights" in proc.stderr, proc.stderr


def test_launch_refuses_a_new_config_without_a_model_before_any_worker(tmp_path: Path) -> None:
    run = _planned_fake_run(tmp_path)
    config = tmp_path / "new.yaml"
    config.write_text((run / "config.yaml").read_text().replace("engine: fake", "engine: transformers")
                      .replace("path: fake-model", f"path: {tmp_path / 'no-model'}"))
    proc = cli("launch", str(run), "--workers", "2", "--config", str(config), "--force")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "no-model is not a directory" in proc.stderr and str(config) in proc.stderr
    assert not (run / "tasks").exists() and not (run / "logs").exists()


def test_workers_that_fail_to_start_make_launch_fail_with_their_error(tmp_path: Path, tiny_model: Path) -> None:
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # passes the up-front check, fails in the engine
    run = _planned_fake_run(tmp_path)
    config = tmp_path / "new.yaml"
    config.write_text((run / "config.yaml").read_text().replace("engine: fake", "engine: transformers")
                      .replace("path: fake-model", f"path: {broken}"))
    proc = cli("launch", str(run), "--workers", "2", "--config", str(config), "--force")
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "0/2 shards done" in proc.stdout
    assert "2 of 2 worker(s) failed; first: worker 0" in proc.stderr, proc.stderr
    assert "worker-local-0.log" in proc.stderr and "Traceback" not in proc.stderr
    first = proc.stderr.split("first: ", 1)[1]
    assert "model" in first.lower() or "safetensor" in first.lower() or "header" in first.lower(), first
    status = cli("status", str(run)).stdout
    assert "2 worker(s) failed to start" in status, status


def test_a_worker_in_the_launching_process_that_fails_is_one_line(tmp_path: Path) -> None:
    run = _planned_fake_run(tmp_path)
    proc = cli("launch", str(run), env={"HPCSYNTH_FAKE_FAULTS": '{"fail_start": "libcuda.so.1: cannot open"}'})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("hpcsynth: error: the worker failed: RuntimeError: libcuda.so.1: cannot open")
    assert "worker-local.log" in proc.stderr
    assert "Traceback" in (run / "logs" / "worker-local.log").read_text()


def _planned_fake_run(tmp_path: Path) -> Path:
    corpus = write_corpus(tmp_path / "corpus.jsonl", 8)
    config = tmp_path / "fake.yaml"
    config.write_text("prompts: [faq]\nplan: {shard_docs: 4}\nmodel: {engine: fake, path: fake-model}\n")
    run = tmp_path / "run"
    proc = cli("plan", str(config), "--run", str(run), "--input", str(corpus))
    assert proc.returncode == 0, proc.stderr
    return run


def test_a_model_directory_only_compute_nodes_see_is_left_to_slurm_workers(tmp_path: Path) -> None:
    base = load_config("demo")
    elsewhere = dataclasses.replace(base, model=dataclasses.replace(base.model, path="/scratch/models/smollm2"))
    check_model(elsewhere, "c.yaml", here=False)  # plan, and launch --executor slurm
    with pytest.raises(ConfigError, match="is not a directory"):
        check_model(elsewhere, "c.yaml")  # local workers would fail: say so now


def test_a_piped_launch_prints_progress_lines_while_it_runs(tmp_path: Path) -> None:
    # launch printed nothing until it ended (60 s blank on a real run, to a terminal or a batch log).
    from conftest import planned_fake_run, run_cli

    run = planned_fake_run(tmp_path, docs=20, shard_docs=2)
    result = run_cli("launch", str(run.root), "--progress", "0.3",
                     env={"HPCSYNTH_FAKE_FAULTS": json.dumps({"delay_s": 0.03})})
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("launch: ")]
    assert len(lines) >= 2, result.stderr
    assert all("/10 shards" in line and "records" in line and "tok/s" in line for line in lines), lines
    assert "\r" not in result.stderr and "\x1b" not in result.stderr, "piped: plain lines"
