"""Hostile but ordinary inputs on the way to Slurm: profiles, recorded job ids, run paths, the interpreter.

No cluster needed: everything here is refused before sbatch runs, or read from the script submitit would
submit (the same text sbatch gets).
"""

from __future__ import annotations

import dataclasses
import os
import stat
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from hpcsynth.config import SlurmConfig, config_from_dict
from hpcsynth.errors import ConfigError, HpcsynthError
from hpcsynth.rundir import RunDir

from conftest import write_corpus

CONFIG = "prompts: [faq]\nplan: {shard_docs: 5}\nmodel: {engine: fake}\n"


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpcsynth", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def planned(root: Path) -> Path:
    corpus = write_corpus(root.parent / "corpus.jsonl", 6)
    config = root.parent / "config.yaml"
    config.write_text(CONFIG)
    proc = cli("plan", str(config), "--run", str(root), "--input", str(corpus))
    assert proc.returncode == 0, proc.stderr
    return root


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stderr.startswith("hpcsynth: error: ") and proc.stderr.count("\n") == 1, proc.stderr
    return proc.stderr


def script(run: Path, slurm: SlurmConfig) -> str:
    """The batch script submitit would hand to sbatch for this run and profile."""
    from hpcsynth.execute.slurm import make_executor

    executor = make_executor(slurm, RunDir(run).root / "slurm")
    return executor._make_submission_file_text(executor._submitit_command_str, "UID")


def test_sbatch_entry_with_a_newline_is_refused_naming_profile_line_and_key(tmp_path: Path) -> None:
    run = planned(tmp_path / "run")
    profile = tmp_path / "site.yaml"
    profile.write_text('slurm:\n  partition: gpu\n  sbatch: ["requeue\\ntouch INJECTED #"]\n')
    err = one_line_error(cli("launch", str(run), "--executor", "slurm", "--profile", str(profile)))
    assert f"{profile} line 3" in err and "slurm.sbatch" in err
    assert not (Path.cwd() / "INJECTED").exists()


@pytest.mark.parametrize("key, value", [
    ("partition", "gpu\ntouch X"), ("qos", "normal\r"), ("account", "a b"), ("job_name", "x\n#SBATCH --time=0"),
    ("job_name", ""), ("sbatch", ["constraint=h100\ntouch X"]), ("sbatch", ["time 9999"]),
    ("sbatch", ["--Mem=1"]), ("sbatch", ["signal=B:TERM@1"]), ("sbatch", ["output=/tmp/x"]),
    ("python", "/usr/bin/python\nrm -rf ~"),
])
def test_every_slurm_string_is_checked(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"slurm.{key}"):
        config_from_dict({"slurm": {key: value}})


def test_legal_options_keep_every_directive_before_the_first_command(tmp_path: Path) -> None:
    """sbatch stops reading #SBATCH at the first command: --time and --signal must come before it."""
    slurm = config_from_dict({"slurm": {
        "partition": "gpu,debug", "qos": "high", "account": "team-a_1", "job_name": "fp.v2",
        "sbatch": ["constraint=h100&ib", "exclusive", "--comment=two words"], "time_min": 30,
        "setup": ["module load cuda", "echo 'setup; ok'"]}}).slurm
    text = script(tmp_path / "run dir; $(touch X)", slurm)
    lines = text.splitlines()
    first_command = next(i for i, line in enumerate(lines) if line.strip() and not line.startswith("#"))
    directives = [line for line in lines if line.startswith("#SBATCH")]
    assert all(lines.index(d) < first_command for d in directives)
    for wanted in ("--time=30", "--signal=USR2@120", "--partition=gpu,debug", "--exclusive",
                   "--constraint='h100&ib'", "--comment='two words'"):
        assert any(d.startswith(f"#SBATCH {wanted}") for d in directives), (wanted, directives)


def test_python_is_quoted_in_the_job_command(tmp_path: Path) -> None:
    slurm = SlurmConfig(python="/opt/my env/bin/python; touch X")
    command = script(tmp_path / "run", slurm).splitlines()
    line = next(line for line in command if "submitit.core._submit" in line)
    assert "'/opt/my env/bin/python; touch X' -u -m submitit.core._submit" in line


def test_directive_guard_catches_a_config_built_in_code(tmp_path: Path) -> None:
    # Code (a plugin, a notebook) can build SlurmConfig without the YAML checks; the edge still holds.
    from hpcsynth.execute.slurm import executor_parameters

    bad = dataclasses.replace(SlurmConfig(), partition="gpu\ntouch X")
    with pytest.raises(HpcsynthError, match="spans lines"):
        executor_parameters(bad)


