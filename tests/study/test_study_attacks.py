"""Attacks on the study features (grid, estimate, charts): hostile names and paths, damaged and forged
run files, odd numbers. Each test holds a surprise found by attacking them; fake engine only (fast)."""

from __future__ import annotations

import ast
import os
import shlex
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import yaml

from conftest import Result, run_cli, run_process
from slurm_cluster import wait_cancelled
from test_grid import hpcsynth
from test_grid_changes import fake_grid

HOSTILE_FOLDERS = ["/data/we ird: #x [y], z", "/data/it's $(id) `id`", "/data/a\nb", "/data/ünï \"q\" \\"]


@pytest.mark.parametrize("folder", HOSTILE_FOLDERS)
def test_trainer_arguments_keep_a_hostile_folder_one_path(folder: str) -> None:
    """TRAIN.md is copied and pasted: each form must read back as exactly the dataset's path."""
    from hpcsynth.study.grid_reduce import data_args

    ds = data_args({"format": "datatrove", "dtype": "uint16", "prefix": f"{folder}/mix", "tokens": 5})
    assert yaml.safe_load(ds["nanotron"])["dataset"]["dataset_folder"] == [folder]
    call = ast.parse(ds["datatrove"], mode="eval").body
    assert ast.literal_eval(call.args[0]) == folder
    split = data_args({"format": "megatron", "prefix": f"{folder}/mix-00000", "tokens": 5,
                       "token_files": [{"prefix": "mix-00000", "tokens": 3}, {"prefix": "mix-00001", "tokens": 2}]})
    assert shlex.split(split["megatron"]) == ["--data-path", "3", f"{folder}/mix-00000", "2", f"{folder}/mix-00001"]


def test_a_name_ending_in_a_newline_is_refused(tmp_path: Path) -> None:
    """'$' in a regex also matches before a final newline: "b\\n" once named a directory."""
    config = fake_grid(tmp_path, '    - {name: a}\n    - {name: "b\\n", model: {path: fake-b}}\n')
    proc = hpcsynth("plan", str(config), "--run", str(tmp_path / "run"), check=False)
    assert proc.returncode == 2 and "grid.generators[1].name" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "generators").exists()
    # grid.json is trusted no further than its names: an edited one with such a name is refused too.
    run = tmp_path / "run2"
    hpcsynth("plan", str(fake_grid(tmp_path)), "--run", str(run))
    grid = orjson.loads((run / "grid.json").read_bytes())
    grid["mixins"][0]["name"] = "default\n"
    (run / "grid.json").write_bytes(orjson.dumps(grid))
    proc = hpcsynth("status", str(run), check=False)
    assert proc.returncode == 2 and "grid.json is damaged" in proc.stderr and "bad name" in proc.stderr


def test_a_deleted_generator_or_shard_link_points_at_planning_the_grid_again(tmp_path: Path) -> None:
    """The single-run advice ("plan run/generators/b", "plan into a new directory") would cut the
    generator off from its grid or throw its work away: the fix is planning the grid again."""
    import shutil

    run = tmp_path / "run"
    config = fake_grid(tmp_path)
    hpcsynth("plan", str(config), "--run", str(run))
    hpcsynth("launch", str(run))
    shutil.rmtree(run / "generators" / "b")
    (run / "generators" / "a" / "shards" / "000001.jsonl.zst").unlink()
    for path in ("done/000001.json", "outputs/000001.jsonl.zst"):
        (run / "generators" / "a" / path).unlink()
    # A relaunch in a process of its own, as a user's is: its worker clock must not replace the first
    # launch's (RUN/tasks/HOST-PID.json), which estimate measures the rate from.
    proc = run_process("launch", str(run), env={"COLUMNS": "160"})
    assert proc.returncode == 1
    assert f"generator 'b' has no planned run at {run / 'generators' / 'b'}" in proc.stderr
    assert f"plan the grid again: `hpcsynth plan CONFIG --run {run}`" in proc.stderr
    assert f"`hpcsynth plan CONFIG --run {run}`), then `hpcsynth launch {run} --retry-failed`" in proc.stderr
    assert "new directory" not in proc.stderr and "--run " + str(run / "generators") not in proc.stderr
    estimate = hpcsynth("estimate", str(run), "--json").stdout
    assert "generator 'b' has no planned run" in estimate and "\"a\"" in estimate
    hpcsynth("plan", str(config), "--run", str(run))
    out = hpcsynth("launch", str(run), "--retry-failed").stdout
    assert "a (local): 2/2 shards done, 0 failed" in out and "b (local): 2/2 shards done, 0 failed" in out


