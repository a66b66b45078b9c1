"""The measured path of `estimate` and the account of a run, on finished fake-engine runs."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from conftest import planned_fake_run, run_cli, run_process
from hpcsynth.execute.launch import launch_run
from hpcsynth.files import read_jsonl_zst
from hpcsynth.status.account import account_run
from hpcsynth.study.estimate import make_estimate
from hpcsynth.study.measure import inputs_from_run, measured_lengths


@pytest.fixture
def finished(tmp_path: Path):
    run = planned_fake_run(tmp_path, docs=40, shard_docs=10)
    assert launch_run(run, "local").done == 4
    return run


def _tasks(run) -> list[dict]:
    return [orjson.loads(p.read_bytes()) for p in sorted((run.root / "tasks").glob("*.json"))]


def test_estimate_of_a_finished_run_uses_what_it_measured(finished) -> None:
    run = finished
    by_prompt: dict[str, list[int]] = {}
    for path in sorted((run.root / "outputs").glob("*.jsonl.zst")):
        for record in read_jsonl_zst(path):
            by_prompt.setdefault(record["prompt"], []).append(record["completion_tokens"])
    est = make_estimate(inputs_from_run(run, gpus=2, price=1.0))
    assert {r.prompt for r in est.rows} == set(by_prompt) and len(est.rows) == 4
    tasks = _tasks(run)
    rate = sum(t["tokens"] for t in tasks) / sum(t["generation_s"] for t in tasks)
    for row in est.rows:
        lengths = by_prompt[row.prompt]
        assert row.tokens_per_record == pytest.approx(sum(lengths) / len(lengths))
        assert row.documents == 40 and row.tokens == pytest.approx(sum(lengths))  # every document was done
        assert row.length_source.startswith("measured: 40 records of 4 done shard(s)")
        assert row.tokens_per_s == pytest.approx(rate) and row.rate_source.startswith("measured: this run's 1 worker")
    assert est.unit == "worker"  # the fake engine has no GPU: not GPU-hours
    assert est.totals["gpu_hours"] == pytest.approx(sum(sum(v) for v in by_prompt.values()) / rate / 3600)
    # The user's own figures win over the measured ones.
    est = make_estimate(inputs_from_run(run, tokens_per_s=10.0, output_tokens=100.0))
    assert all(r.tokens_per_s == 10 and r.tokens == 4000 and "given" in r.rate_source for r in est.rows)


def test_account_of_a_clean_run_has_no_redone_work(finished) -> None:
    run = finished
    account = account_run(run, price=2.0)
    committed = sum(orjson.loads(p.read_bytes())["completion_tokens"] for p in (run.root / "done").glob("*.json"))
    assert account["tokens_committed"] == account["tokens_generated"] == committed > 0
    assert account["wasted"]["redone"]["hours"] == 0 and account["wasted"]["failed_shards"]["hours"] == 0
    task = _tasks(run)[0]
    assert account["hours"]["hours"] == pytest.approx(task["wall_s"] / 3600, abs=1e-6)
    assert account["unit"] == "CPU worker" and "workers' clocks" in account["hours"]["how"]
    parts = account["useful"]["hours"] + account["wasted"]["startup"]["hours"] + account["wasted"]["idle"]["hours"]
    assert parts == pytest.approx(account["hours"]["hours"], abs=2e-6)  # start-up + generation + idle = wall
    assert account["cost"] == pytest.approx(account["hours"]["hours"] * 2.0, abs=0.01)
    assert account["cost_per_million_tokens"] == pytest.approx(account["cost"] / committed * 1e6, rel=1e-3, abs=1e-3)


def test_a_shard_generated_twice_shows_as_redone_work(finished) -> None:
    run = finished
    lost = orjson.loads(run.done_path(1).read_bytes())["completion_tokens"]
    run.output_path(1).unlink()  # its output is lost: launch sets the marker aside and generates it again
    # A process of its own: a second worker with a clock of its own (an in-process launch would share this
    # process's task name with the first run's worker, launched here by launch_run).
    proc = run_process("launch", str(run.root), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(_tasks(run)) == 2  # two workers' clocks: the first run and the relaunch
    account = account_run(run)
    assert account["tokens_generated"] - account["tokens_committed"] == lost
    rate = account["tokens_per_s_generating"]
    assert account["wasted"]["redone"]["hours"] == pytest.approx(lost / rate / 3600, rel=0.01)
    assert account["wasted"]["redone"]["how"].startswith(f"inferred: {lost:,} tokens")


def test_tokens_held_by_failed_shards_count_as_failed_not_redone(finished) -> None:
    run = finished
    held = orjson.loads(run.done_path(2).read_bytes())["completion_tokens"]
    run.done_path(2).unlink()
    run.failed_path(2).parent.mkdir(exist_ok=True)
    run.failed_path(2).write_bytes(orjson.dumps({"shard": 2, "reason": "injected"}))
    run.heartbeat_path(2).parent.mkdir(parents=True, exist_ok=True)
    run.heartbeat_path(2).write_bytes(orjson.dumps({"shard": 2, "records_done": 40, "completion_tokens": held,
                                                    "updated": 1.0}))
    account = account_run(run)
    assert account["wasted"]["redone"]["hours"] == 0
    assert account["wasted"]["failed_shards"]["hours"] == pytest.approx(
        held / account["tokens_per_s_generating"] / 3600, rel=0.01)


def test_lengths_of_a_run_in_progress_come_from_heartbeats(tmp_path: Path) -> None:
    run = planned_fake_run(tmp_path, docs=10, shard_docs=10)
    run.heartbeat_path(0).parent.mkdir(parents=True)
    run.heartbeat_path(0).write_bytes(orjson.dumps({"shard": 0, "records_done": 8, "completion_tokens": 800,
                                                    "updated": 1.0}))
    lengths = measured_lengths(run, ("faq", "math"))
    assert lengths["faq"][0] == 100 and "in progress" in lengths["faq"][1]
    # Nothing measured at all: the estimate falls back to the published figure, and says so.
    run.heartbeat_path(0).unlink()
    assert measured_lengths(run, ("faq",)) == {}


def _markers_without_by_prompt(run) -> None:
    """Done markers as written before `by_prompt` existed: lengths then come from the outputs. Written as
    hpcsynth writes a marker (a new file renamed over the old: another inode than its index line names)."""
    for path in (run.root / "done").glob("*.json"):
        marker = orjson.loads(path.read_bytes())
        marker.pop("by_prompt", None)
        path.with_suffix(".tmp").write_bytes(orjson.dumps(marker))
        path.with_suffix(".tmp").replace(path)


def test_lengths_come_from_the_markers_every_shard_without_reading_outputs(finished) -> None:
    run = finished
    for path in (run.root / "outputs").glob("*.jsonl.zst"):
        path.write_bytes(b"not read")
    lengths = measured_lengths(run, ("faq", "math", "table", "tutorial"))
    assert all(how == "measured: 40 records of 4 done shard(s) (done markers)" for _, how in lengths.values())


def test_damaged_files_are_skipped_not_fatal(finished) -> None:
    run = finished
    _markers_without_by_prompt(run)
    run.output_path(0).write_bytes(b"\x28\xb5\x2f\xfd garbage")  # a damaged output
    (run.root / "tasks" / "forged.json").write_bytes(b'{"tokens": "many", "generation_s": [1]}')
    (run.root / "tasks" / "torn.json").write_bytes(b'{"tokens": 5')
    est = make_estimate(inputs_from_run(run))
    assert all("of 3 done shard(s)" in r.length_source for r in est.rows)
    assert account_run(run)["tokens_generated"] > 0


def test_a_run_half_done_says_what_is_left_and_samples_spread_shards(tmp_path: Path, monkeypatch) -> None:
    import hpcsynth.study.measure as measure

    run = planned_fake_run(tmp_path, docs=40, shard_docs=10)
    assert launch_run(run, "local").done == 4
    for shard in (2, 3):  # half the shards not done (their outputs gone with their markers)
        run.done_path(shard).unlink()
        run.output_path(shard).unlink()
    monkeypatch.setattr(measure, "SAMPLE_SHARDS", 1)
    assert "of 2 done shard(s) (done markers)" in measure.measured_lengths(run, ("faq",))["faq"][1]
    _markers_without_by_prompt(run)
    assert "of 1 done shard(s)" in measure.measured_lengths(run, ("faq",))["faq"][1]
    proc = run_cli("estimate", str(run.root), "--json")
    assert proc.returncode == 0, proc.stderr
    data = orjson.loads(proc.stdout)
    left = data["account"]["remaining"]
    committed = data["account"]["tokens_committed"]
    assert left["share"] == pytest.approx(1 - committed / data["totals"]["tokens"])
    assert 0.3 < left["share"] < 0.7 and left["gpu_hours"] == pytest.approx(data["totals"]["gpu_hours"] * left["share"])
    table = run_cli("estimate", str(run.root)).stdout
    assert "to go, by the estimate:" in table


def test_another_generator_for_a_cpu_run_is_priced_per_gpu(finished) -> None:
    est = make_estimate(inputs_from_run(finished, generators=("smollm2-1.7b",)))
    assert est.unit == "GPU" and est.rows[0].tokens_per_s == 9200
    assert est.rows[0].length_source.startswith("measured")  # the run's lengths still apply
    assert make_estimate(inputs_from_run(finished)).unit == "worker"