@pytest.mark.parametrize("name", ["run%j", "run%%A", "run\nx"])
def test_run_path_that_slurm_would_expand_is_refused_at_launch(tmp_path: Path, name: str) -> None:
    run = planned(tmp_path / name)
    err = one_line_error(cli("launch", str(run), "--executor", "slurm"))
    assert "'%' or a control character" in err


def test_plan_and_reduce_on_slurm_refuse_a_folder_slurm_would_expand(tmp_path: Path) -> None:
    """plan --executor slurm into RUN/slurm/plan-*/ and reduce --executor slurm into OUT/slurm/: with a
    '%' there, Slurm and submitit wrote the job files to a sibling named after the job (p1238/ beside
    p%j/), outside the run. Refused before anything is submitted or left behind."""
    env, calls = fake_slurm(tmp_path, "sbatch", "sacct")
    corpus = write_corpus(tmp_path / "corpus.jsonl", 6)
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    err = one_line_error(cli("plan", str(config), "--run", str(tmp_path / "p%j"), "--input", str(corpus),
                             "--executor", "slurm", env=env))
    assert "run directory" in err and "'%' or a control character" in err
    run = planned(tmp_path / "run")
    assert cli("launch", str(run)).returncode == 0
    for out in (["--out", str(tmp_path / "out%A")], []):
        where = run if out else tmp_path / "run%a"
        if not out:
            run.rename(where)
        err = one_line_error(cli("reduce", str(where), *out, "--executor", "slurm", env=env))
        assert "reduce output directory" in err and "pass --out a directory without them" in err
    assert not calls.exists(), "nothing reached sbatch or sacct"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "config.yaml", "corpus.jsonl", "run%a"]


def fake_slurm(tmp_path: Path, *tools: str) -> tuple[dict, Path]:
    """Slurm tools that only record that they were called."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    for name in tools:
        tool = bin_dir / name
        tool.write_text(f"#!/bin/sh\necho {name} \"$@\" >> '{calls}'\n")
        tool.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}, calls


def fake_scancel(tmp_path: Path) -> tuple[dict, Path]:
    """A scancel that records its arguments: stands in for Slurm to show what we would pass it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    argv = tmp_path / "argv.json"
    tool = bin_dir / "scancel"
    tool.write_text(f"#!{sys.executable}\nimport json, sys\nopen({str(argv)!r}, 'w').write(json.dumps(sys.argv[1:]))\n")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}, argv


def record(run: Path, *job_ids: object) -> None:
    (run / "launches").mkdir(exist_ok=True)
    (run / "launches" / "1.json").write_bytes(orjson.dumps({"arrays": [{"job_id": j, "tasks": 1} for j in job_ids]}))


@pytest.mark.parametrize("job_id", ["--user=root", "-u", "123 456", "123;id", 123, "12_3_4"])
def test_recorded_job_id_that_is_not_one_is_refused_and_never_reaches_scancel(tmp_path: Path, job_id: object) -> None:
    run = planned(tmp_path / "run")
    record(run, "4242", job_id)
    env, argv = fake_scancel(tmp_path)
    err = one_line_error(cli("cancel", str(run), env=env))
    assert "launches/1.json" in err and "is not a Slurm job id" in err
    assert not argv.exists()
    one_line_error(cli("status", str(run), "--json", env=env))  # status reads the same ids for sacct


def test_scancel_gets_the_ids_after_double_dash(tmp_path: Path) -> None:
    run = planned(tmp_path / "run")
    record(run, "4242", "4243_7", "4244_[0-3%2]")
    env, argv = fake_scancel(tmp_path)
    proc = cli("cancel", str(run), env=env)
    assert proc.returncode == 0, proc.stderr
    assert orjson.loads(argv.read_bytes()) == ["--", "4242", "4243_7", "4244_[0-3%2]"]


def test_garbled_launch_record_is_one_line(tmp_path: Path) -> None:
    run = planned(tmp_path / "run")
    (run / "launches").mkdir()
    (run / "launches" / "x.json").write_text('["not", "a", "launch"]')
    env, _ = fake_scancel(tmp_path)
    assert "not a launch record" in one_line_error(cli("cancel", str(run), env=env))