@pytest.mark.parametrize("args, says", [
    (("--documents", "1e30", "--output-tokens", "300"), "--documents must be at most 9.01e+15"),
    (("--tokens", "1e9", "--gpus", "99999999999999999999999"), "--gpus must be at most"),
    (("--tokens", "1e9", "--tokens-per-second", "1e-320"), "the estimate overflows"),
    (("--tokens", "1e308", "--price", "1e308"), "the estimate overflows"),
    (("--documents", "1e15", "--output-tokens", "1e300"), "the estimate overflows"),
])
def test_numbers_that_overflow_are_one_line_not_inf_or_a_traceback(args: tuple[str, ...], says: str) -> None:
    """Each was finite and accepted, then printed "inf days", a JSON null, or (--json, a count past 64
    bits) a traceback."""
    proc = hpcsynth("estimate", *args, "--json", check=False)
    assert proc.returncode == 2 and says in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stdout == ""


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    from conftest import planned_fake_run
    from hpcsynth.execute.launch import launch_run

    run = planned_fake_run(tmp_path_factory.mktemp("attacks"), docs=20, shard_docs=5)
    assert launch_run(run, "local").done == 4
    return run


def test_plot_paths_that_are_not_a_png_file_in_a_directory_are_one_line(finished, tmp_path: Path) -> None:
    (tmp_path / "adir.png").mkdir()
    (tmp_path / "file").write_text("x")
    for name, says in (("adir.png", "is a directory; name a file in it"),
                       ("missing/sub/c.png", "does not exist; create that directory"),
                       ("file/c.png", "is not a directory")):
        for command in (("status", str(finished.root)), ("estimate", str(finished.root))):
            proc = hpcsynth(*command, "--plot", str(tmp_path / name), check=False)
            assert proc.returncode == 2 and says in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert not (tmp_path / "missing").exists(), "a mistyped directory is not created"
    assert list((tmp_path / "adir.png").iterdir()) == [], "no temporary left in the directory"
    # A symlink named as the chart is replaced by it; what it pointed at is untouched.
    (tmp_path / "target").write_text("keep")
    (tmp_path / "link.png").symlink_to(tmp_path / "target")
    hpcsynth("status", str(finished.root), "--plot", str(tmp_path / "link.png"))
    assert (tmp_path / "target").read_text() == "keep" and not (tmp_path / "link.png").is_symlink()
    assert (tmp_path / "link.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_unwritable_plot_is_one_line(finished, tmp_path: Path, monkeypatch) -> None:
    """Tests run as root, where a read-only directory is still writable: the refusal is injected."""
    from hpcsynth.errors import ConfigError
    from hpcsynth.status.collect import collect_status
    from hpcsynth.study import charts

    def refuse(path, data):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(charts, "atomic_write_bytes", refuse)
    with pytest.raises(ConfigError, match="cannot write it \\(Permission denied\\); choose another path"):
        charts.plot_status(collect_status(finished), tmp_path / "c.png")


def test_forged_times_far_ahead_or_behind_keep_the_timeline_to_the_runs_span(finished) -> None:
    from hpcsynth.status.collect import collect_status

    real = collect_status(finished).timeline
    markers = {sid: orjson.loads(finished.done_path(sid).read_bytes()) for sid in (1, 2)}
    task = next((finished.root / "tasks").glob("*.json"))
    clock = task.read_bytes()
    try:
        finished.done_path(1).write_bytes(orjson.dumps({**markers[1], "committed": 1e300}))  # year 10^292
        finished.done_path(2).write_bytes(orjson.dumps({**markers[2], "committed": 1.0}))  # 1970
        task.write_bytes(orjson.dumps({**orjson.loads(clock), "started": 4e9}))  # 2096
        timeline = collect_status(finished).timeline
    finally:
        for sid, marker in markers.items():
            finished.done_path(sid).write_bytes(orjson.dumps(marker))
        task.write_bytes(clock)
    assert sum(timeline["shards"]) == 4, "every done shard still counts"
    assert timeline["bin_s"] < 3600 and timeline["start"] >= real["start"] - 1, timeline


def test_a_fifo_planted_as_a_run_file_does_not_hang_status_or_estimate(tmp_path: Path) -> None:
    """open() of a FIFO blocks until a writer comes: status, --watch and estimate hung on one."""
    run = tmp_path / "run"
    hpcsynth("plan", str(fake_grid(tmp_path)), "--run", str(run))
    hpcsynth("launch", str(run))
    sub = run / "generators" / "a"
    os.mkfifo(sub / "done" / "000099.json")
    os.mkfifo(sub / "tasks" / "planted.json")
    (sub / "work" / "000007").mkdir(parents=True)
    os.mkfifo(sub / "work" / "000007" / "heartbeat.json")

    def cli(*args: str) -> Result:  # a hang fails in a minute, not the helper's five
        return run_cli(*args, timeout=60)

    status = orjson.loads(cli("status", str(run), "--json").stdout)
    assert status["generators"]["a"]["shards"]["done"] == 2
    assert "\"tokens_committed\"" in cli("estimate", str(run), "--json").stdout
    os.rename(run / "grid.json", run / "grid.kept")
    os.mkfifo(run / "grid.json")
    proc = cli("status", str(run))
    assert proc.returncode == 2 and "grid.json is damaged" in proc.stderr and "not a regular file" in proc.stderr


def fake_sacct(bin_dir: Path, script: str) -> dict[str, str]:
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "sacct").write_text(f"#!/bin/sh\n{script}\n")
    (bin_dir / "sacct").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_odd_sacct_output_is_not_a_traceback(finished, tmp_path: Path) -> None:
    """ElapsedRaw as "abc", "1.5" or "1e3" (a wrapper, a plugin's line on stdout) ended status and
    estimate in int()'s ValueError."""
    launches = finished.root / "launches"
    launches.mkdir(exist_ok=True)
    (launches / "attack.json").write_bytes(orjson.dumps({"arrays": [{"job_id": "123", "tasks": 2}],
                                                         "gpus_per_task": 1}))
    try:
        lines = ["123_0|RUNNING|abc|None", "123_1|COMPLETED|1.5|None", "123_1|COMPLETED|1e3|None", "garbage",
                 "|||", "123_[0-|PENDING|99999999999999999999|Resources", "123_0|RUNNING|60|None"]
        env = fake_sacct(tmp_path / "bin", "printf '" + "\\n".join(lines) + "\\n'")
        for command in ("status", "estimate"):
            proc = run_cli(command, str(finished.root), "--json", timeout=60, env={"PATH": env["PATH"]})
            assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        status = orjson.loads(run_cli("status", str(finished.root), "--json", timeout=60,
                                      env={"PATH": env["PATH"]}).stdout)
        assert status["gpu_hours"] == round(60 / 3600, 4), "only the one well-formed elapsed time counts"
    finally:
        (launches / "attack.json").unlink()


