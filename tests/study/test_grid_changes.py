"""A grid over time: re-planning with a new generator or new settings, per-generator resume and failures,
and the one-line errors of a bad grid. Fake engine only (fast); test_grid.py runs the real model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import orjson
import pytest

from hpcsynth.files import read_jsonl_zst

from conftest import write_corpus
from test_grid import hpcsynth

FAKE_GRID = """\
prompts: [faq, math]
plan: {{inputs: [{corpus}], shard_docs: 4}}
model: {{engine: fake, path: fake-a}}
worker: {{flush_interval_s: 0.05, heartbeat_interval_s: 0.05}}
grid:
  generators:
{generators}
"""
TWO = "    - {name: a}\n    - {name: b, model: {path: fake-b}}\n"


def fake_grid(tmp: Path, generators: str = TWO, docs: int = 8) -> Path:
    corpus = tmp / "corpus.jsonl"
    if not corpus.exists():
        write_corpus(corpus, docs)
    config = tmp / "grid.yaml"
    config.write_text(FAKE_GRID.format(corpus=corpus, generators=generators))
    return config


def ids(sub: Path) -> list[str]:
    return [r["id"] for p in sorted((sub / "outputs").glob("*.zst")) for r in read_jsonl_zst(p)]


def test_replan_adds_a_generator_and_refuses_changed_settings_without_force(tmp_path: Path) -> None:
    run = tmp_path / "run"
    hpcsynth("plan", str(fake_grid(tmp_path)), "--run", str(run))
    hpcsynth("launch", str(run))
    done_b = (run / "generators" / "b" / "done" / "000000.json").read_bytes()

    out = hpcsynth("plan", str(fake_grid(tmp_path, TWO + "    - {name: c, model: {path: fake-c}}\n")),
                   "--run", str(run)).stdout
    assert "(unchanged)" in out and "generators/a: unchanged" in out and "generators/c: new" in out
    out = hpcsynth("launch", str(run)).stdout
    assert "c (local): 2/2 shards done" in out and "a (local): 2/2 shards done" in out
    assert (run / "generators" / "b" / "done" / "000000.json").read_bytes() == done_b, "b was not redone"

    changed = fake_grid(tmp_path, "    - {name: a}\n    - {name: b, model: {path: fake-b2}}\n")
    proc = hpcsynth("plan", str(changed), "--run", str(run), check=False)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
    assert "generator 'b'" in proc.stderr and "model.path changed" in proc.stderr and "--force" in proc.stderr
    assert orjson.loads((run / "grid.json").read_bytes())["generators"][2]["name"] == "c", "grid.json kept"
    out = hpcsynth("plan", str(changed), "--run", str(run), "--force").stdout
    assert "generators/b: re-planned" in out
    grid = orjson.loads((run / "grid.json").read_bytes())
    assert [g["name"] for g in grid["generators"]] == ["a", "b"], "c left the grid (its directory stays)"
    assert (run / "generators" / "c" / "manifest.json").is_file()
    hpcsynth("launch", str(run))
    records = [r for p in (run / "generators" / "b" / "outputs").glob("*.zst") for r in read_jsonl_zst(p)]
    assert {r["model"] for r in records} == {"fake-b2"}


def test_a_failing_generator_does_not_stop_the_others_and_retry_resumes_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    hpcsynth("plan", str(fake_grid(tmp_path)), "--run", str(run))
    # Document 5 (shard 1) makes the engine crash: a failed shard in one generator only? Both use the
    # fake engine, so both fail shard 1; a and b must each report it and keep shard 0.
    os.environ["HPCSYNTH_FAKE_FAULTS"] = json.dumps({"crash_on": "Document 5 "})
    try:
        proc = hpcsynth("launch", str(run), check=False)
    finally:
        del os.environ["HPCSYNTH_FAKE_FAULTS"]
    assert proc.returncode == 1 and "--retry-failed" in proc.stdout
    assert "a (local): 1/2 shards done, 1 failed" in proc.stdout
    assert "b (local): 1/2 shards done, 1 failed" in proc.stdout
    status = orjson.loads(hpcsynth("status", str(run), "--json").stdout)
    assert {c["state"] for c in status["cells"]} == {"1 failed"}
    assert all(g["failed_shards"][0]["shard"] == 1 for g in status["generators"].values())
    table = hpcsynth("status", str(run)).stdout
    assert "shard 000001 failed" in table and "--retry-failed" in table
    out = hpcsynth("launch", str(run), "--retry-failed").stdout
    assert "a (local): 2/2 shards done, 0 failed" in out and "b (local): 2/2 shards done, 0 failed" in out
    for name in ("a", "b"):
        assert sorted(ids(run / "generators" / name)) == sorted(
            f"{i // 4:06d}-{i % 4:06d}/{p}" for i in range(8) for p in ("faq", "math")), "each record once"


def test_damaged_output_of_one_generator_is_redone_alone(tmp_path: Path) -> None:
    run = tmp_path / "run"
    hpcsynth("plan", str(fake_grid(tmp_path)), "--run", str(run))
    hpcsynth("launch", str(run))
    a_done = (run / "generators" / "a" / "done" / "000001.json").read_bytes()
    output = run / "generators" / "b" / "outputs" / "000001.jsonl.zst"
    output.write_bytes(output.read_bytes()[:-7])
    out = hpcsynth("launch", str(run)).stdout
    assert "b (local): 2/2 shards done" in out
    assert (run / "generators" / "a" / "done" / "000001.json").read_bytes() == a_done
    assert list((run / "generators" / "b" / "set-aside").glob("000001.*.done.json"))
    assert len(ids(run / "generators" / "b")) == 16


def test_a_changed_shard_under_a_generator_fails_that_shard(tmp_path: Path) -> None:
    """A generator's shards are links to the parent's: whatever happens to the bytes, the worker checks
    them against the manifest, and a changed shard fails alone with the reason."""
    run = tmp_path / "run"
    hpcsynth("plan", str(fake_grid(tmp_path)), "--run", str(run))
    shard = run / "generators" / "a" / "shards" / "000000.jsonl.zst"
    shard.unlink()
    shard.write_bytes(b"not zstd")
    proc = hpcsynth("launch", str(run), check=False)
    assert "a (local): 1/2 shards done, 1 failed" in proc.stdout and "b (local): 2/2 shards done" in proc.stdout
    assert "differs from the manifest" in proc.stderr


BAD = [
    ("    - {name: a, model: {pathh: x}}\n", "line 7: unknown key 'model.pathh'"),
    ("    - {name: a}\n    - {name: a, model: {path: y}}\n", "'grid.generators' names 'a' twice"),
    ("    - {name: ../up}\n", "'grid.generators[0].name' must be a name"),
    ("    - {name: a, reduce: {seed: 1}}\n", "unknown key 'grid.generators[0].reduce'"),
    ("    - {name: a, sampling: {temperature: hot}}\n", "'sampling.temperature' must be a number"),
    ("    - {name: a, model: fast}\n", "'grid.generators[0].model' must be a mapping"),
    ("    - just-a-name\n", "'grid.generators' must be a list of mappings"),
]


@pytest.mark.parametrize("generators,message", BAD)
def test_bad_grid_is_one_line(tmp_path: Path, generators: str, message: str) -> None:
    proc = hpcsynth("plan", str(fake_grid(tmp_path, generators)), "--run", str(tmp_path / "run"), check=False)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("hpcsynth: error: ") and message in proc.stderr, proc.stderr
    assert not (tmp_path / "run").exists(), "nothing planned"


def test_bad_mixins_are_one_line(tmp_path: Path) -> None:
    base = fake_grid(tmp_path).read_text()
    cases = [("  mixins:\n    - {name: web, original_ratioo: 1}\n", "unknown key 'grid.mixins[0].original_ratioo'"),
             ("  mixins:\n    - {name: web, original_ratio: lots}\n", "'reduce.original_ratio' must be a number"),
             ("  mixins:\n    - {name: x}\n    - {name: x}\n", "'grid.mixins' names 'x' twice")]
    for text, message in cases:
        (tmp_path / "bad.yaml").write_text(base + text)
        proc = hpcsynth("plan", str(tmp_path / "bad.yaml"), "--run", str(tmp_path / "run"), check=False)
        assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1 and message in proc.stderr, proc.stderr
    no_generators = base.split("grid:")[0] + "grid:\n  mixins: [{name: web, original_ratio: 1}]\n"
    (tmp_path / "bad.yaml").write_text(no_generators)
    proc = hpcsynth("plan", str(tmp_path / "bad.yaml"), "--run", str(tmp_path / "run"), check=False)
    assert proc.returncode == 2 and "'grid.mixins' needs 'grid.generators'" in proc.stderr


def test_damaged_grid_file_and_grid_only_options_are_one_line(tmp_path: Path) -> None:
    run = tmp_path / "run"
    hpcsynth("plan", str(fake_grid(tmp_path)), "--run", str(run))
    proc = hpcsynth("launch", str(run), "--config", str(fake_grid(tmp_path)), check=False)
    assert proc.returncode == 2 and "is a grid run" in proc.stderr
    proc = hpcsynth("reduce", str(run), "--out", str(tmp_path / "x"), check=False)
    assert proc.returncode == 2 and "drop --out" in proc.stderr
    good = (run / "grid.json").read_bytes()
    for bad in ('{"prompts": [], "generators": [{"name": "../../etc"}], "mixins": [], "datasets": []}',
                '{"prompts": ["../x"], "generators": [], "mixins": [], "datasets": []}', '{"prompts": 3}', "{"):
        (run / "grid.json").write_text(bad)
        for command in ("launch", "status", "reduce"):
            proc = hpcsynth(command, str(run), check=False)
            assert proc.returncode == 2 and "grid.json is damaged" in proc.stderr, proc.stderr
            assert "plan the grid again" in proc.stderr and len(proc.stderr.splitlines()) == 1
    # A dataset listed with a hostile name is never used: datasets come from the checked names.
    data = orjson.loads(good)
    data["datasets"][0]["name"] = "../../outside"
    (run / "grid.json").write_bytes(orjson.dumps(data))
    from hpcsynth.rundir import RunDir
    from hpcsynth.study.grid import read_grid_file

    names = [d["name"] for d in read_grid_file(RunDir(run))["datasets"]]
    assert names == ["a-faq-default", "a-math-default", "b-faq-default", "b-math-default"]


def test_status_watch_of_a_finished_grid_ends_with_the_table(tmp_path: Path) -> None:
    run = tmp_path / "run"
    hpcsynth("plan", str(fake_grid(tmp_path)), "--run", str(run))
    hpcsynth("launch", str(run))
    out = hpcsynth("status", str(run), "--watch", "--interval", "0.1").stdout
    assert "every cell is done" in out and out.count("2/2") == 4


def test_forced_replan_of_the_corpus_keeps_each_generators_unchanged_shards(tmp_path: Path) -> None:
    run = tmp_path / "run"
    config = fake_grid(tmp_path)
    hpcsynth("plan", str(config), "--run", str(run))
    hpcsynth("launch", str(run))
    markers = {n: (run / "generators" / n / "done" / "000001.json").read_bytes() for n in ("a", "b")}
    with open(tmp_path / "corpus.jsonl", "ab") as handle:  # four more documents: a third shard
        handle.write(b"".join(orjson.dumps({"id": f"new-{i}", "text": f"New document {i} " * 20}) + b"\n"
                              for i in range(4)))
    proc = hpcsynth("plan", str(config), "--run", str(run), check=False)
    assert proc.returncode == 2 and "inputs changed" in proc.stderr
    out = hpcsynth("plan", str(config), "--run", str(run), "--force").stdout
    assert "generators/a: re-planned" in out and "generators/b: re-planned" in out
    out = hpcsynth("launch", str(run)).stdout
    assert "a (local): 3/3 shards done" in out and "b (local): 3/3 shards done" in out
    for name in ("a", "b"):
        sub = run / "generators" / name
        assert (sub / "done" / "000001.json").read_bytes() == markers[name], "an unchanged shard stays done"
        assert (sub / "shards" / "000002.jsonl.zst").stat().st_ino == (run / "shards" / "000002.jsonl.zst").stat().st_ino
        assert len(ids(sub)) == 24


def test_a_deleted_shard_link_is_made_again_by_plan(tmp_path: Path) -> None:
    run = tmp_path / "run"
    config = fake_grid(tmp_path)
    hpcsynth("plan", str(config), "--run", str(run))
    (run / "generators" / "b" / "shards" / "000001.jsonl.zst").unlink()
    out = hpcsynth("plan", str(config), "--run", str(run)).stdout
    assert "generators/a: unchanged" in out and "generators/b: re-planned" in out
    assert "b (local): 2/2 shards done" in hpcsynth("launch", str(run)).stdout


def test_a_generator_without_weights_is_refused_before_planning(tmp_path: Path) -> None:
    (tmp_path / "empty-model").mkdir()
    generators = f"    - {{name: a}}\n    - {{name: b, model: {{engine: transformers, path: {tmp_path / 'empty-model'}}}}}\n"
    proc = hpcsynth("plan", str(fake_grid(tmp_path, generators)), "--run", str(tmp_path / "run"), check=False)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
    assert "(generator 'b')" in proc.stderr and "holds no weights" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_validate_of_a_grid_run_points_at_its_generators(tmp_path: Path) -> None:
    run = tmp_path / "run"
    hpcsynth("plan", str(fake_grid(tmp_path)), "--run", str(run))
    proc = hpcsynth("validate", str(run), check=False)
    assert proc.returncode == 2 and "generators/NAME` (a, b)" in proc.stderr


def test_launch_with_two_workers_per_generator(tmp_path: Path) -> None:
    run = tmp_path / "run"
    hpcsynth("plan", str(fake_grid(tmp_path, docs=16)), "--run", str(run))
    os.environ["HPCSYNTH_FAKE_FAULTS"] = json.dumps({"delay_s": 0.02})
    try:
        out = hpcsynth("launch", str(run), "--workers", "2").stdout
    finally:
        del os.environ["HPCSYNTH_FAKE_FAULTS"]
    assert "a (local): 4/4 shards done" in out and "b (local): 4/4 shards done" in out
    for name in ("a", "b"):
        sub = run / "generators" / name
        assert sorted((sub / "logs").glob("worker-local-*.log")), "worker processes of this generator"
        assert len(ids(sub)) == len(set(ids(sub))) == 32


def test_a_grid_whose_plan_stopped_early_is_not_launched_as_a_plain_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    config = fake_grid(tmp_path)
    hpcsynth("plan", str(config), "--run", str(run))
    (run / "grid.json").unlink()  # as if plan died after the parent's plan, before the generators' runs
    for command in ("launch", "status", "reduce"):
        proc = hpcsynth(command, str(run), check=False)
        assert proc.returncode == 2 and "grid.json is missing" in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert not (run / "outputs").exists() and not (run / "work").exists()
    assert "generators/a: unchanged" in hpcsynth("plan", str(config), "--run", str(run)).stdout
    assert "a (local): 2/2 shards done" in hpcsynth("launch", str(run)).stdout