@pytest.mark.slurm
def test_hostile_but_legal_paths_and_options_run_on_real_slurm(tmp_path: Path, cluster) -> None:
    """On the real cluster: a run path with spaces, quotes, ';' and $(), an explicit (quoted) interpreter
    and a two-word sbatch value all reach the job intact, and nothing in them runs as a command."""
    import time

    base = tmp_path / "team runs 'q' ;$(touch PWNED)"
    base.mkdir()
    run = planned(base / "run")
    profile = tmp_path / "site.yaml"
    profile.write_text(f"slurm:\n  array_tasks: 1\n  partition: gpu\n  cpus_per_task: 1\n  mem_gb: 1\n  time_min: 17\n"
                       f"  python: {sys.executable!r}\n  sbatch: ['comment=two words; touch PWNED2']\n")
    env = {**cluster.env, "HPCSYNTH_FAKE_FAULTS": "{}"}
    proc = cli("launch", str(run), "--executor", "slurm", "--profile", str(profile), env=env)
    assert proc.returncode == 0, proc.stderr
    job = orjson.loads(next((run / "launches").glob("*.json")).read_bytes())["arrays"][0]["job_id"]
    shown = subprocess.run(["scontrol", "show", "job", job], env=cluster.env, capture_output=True, text=True).stdout
    assert "TimeLimit=00:17:00" in shown and "Comment=two words; touch PWNED2" in shown
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and len(list((run / "done").glob("*.json"))) < 2:
        time.sleep(1)
    assert len(list((run / "done").glob("*.json"))) == 2, list((run / "slurm").rglob("*.out"))
    assert not list(tmp_path.rglob("PWNED*")) and not Path("PWNED").exists()


@pytest.mark.parametrize("content, says", [
    (b'{"jobs": [{"dataset": "reduce", "array": "4242", "merge": "4243;id"}]}', "is not a Slurm job id"),
    (b'{"jobs": [{"dataset": "reduce", "array": "--user=root", "merge": "4243"}]}', "is not a Slurm job id"),
    (b'{"jobs": [{"dataset": "red', "cannot be read as hpcsynth's record"),  # cut while written
    (b'{"jobs": "4242"}', "cannot be read as hpcsynth's record"),
    (b"\x00" * 64, "cannot be read as hpcsynth's record"),
])
def test_a_damaged_or_hostile_reduce_job_record_is_one_line_and_never_reaches_scancel(
        tmp_path: Path, content: bytes, says: str) -> None:
    """RUN/reduce-jobs.json (what `reduce --executor slurm` submitted, for cancel): a damaged record is an
    error naming it, not "nothing to cancel" while the jobs run; a hostile id never reaches scancel."""
    run = planned(tmp_path / "run")
    (run / "reduce-jobs.json").write_bytes(content)
    env, argv = fake_scancel(tmp_path)
    err = one_line_error(cli("cancel", str(run), env=env))
    assert "reduce-jobs.json" in err and says in err
    assert not argv.exists()


def test_cancel_passes_the_recorded_reduce_jobs_after_double_dash(tmp_path: Path) -> None:
    run = planned(tmp_path / "run")
    (run / "reduce-jobs.json").write_bytes(orjson.dumps({"jobs": [{"dataset": "reduce", "array": "4242",
                                                                   "merge": "4243"},
                                                                  {"dataset": "reduce", "array": None,
                                                                   "merge": "4250"}]}))
    env, argv = fake_scancel(tmp_path)
    proc = cli("cancel", str(run), env=env)
    assert proc.returncode == 0, proc.stderr
    assert orjson.loads(argv.read_bytes()) == ["--", "4242", "4243", "4250"]
    assert "4242, 4243, 4250" in proc.stdout


RECORD_MANY = """
import sys, time
from pathlib import Path
from hpcsynth.execute.slurm_jobs import record_reduce
while time.time() < float(sys.argv[4]):  # both start together, past their imports
    pass
for i in range(200):
    record_reduce(Path(sys.argv[1]), sys.argv[2], {"array": f"{sys.argv[3]}{i:03d}", "merge": None})
"""


def test_reduces_submitted_at_once_both_stay_recorded(tmp_path: Path) -> None:
    """Each record_reduce rewrites the record from what it read: two at once must not lose each other's."""
    import time

    from hpcsynth.execute.slurm_jobs import recorded_reduce_ids

    path, start = tmp_path / "reduce-jobs.json", str(time.time() + 3)
    procs = [subprocess.Popen([sys.executable, "-c", RECORD_MANY, str(path), name, prefix, start])
             for name, prefix in (("a", "1"), ("b", "2"))]
    assert [proc.wait(timeout=120) for proc in procs] == [0, 0]
    # Without the lock about half were lost (332 of 600 in one run of the same race).
    assert sorted(recorded_reduce_ids(path)) == sorted(f"{p}{i:03d}" for p in "12" for i in range(200))