def test_a_hung_sacct_is_one_line(tmp_path: Path, monkeypatch) -> None:
    from hpcsynth.execute import slurm_jobs as slurm

    env = fake_sacct(tmp_path / "bin", "exec sleep 30")
    monkeypatch.setenv("PATH", env["PATH"])
    monkeypatch.setattr(slurm, "SLURM_TIMEOUT_S", 1)
    with pytest.raises(slurm.SlurmError, match="sacct did not answer within 1 s"):
        slurm.sacct_tasks(["123"])


def test_a_run_still_planning_says_so(tmp_path: Path) -> None:
    """While a plan holds its lock (a Slurm plan takes hours), "run plan first" invited a second plan."""
    run = tmp_path / "run"
    run.mkdir()
    (run / ".plan.lock").write_text("elsewhere:123\n")
    for command in (("estimate", str(run)), ("status", str(run)), ("launch", str(run))):
        proc = hpcsynth(*command, check=False)
        assert proc.returncode == 2 and "is being planned now" in proc.stderr, proc.stderr


def test_forged_huge_and_negative_numbers_in_run_files_do_not_reach_the_figures(tmp_path: Path) -> None:
    """A task clock or marker saying 1e308 made tokens inf, rates nan and the JSON null."""
    from conftest import planned_fake_run
    from hpcsynth.execute.launch import launch_run

    run = planned_fake_run(tmp_path, docs=10, shard_docs=5)
    assert launch_run(run, "local").done == 2
    for task in (run.root / "tasks").glob("*.json"):
        clock = orjson.loads(task.read_bytes())
        task.write_bytes(orjson.dumps({**clock, "tokens": 1e308, "idle_s": -1e308, "gpus": "x", "wall_s": 1e300}))
    marker = orjson.loads(run.done_path(0).read_bytes())
    run.done_path(0).write_bytes(orjson.dumps({**marker, "completion_tokens": 1e308,
                                               "by_prompt": {"faq": {"records": 1e308, "completion_tokens": -5}}}))
    proc = hpcsynth("estimate", str(run.root), "--tokens-per-second", "100", "--json")
    data = orjson.loads(proc.stdout)

    def nulls(value, where=""):  # orjson writes inf and nan as null
        if isinstance(value, dict):
            return [n for k, v in value.items() for n in nulls(v, f"{where}.{k}")]
        if isinstance(value, list):
            return [n for i, v in enumerate(value) for n in nulls(v, f"{where}[{i}]")]
        return [where] if value is None else []

    assert nulls({"rows": data["rows"], "totals": data["totals"], "account": data["account"]}) == []
    assert data["account"]["tokens_generated"] == 0 and data["account"]["tokens_committed"] > 0


