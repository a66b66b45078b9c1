"""`hpcsynth tune` end to end: trials as processes, failures classed and survived, the winner written and priced.

The fake engine's step_s makes its throughput grow with the batch, as a GPU's does until its memory is full,
so the search has a right answer: with oom_above 8 the winner is batch 8; batch 2 dies of SIGSEGV (segv_at),
batch 16 runs out of memory and the larger ones are skipped. The transformers engine on the tiny model runs
the same path with a real model; tests/vllm_lane/test_tune_vllm.py runs it on vLLM.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import orjson
import pytest
import yaml

from conftest import run_cli, write_corpus
from hpcsynth.config import load_config

FAULTS = {"step_s": 0.02, "oom_above": 8, "segv_at": 2}


def fake_tune_config(tmp_path: Path, **extra) -> Path:
    data = {"model": {"engine": "fake", "path": "fake-model"}, "prompts": ["faq", "math"],
            "sampling": {"max_tokens": 64}, **extra}
    path = tmp_path / "tune-config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def tune(tmp_path: Path, *args: str, faults: dict | None = None, docs: int = 40, timeout: float = 240):
    corpus = write_corpus(tmp_path / "sample.jsonl", docs)
    config = tmp_path / "tune-config.yaml"
    if not config.exists():
        fake_tune_config(tmp_path)
    env = {"HPCSYNTH_FAKE_FAULTS": json.dumps(FAULTS if faults is None else faults)}
    return run_cli("tune", config, "--input", corpus, "--out", tmp_path / "tune", *args, env=env, timeout=timeout)


def trials_of(tmp_path: Path) -> list[dict]:
    return orjson.loads((tmp_path / "tune" / "tune.json").read_bytes())["trials"]


def test_tune_survives_a_crash_and_an_oom_and_picks_the_fastest_batch(tmp_path: Path) -> None:
    result = tune(tmp_path, "--budget", "5", "--documents", "1000", "--json")
    assert result.returncode == 0, result.stderr
    data = orjson.loads(result.stdout)
    states = {t["settings"].get("worker.batch_size", 8): t["state"] for t in data["trials"]}
    # 8 is the config's own batch: the baseline measured it, the sweep does not run it twice.
    assert states == {8: "ok", 1: "ok", 2: "crash", 4: "ok", 16: "oom", 32: "skipped", 64: "skipped"}, states
    errors = {t["settings"].get("worker.batch_size"): t.get("error", "") for t in data["trials"]}
    assert "SIGSEGV" in errors[2] and "out of memory" in errors[16]
    rates = {t["settings"].get("worker.batch_size", 8): t["tokens_per_s"] for t in data["trials"]
             if t["state"] == "ok"}
    assert rates[1] < rates[4] < rates[8], rates  # steady state grows with the batch, as step_s makes it
    winner = data["winner"]
    assert winner["trial"] == 0 and winner["tokens_per_s"] == rates[8]
    assert set(winner["output_tokens_per_record"]) == {"faq", "math"}
    # The estimate is priced at the winner's rate and lengths.
    rows = data["estimate"]["rows"]
    assert {r["prompt"] for r in rows} == {"faq", "math"} and all(r["documents"] == 1000 for r in rows)
    assert all(r["tokens_per_s"] == pytest.approx(winner["tokens_per_s"]) for r in rows)
    assert all("hpcsynth tune" in r["rate_source"] and "hpcsynth tune" in r["length_source"] for r in rows)
    assert data["estimate"]["unit"] == "worker"  # the fake engine's rate is no GPU's
    # The winner as the whole config loads as a config, and as a fragment names only what it changed.
    tuned = load_config(tmp_path / "tune" / "tuned.yaml")
    assert tuned.worker.batch_size == 8 and tuned.model.engine == "fake"


def test_the_winner_fragment_holds_the_winning_setting_and_estimate_takes_it(tmp_path: Path) -> None:
    fake_tune_config(tmp_path, worker={"batch_size": 1})  # the config's own batch is the slowest
    result = tune(tmp_path, "--budget", "5", "--try", "worker.batch_size=2,4,8,16")
    assert result.returncode == 0, result.stderr
    fragment = yaml.safe_load((tmp_path / "tune" / "winner.yaml").read_text())
    assert fragment == {"worker": {"batch_size": 8}}
    assert "winner: trial" in result.stdout and "tok/s" in result.stdout
    tune_data = orjson.loads((tmp_path / "tune" / "tune.json").read_bytes())
    estimate = run_cli("estimate", "--documents", "5000", "--prompts", "faq,math", "--tuned", tmp_path / "tune",
                       "--json")
    assert estimate.returncode == 0, estimate.stderr
    rows = orjson.loads(estimate.stdout)["rows"]
    assert all(r["tokens_per_s"] == pytest.approx(tune_data["winner"]["tokens_per_s"]) for r in rows)
    # A rate the user gives still wins over the tune's.
    given = run_cli("estimate", "--documents", "5000", "--tuned", tmp_path / "tune", "--tokens-per-second", "7",
                    "--json")
    assert {r["tokens_per_s"] for r in orjson.loads(given.stdout)["rows"]} == {7.0}


def test_a_hanging_trial_is_a_timeout_and_leaves_no_process(tmp_path: Path) -> None:
    result = tune(tmp_path, "--try", "worker.batch_size=4,2", "--trial-timeout", "4", "--budget", "5",
                  faults={"hang_at": 2, "step_s": 0.01})
    assert result.returncode == 0, result.stderr
    trials = trials_of(tmp_path)
    hung = [t for t in trials if t["settings"].get("worker.batch_size") == 2]
    assert hung[0]["state"] == "timeout" and hung[0]["wall_s"] < 30
    assert "timeout" in result.stdout
    # The trial's process group was stopped: no process of it is left (its pid is in no /proc entry).
    log = (tmp_path / "tune" / "trials" / f"{hung[0]['trial']}.log")
    assert log.is_file()
    time.sleep(0.5)
    leftover = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _runs_trial(p, tmp_path / "tune")]
    assert leftover == []


def _runs_trial(proc: Path, tune_dir: Path) -> bool:
    try:
        return str(tune_dir.resolve()).encode() in (proc / "cmdline").read_bytes()
    except OSError:
        return False


def test_a_small_budget_stops_the_search_and_says_what_was_not_tried(tmp_path: Path) -> None:
    result = tune(tmp_path, "--budget", "0.02", "--json", faults={"step_s": 0.3})  # 1.2 s for 64 requests
    assert result.returncode in (0, 1), result.stderr
    data = orjson.loads(result.stdout)
    assert len(data["trials"]) < 7
    assert any("budget ran out" in note for note in data["notes"]), data["notes"]


def test_every_trial_failing_exits_1_with_the_reason(tmp_path: Path) -> None:
    result = tune(tmp_path, "--try", "worker.batch_size=2", faults={"fail_start": "no GPU here"})
    assert result.returncode == 1
    assert "no trial finished" in result.stderr
    assert "no GPU here" in result.stdout
    assert not (tmp_path / "tune" / "winner.yaml").exists()
    estimate = run_cli("estimate", "--documents", "10", "--tuned", tmp_path / "tune")
    assert estimate.returncode == 2 and "no winning trial" in estimate.stderr
    assert len(estimate.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args, expected", [
    (["--try", "worker.nope=1,2"], "'worker.nope' is not a config key"),
    (["--try", "worker.batch_size"], "write KEY=VALUE"),
    (["--try", "worker.batch_size=0,4"], "worker.batch_size"),
    (["--budget", "0"], "--budget must be above 0"),
    (["--budget", "nan"], "--budget must be above 0"),
])
def test_bad_options_are_one_line_before_any_trial(tmp_path: Path, args: list[str], expected: str) -> None:
    result = tune(tmp_path, *args)
    assert result.returncode == 2, result.stdout
    assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "tune" / "trials").exists()


def test_out_holding_other_files_is_refused_and_left_alone(tmp_path: Path) -> None:
    (tmp_path / "tune").mkdir()
    (tmp_path / "tune" / "precious.txt").write_text("mine")
    result = tune(tmp_path, "--try", "worker.batch_size=2")
    assert result.returncode == 2 and "holds other files (precious.txt)" in result.stderr
    assert (tmp_path / "tune" / "precious.txt").read_text() == "mine"
    os.symlink(tmp_path / "tune", tmp_path / "link")
    linked = run_cli("tune", tmp_path / "tune-config.yaml", "--input", tmp_path / "sample.jsonl", "--out",
                     tmp_path / "link")
    assert linked.returncode == 2 and "symbolic link" in linked.stderr


def test_a_tune_run_again_starts_over_in_its_own_directory(tmp_path: Path) -> None:
    first = tune(tmp_path, "--try", "worker.batch_size=4")
    assert first.returncode == 0, first.stderr
    again = tune(tmp_path, "--try", "worker.batch_size=2,4", faults={"step_s": 0.01})
    assert again.returncode == 0, again.stderr
    assert [t["settings"] for t in trials_of(tmp_path)] == [{}, {"worker.batch_size": 2}, {"worker.batch_size": 4}]


def test_tune_on_the_transformers_engine_with_the_tiny_model(tmp_path: Path, tiny_model: Path) -> None:
    fake_tune_config(tmp_path, model={"engine": "transformers", "path": str(tiny_model), "dtype": "float32"},
                     sampling={"max_tokens": 8}, worker={"batch_size": 2, "threads": 1, "device": "cpu"})
    result = tune(tmp_path, "--try", "worker.batch_size=1,4", "--requests", "12", "--json", faults={})
    assert result.returncode == 0, result.stderr
    data = orjson.loads(result.stdout)
    assert [t["state"] for t in data["trials"]] == ["ok", "ok", "ok"], data["trials"]
    assert all(t["requests"] == 12 and t["completion_tokens"] > 0 and t["load_s"] > 0 for t in data["trials"])
    assert data["device"] == "cpu" and data["estimate"]["unit"] == "worker"
    assert data["winner"]["tokens_per_s"] == max(t["tokens_per_s"] for t in data["trials"])


def test_sigterm_stops_the_tune_and_its_trial(tmp_path: Path) -> None:
    import subprocess
    import sys

    corpus = write_corpus(tmp_path / "sample.jsonl", 20)
    config = fake_tune_config(tmp_path)
    env = {**os.environ, "HPCSYNTH_FAKE_FAULTS": json.dumps({"hang_at": 2})}
    proc = subprocess.Popen([sys.executable, "-m", "hpcsynth", "tune", str(config), "--input", str(corpus), "--out",
                             str(tmp_path / "tune"), "--try", "worker.batch_size=2"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (tmp_path / "tune" / "trials" / "1.log").exists():
        time.sleep(0.1)
    time.sleep(1.0)
    # A second tune into the same directory is refused while this one runs: it would delete its trials.
    second = run_cli("tune", config, "--input", corpus, "--out", tmp_path / "tune", "--try", "worker.batch_size=4")
    assert second.returncode == 2 and "another tune is writing" in second.stderr, second.stderr
    assert (tmp_path / "tune" / "trials" / "1.log").exists()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    time.sleep(0.5)
    leftover = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _runs_trial(p, tmp_path / "tune")]
    assert leftover == [], err


def test_the_config_changed_during_a_tune_fails_the_trials_after_it(tmp_path: Path) -> None:
    import subprocess
    import sys

    corpus = write_corpus(tmp_path / "sample.jsonl", 20)
    config = fake_tune_config(tmp_path)
    env = {**os.environ, "HPCSYNTH_FAKE_FAULTS": json.dumps({"step_s": 0.05})}
    proc = subprocess.Popen([sys.executable, "-m", "hpcsynth", "tune", str(config), "--input", str(corpus), "--out",
                             str(tmp_path / "tune"), "--try", "worker.batch_size=1,2,4", "--json"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (tmp_path / "tune" / "trials" / "1.log").exists():
        time.sleep(0.05)
    copied = tmp_path / "tune" / "config.yaml"
    copied.write_text(copied.read_text().replace("batch_size: 8", "batch_size: 7"))
    out, err = proc.communicate(timeout=120)
    data = orjson.loads(out)
    states = [t["state"] for t in data["trials"]]
    assert states[0] == "ok" and states[-1] == "invalid", states
    assert "changed during the tune" in data["trials"][-1]["error"]


@pytest.mark.parametrize("forged", [
    {"winner": {"tokens_per_s": float("1e400")}},
    {"winner": {"tokens_per_s": -5}},
    {"winner": {"tokens_per_s": True}},
    {"winner": {"tokens_per_s": "9200"}},
    {"winner": None},
    [],
])
def test_a_forged_tune_json_is_one_line_for_estimate(tmp_path: Path, forged) -> None:
    (tmp_path / "tune.json").write_text(json.dumps(forged))  # 1e400 as Infinity: not JSON orjson reads
    result = run_cli("estimate", "--documents", "100", "--tuned", tmp_path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_odd_fields_of_a_tune_json_never_reach_the_estimate_as_figures(tmp_path: Path) -> None:
    forged = {"device": "\x1b[2Jgpu", "model": "m" * 5000,
              "winner": {"tokens_per_s": 100.0, "trial": "\x1b[31m",
                         "output_tokens_per_record": {"faq": -1, "math": 1e30, "table": 50}}}
    (tmp_path / "tune.json").write_text(json.dumps(forged))
    result = run_cli("estimate", "--documents", "100", "--prompts", "faq,math,table", "--tuned", tmp_path, "--json")
    assert result.returncode == 0, result.stderr
    rows = {r["prompt"]: r for r in orjson.loads(result.stdout)["rows"]}
    assert rows["table"]["tokens_per_record"] == 50 and "hpcsynth tune" in rows["table"]["length_source"]
    assert "hpcsynth tune" not in rows["faq"]["length_source"] and "hpcsynth tune" not in rows["math"]["length_source"]
    assert "\x1b" not in result.stdout and "unknown device" in rows["faq"]["rate_source"]


def test_a_slurm_tune_takes_its_knobs_from_the_gpu_node_it_asks_for(tmp_path: Path) -> None:
    """prepare() runs on the login node, which has no GPU: the knobs come from the profile's GPUs per task."""
    from hpcsynth.tune import TuneOptions, prepare
    from hpcsynth.tune.space import default_knobs

    config = fake_tune_config(tmp_path, model={"engine": "vllm", "path": str(tmp_path)})
    (tmp_path / "weights.safetensors").write_bytes(b"x")
    corpus = write_corpus(tmp_path / "sample.jsonl", 10)
    out = prepare(TuneOptions(config, [str(corpus)], tmp_path / "tune", gpus=4))
    knobs = [k["name"] for k in orjson.loads((out / "options.json").read_bytes())["knobs"]]
    assert knobs == ["vllm.max_num_seqs", "vllm.max_num_batched_tokens", "vllm.gpu_memory_utilization",
                     "speculation", "vllm.engine_args.enable_chunked_prefill", "vllm.tensor_parallel_size"]
    assert [k.name for k in default_knobs(load_config(config), 0)] == knobs[:2]  # a CPU: what vLLM's CPU build takes
    tp = next(k for k in orjson.loads((out / "options.json").read_bytes())["knobs"]
              if k["name"] == "vllm.tensor_parallel_size")
    assert [c["vllm.tensor_parallel_size"] for c in tp["candidates"]] == [1, 2, 4]
    result = run_cli("tune", config, "--input", corpus, "--out", tmp_path / "t2", "--profile", "site-dev")
    assert result.returncode == 2 and "--profile is for --executor slurm" in result.stderr


