"""A grid's sub-runs and the manifest of layout 2: each generator's run has its own header (its fingerprint,
its prompts, "grid") over the parent's rows (the row file hard-linked), made again when missing, damaged
or of layout 1, and moved with the parent's rows when a forced re-plan changes them."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcsynth.errors import RunError
from hpcsynth.files import atomic_write_json, read_json
from hpcsynth.rundir import MANIFEST_ROWS, RunDir

from conftest import write_corpus
from test_grid import hpcsynth
from test_grid_changes import fake_grid


def same_inode(a: Path, b: Path) -> bool:
    return (a.stat().st_ino, a.stat().st_dev) == (b.stat().st_ino, b.stat().st_dev)


def test_sub_runs_get_their_own_header_over_the_parents_rows(tmp_path: Path) -> None:
    run, config = RunDir(tmp_path / "run"), fake_grid(tmp_path)
    hpcsynth("plan", str(config), "--run", str(run.root))
    parent = read_json(run.manifest_path)
    for name in ("a", "b"):
        sub = RunDir(run.root / "generators" / name)
        header = read_json(sub.manifest_path)
        assert header["grid"] == {"parent": "../..", "generator": name} and header["rows"] == parent["rows"]
        assert header["fingerprint"] == sub.fingerprint() and "shards" not in header
        assert list(sub.manifest_rows()) == list(run.manifest_rows()) and sub.shard_ids() == [0, 1]
        assert same_inode(sub.manifest_rows_path, run.manifest_rows_path)

    a = RunDir(run.root / "generators" / "a")
    a.manifest_rows_path.unlink()
    with pytest.raises(RunError, match=f"plan the grid again: `hpcsynth plan CONFIG --run {run.root} --force`"):
        a.manifest_row(0)
    out = hpcsynth("plan", str(config), "--run", str(run.root)).stdout
    assert "generators/a: re-planned" in out and "generators/b: unchanged" in out
    assert same_inode(a.manifest_rows_path, run.manifest_rows_path) and a.manifest_row(1)["id"] == 1

    header = read_json(a.manifest_path)  # a sub-run left at layout 1 is made again by planning the grid
    atomic_write_json(a.manifest_path, {**{k: v for k, v in header.items() if k != "rows"}, "layout_version": 1,
                                        "shards": list(run.manifest_rows())})
    a.manifest_rows_path.unlink()
    proc = hpcsynth("status", str(a.root), check=False)
    assert proc.returncode == 2 and "is a run directory of layout 1" in proc.stderr
    assert f"plan the grid again: `hpcsynth plan CONFIG --run {run.root} --force`" in proc.stderr
    assert "generators/a: re-planned" in hpcsynth("plan", str(config), "--run", str(run.root)).stdout
    assert read_json(a.manifest_path) == header


def test_a_forced_replan_of_the_corpus_moves_each_sub_run_to_the_new_rows(tmp_path: Path) -> None:
    run, config = RunDir(tmp_path / "run"), fake_grid(tmp_path)
    hpcsynth("plan", str(config), "--run", str(run.root))
    hpcsynth("launch", str(run.root))
    write_corpus(tmp_path / "corpus.jsonl", 9)  # a 9th document: shard 2 is new, shards 0 and 1 unchanged
    hpcsynth("plan", str(config), "--run", str(run.root), "--force")
    rows = list(run.manifest_rows())
    assert len(rows) == 3
    for name in ("a", "b"):
        sub = RunDir(run.root / "generators" / name)
        assert list(sub.manifest_rows()) == rows and same_inode(sub.root / MANIFEST_ROWS, run.manifest_rows_path)
        assert sub.done_path(0).is_file() and sub.done_path(1).is_file(), "unchanged shards stay done"
        assert not (sub.root / "replaced").exists()
