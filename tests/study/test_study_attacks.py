"""Attacks on the study features (grid, estimate, charts): hostile names and paths, damaged and forged
run files, odd numbers. Each test holds a surprise found by attacking them; fake engine only (fast)."""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

import orjson
import pytest
import yaml

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
    proc = hpcsynth("launch", str(run), check=False)
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