def test_the_same_tune_again_goes_on_from_the_trials_it_finished(tmp_path: Path) -> None:
    """Stopped (Ctrl-C, SIGTERM, a preempted job) and run again with the same config, sample and knobs, a tune
    keeps the trials it finished and runs only the rest; another sample starts over."""
    import subprocess
    import sys

    corpus = write_corpus(tmp_path / "sample.jsonl", 20)
    config = fake_tune_config(tmp_path)
    args = [sys.executable, "-m", "hpcsynth", "tune", str(config), "--input", str(corpus), "--out",
            str(tmp_path / "tune"), "--try", "worker.batch_size=1,2,4"]
    env = {**os.environ, "HPCSYNTH_FAKE_FAULTS": json.dumps({"hang_at": 2, "step_s": 0.01})}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (tmp_path / "tune" / "trials" / "2.log").exists():
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    first = trials_of(tmp_path)
    assert [t["settings"] for t in first] == [{}, {"worker.batch_size": 1}]  # the hung trial 2 was not finished
    again = run_cli(*args[3:], "--json", env={"HPCSYNTH_FAKE_FAULTS": json.dumps({"step_s": 0.01})})
    assert again.returncode == 0, again.stderr
    data = orjson.loads(again.stdout)
    assert data["trials"][:2] == first  # kept as they were, not measured again
    assert [t["settings"] for t in data["trials"]] == [{}, {"worker.batch_size": 1}, {"worker.batch_size": 2},
                                                       {"worker.batch_size": 4}]
    assert [t["trial"] for t in data["trials"]] == [0, 1, 2, 3]  # 2 again: the stopped one left no result
    assert all(t["state"] == "ok" for t in data["trials"])
    write_corpus(tmp_path / "sample.jsonl", 21)  # another sample: its requests differ, the trials start over
    fresh = run_cli(*args[3:], "--json", env={"HPCSYNTH_FAKE_FAULTS": json.dumps({"step_s": 0.01})})
    trials = orjson.loads(fresh.stdout)["trials"]
    assert [t["trial"] for t in trials] == [0, 1, 2, 3] and trials[0]["wall_s"] != data["trials"][0]["wall_s"]


