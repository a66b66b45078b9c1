"""`slurm.python` reaches every job's command line as one quoted word: launch, plan, reduce (parts and
merge) and the grid's reduce all build their executor in execute/slurm.py's make_executor. Before, only
launch quoted it: the plan's and the reduce's job scripts ran `python: "/opt/my env/bin/python; touch X"`
as `/opt/my env/bin/python; touch X -u -m submitit...`, and `touch X` ran on the compute node.

No cluster: a stand-in sbatch keeps each script it is given (the very text sbatch would run) and answers
like sbatch. The real cluster runs a python path with a space in tests/plan/test_plan_slurm.py and
tests/execute/test_slurm_reduce.py.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_corpus

HOSTILE = "/opt/my env/bin/python; touch X"
CONFIG = """\
prompts: [faq]
plan: {{shard_docs: 3, group_mb: 0}}
model: {{engine: fake}}
reduce: {{tokenizer: {tokenizer}, part_shards: 1, min_chars: 1}}
validate: {{action: keep}}
"""
GRID = """\
grid:
  generators: [{name: a}]
  mixins: [{name: none, original_ratio: 0}]
"""
PROFILE = f"slurm:\n  partition: debug\n  max_array_size: 1001\n  python: {HOSTILE!r}\n"


def cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpcsynth", *args], capture_output=True, text=True, timeout=180,
                          env={**os.environ, **env})


@pytest.fixture
def sbatch(tmp_path: Path) -> tuple[dict, Path]:
    """(env with a stand-in sbatch, sacct, squeue and scancel first on PATH, the folder of the scripts it
    was given: 0.sh, 1.sh... in submission order). With a file named `refuse` there, sbatch keeps the script
    and fails, as a real one refusing the job would (a plan's map would otherwise wait on its tasks)."""
    bin_dir, scripts = tmp_path / "bin", tmp_path / "scripts"
    bin_dir.mkdir()
    scripts.mkdir()
    (bin_dir / "sbatch").write_text(
        f"#!/bin/sh\nfor a; do last=$a; done\nn=$(ls '{scripts}' | grep -c '[.]sh$')\n"
        f"cp \"$last\" '{scripts}'/$n.sh\n"
        f"if [ -e '{scripts}/refuse' ]; then echo 'sbatch: error: refused by the test' >&2; exit 1; fi\n"
        f"echo \"Submitted batch job $((4200 + n))\"\n")
    for name in ("sacct", "squeue", "scancel"):
        (bin_dir / name).write_text("#!/bin/sh\nexit 0\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}, scripts


def job_python(script: str) -> str:
    """The interpreter word of the job's command line, as the shell reads it."""
    line = next(line for line in script.splitlines() if "submitit.core._submit" in line)
    words = shlex.split(line)
    return words[words.index("-m") - 2]  # PYTHON -u -m submitit.core._submit FOLDER


def scripts_of(folder: Path) -> list[str]:
    return [(folder / f"{i}.sh").read_text() for i in range(len(list(folder.glob("*.sh"))))]


def setup(tmp_path: Path, tiny_model: Path, grid: bool = False) -> tuple[Path, Path, Path]:
    """(config, corpus, profile)."""
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(tokenizer=tiny_model) + (GRID if grid else ""))
    profile = tmp_path / "site.yaml"
    profile.write_text(PROFILE)
    return config, write_corpus(tmp_path / "corpus.jsonl", 6), profile


def planned_and_generated(tmp_path: Path, tiny_model: Path, grid: bool = False) -> tuple[Path, Path]:
    config, corpus, profile = setup(tmp_path, tiny_model, grid)
    run = tmp_path / "run"
    for args in (["plan", str(config), "--run", str(run), "--input", str(corpus)], ["launch", str(run)]):
        proc = cli(*args, env={})
        assert proc.returncode == 0, proc.stderr
    return run, profile


def test_launch_quotes_python(tmp_path: Path, sbatch, tiny_model: Path) -> None:
    """Launch quoted it before too (test_slurm_injection.py); here through the CLI as the other paths."""
    env, scripts = sbatch
    config, corpus, profile = setup(tmp_path, tiny_model)
    run = tmp_path / "run"
    assert cli("plan", str(config), "--run", str(run), "--input", str(corpus), env={}).returncode == 0
    proc = cli("launch", str(run), "--executor", "slurm", "--profile", str(profile), env=env)
    assert proc.returncode == 0, proc.stderr
    assert [job_python(s) for s in scripts_of(scripts)] == [HOSTILE]


def test_plan_quotes_python(tmp_path: Path, sbatch, tiny_model: Path) -> None:
    env, scripts = sbatch
    (scripts / "refuse").touch()
    config, corpus, profile = setup(tmp_path, tiny_model)
    proc = cli("plan", str(config), "--run", str(tmp_path / "run"), "--input", str(corpus), "--executor", "slurm",
               "--profile", str(profile), env=env)
    assert [job_python(s) for s in scripts_of(scripts)] == [HOSTILE]
    # sbatch's refusal is one line (it was a FailedJobError traceback from the plan's map)
    assert proc.returncode == 2 and "sbatch refused the plan-scan array" in proc.stderr, proc.stderr


def test_reduce_parts_and_merge_quote_python(tmp_path: Path, sbatch, tiny_model: Path) -> None:
    env, scripts = sbatch
    run, profile = planned_and_generated(tmp_path, tiny_model)
    proc = cli("reduce", str(run), "--executor", "slurm", "--profile", str(profile), env=env)
    assert proc.returncode == 0, proc.stderr
    assert "parts pending in array 4200, merge job 4201" in proc.stdout, proc.stdout
    parts, merge = scripts_of(scripts)
    assert "#SBATCH --array=" in parts and "#SBATCH --dependency=afterok:4200" in merge
    assert [job_python(parts), job_python(merge)] == [HOSTILE, HOSTILE]


def test_grid_reduce_quotes_python(tmp_path: Path, sbatch, tiny_model: Path) -> None:
    env, scripts = sbatch
    run, profile = planned_and_generated(tmp_path, tiny_model, grid=True)
    proc = cli("reduce", str(run), "--executor", "slurm", "--profile", str(profile), env=env)
    assert proc.returncode == 0, proc.stderr
    found = scripts_of(scripts)
    assert len(found) == 2 and "afterok:4200" in found[1], proc.stdout  # the one dataset's parts and merge
    assert [job_python(s) for s in found] == [HOSTILE, HOSTILE]
