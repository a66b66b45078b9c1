"""A local model.path that does not exist fails `plan` (it used to plan and fail only at launch); under
--executor slurm it is a warning, since the compute nodes may see a directory this machine does not."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_cli, write_corpus


def plan(tmp_path: Path, model: str, *extra: str, env: dict | None = None):
    write_corpus(tmp_path / "in" / "a.jsonl", 5)
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {model}\n")
    return run_cli("plan", config, "--run", tmp_path / "run", "--input", tmp_path / "in", "--jobs", "1", *extra,
                   env=env)


@pytest.mark.parametrize("engine", ["transformers", "vllm"])
@pytest.mark.parametrize("path", ["/nonexistent/hpcsynth-model", "./no-such-model"])
def test_a_missing_local_model_directory_fails_the_plan(tmp_path: Path, engine: str, path: str) -> None:
    proc = plan(tmp_path, f"{{engine: {engine}, path: {path}}}")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stdout + proc.stderr
    assert f"c.yaml: 'model.path' {path} is not a directory; point it at a local copy of the model" in proc.stderr
    assert "nothing was planned" in proc.stderr and not (tmp_path / "run").exists()


def test_hub_ids_and_models_without_a_path_plan(tmp_path: Path) -> None:
    # A hub id may sit in the cluster's cache (left to the engine); the fake engine loads nothing.
    assert plan(tmp_path, "{engine: vllm, path: SomeOrg/SomeModel}").returncode == 0
    assert plan(tmp_path, "{engine: fake, path: /nonexistent/hpcsynth-model}", "--force").returncode == 0


def test_a_slurm_plan_only_warns(tmp_path: Path) -> None:
    # No Slurm commands on the PATH: the plan stops at Slurm at once, after the model's check.
    proc = plan(tmp_path, "{engine: transformers, path: /nonexistent/hpcsynth-model}", "--executor", "slurm",
                env={"PATH": str(tmp_path / "no-bin")})
    assert "hpcsynth: warning: " in proc.stderr and "'model.path' /nonexistent/hpcsynth-model is not a directory" \
        in proc.stderr and "launch checks it again where the workers run" in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("hpcsynth: error:")]
    assert not any("model.path" in line for line in errors)