@pytest.mark.parametrize("damage", ["truncated", "forged-trial", "symlink"])
def test_a_damaged_tune_json_is_measured_again_not_trusted(tmp_path: Path, damage: str) -> None:
    args = ("--try", "worker.batch_size=2", "--json")
    first = tune(tmp_path, *args, faults={"step_s": 0.01})
    assert first.returncode == 0, first.stderr
    path = tmp_path / "tune" / "tune.json"
    data = orjson.loads(path.read_bytes())
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:40])
    elif damage == "forged-trial":  # the baseline's figures gone: it is run again, the other kept
        data["trials"][0].pop("tokens_per_s")
        data["trials"][0]["telemetry"] = "\x1b[2J"
        path.write_bytes(orjson.dumps(data))
    else:
        (tmp_path / "secret.txt").write_text("TOPSECRET-tune\n")
        path.unlink()
        path.symlink_to(tmp_path / "secret.txt")
    again = tune(tmp_path, *args, faults={"step_s": 0.01})
    assert again.returncode == 0, again.stderr
    assert "TOPSECRET" not in again.stdout + again.stderr and "Traceback" not in again.stderr
    trials = orjson.loads(again.stdout)["trials"]
    assert [t["state"] for t in trials] == ["ok", "ok"]
    before = {json.dumps(t["settings"]): t["wall_s"] for t in data["trials"]}
    remeasured = {json.dumps(t["settings"]): t["wall_s"] != before[json.dumps(t["settings"])] for t in trials}
    assert remeasured == ({"{}": True, '{"worker.batch_size": 2}': False} if damage == "forged-trial" else
                          {"{}": True, '{"worker.batch_size": 2}': True})
    assert not path.is_symlink()