def test_two_launches_of_one_grid_at_once_generate_each_record_once_per_generator(tmp_path: Path) -> None:
    import json

    run = tmp_path / "run"
    hpcsynth("plan", str(fake_grid(tmp_path, docs=16)), "--run", str(run))
    counted = tmp_path / "generated.txt"
    env = {**os.environ, "HPCSYNTH_FAKE_FAULTS": json.dumps({"delay_s": 0.01, "count_to": str(counted)})}
    # Both add workers: a second plain launch is refused while the first runs (tests/execute/test_local_control.py).
    command = [sys.executable, "-m", "hpcsynth", "launch", str(run), "--add-workers"]
    procs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    from test_grid_changes import ids

    expected = sorted(f"{i // 4:06d}-{i % 4:06d}/{p}" for i in range(16) for p in ("faq", "math"))
    for name in ("a", "b"):
        assert sorted(ids(run / "generators" / name)) == expected, f"{name}: each record committed once"
    generated = counted.read_text().split()
    assert sorted(set(generated)) == expected and all(generated.count(r) == 2 for r in expected), \
        "each record generated once per generator, by whichever launch claimed its shard"


def test_an_edited_grid_json_mixin_is_refused_before_any_dataset_naming_the_file(tmp_path: Path) -> None:
    run = tmp_path / "run"
    hpcsynth("plan", str(fake_grid(tmp_path)), "--run", str(run))
    grid = orjson.loads((run / "grid.json").read_bytes())
    for bad, says in (({"name": "../../evil"}, "'reduce.name' '../../evil' is not a plain name"),
                      ({"original_ratio": "abc"}, "'reduce.original_ratio' must be a number")):
        (run / "grid.json").write_bytes(orjson.dumps({**grid, "mixins": [{"name": "ok", "reduce": {}},
                                                                         {"name": "bad", "reduce": bad}]}))
        proc = hpcsynth("reduce", str(run), check=False)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert f"{run / 'grid.json'}: mix-in 'bad'" in proc.stderr and says in proc.stderr
        assert not (run / "datasets").exists(), "refused before the first dataset, not after it"


TOKENIZER = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tokenizers" / "gpt-neox-20b.tokenizer.json"


@pytest.mark.slurm
def test_cancel_during_a_grid_reduce_on_slurm_stops_its_arrays_and_merges(tmp_path: Path, cluster) -> None:
    """cancel read only the generators' launches/: a grid's reduce arrays and merges ran on."""
    if not TOKENIZER.is_file():
        pytest.skip(f"no tokenizer at {TOKENIZER}")
    run = tmp_path / "run"
    config = fake_grid(tmp_path)
    config.write_text(config.read_text().replace("grid:\n", (
        f"reduce: {{tokenizer: {TOKENIZER}, min_chars: 1}}\nvalidate: {{action: keep}}\n"
        "slurm: {partition: gpu, cpus_per_task: 1, mem_gb: 1, time_min: 10, sbatch: ['begin=now+3600']}\n"
        "grid:\n")))
    hpcsynth("plan", str(config), "--run", str(run))
    hpcsynth("launch", str(run))  # local: the reduce is what runs on Slurm here

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "hpcsynth", *args], env=cluster.env, capture_output=True,
                              text=True, timeout=300)

    proc = cli("reduce", str(run), "--executor", "slurm")
    assert proc.returncode == 0, proc.stderr
    recorded = orjson.loads((run / "datasets" / "slurm-jobs.json").read_bytes())["jobs"]
    ids = [j[k] for j in recorded for k in ("array", "merge") if j[k]]
    assert len(recorded) == 4 and len(ids) == 8, recorded  # 2 generators x 2 prompts, an array and a merge each
    said = cli("cancel", str(run)).stdout
    assert all(i in said for i in ids), said
    wait_cancelled(cluster, ids)


def test_a_generators_deleted_fingerprint_or_config_is_put_back_by_planning_the_grid(tmp_path: Path) -> None:
    """Its fix was `launch RUN/generators/a --config FILE --force` (which FILE? the grid's is no generator's),
    and planning the grid again said "unchanged" and left it broken."""
    run = tmp_path / "run"
    config = fake_grid(tmp_path)
    hpcsynth("plan", str(config), "--run", str(run))
    hpcsynth("launch", str(run))
    sub = run / "generators" / "a"
    markers = {p.name: p.read_bytes() for p in (sub / "done").glob("*.json")}
    for name in ("fingerprint", "config.yaml"):
        (sub / name).unlink()
        proc = hpcsynth("status", str(run), check=False)
        assert proc.returncode == 2 and f"{sub / name} is missing" in proc.stderr, proc.stderr
        assert f"plan the grid again: `hpcsynth plan CONFIG --run {run}`" in proc.stderr
        assert "generators/a/fingerprint" not in hpcsynth("plan", str(config), "--run", str(run)).stderr
        assert "launch: 2 generator(s)" in hpcsynth("launch", str(run)).stdout
        assert {p.name: p.read_bytes() for p in (sub / "done").glob("*.json")} == markers, "nothing redone"
