"""verify on a folder holding a partial reduce and then the full one names each, with its own figures.

Before, it called the folder "whole" with the partial's sequences and tokens while the full mix held
three times as many.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import orjson

from hpcsynth.generate.pull import pull_shards
from hpcsynth.plan import plan_corpus
from hpcsynth.rundir import RunDir

from conftest import fake_config, run_cli, write_corpus


def test_verify_names_the_partial_and_the_full_reduce_with_their_own_figures(tmp_path: Path,
                                                                             tiny_model: Path) -> None:
    corpus = write_corpus(tmp_path / "c.jsonl", 24)
    config = fake_config(corpus, reduce={"tokenizer": str(tiny_model), "min_chars": 1, "part_shards": 1,
                                         "bucket_docs": 5, "original_ratio": 0.5})
    config = dataclasses.replace(config, plan=dataclasses.replace(config.plan, shard_docs=4))
    run = RunDir(tmp_path / "run")
    plan_corpus(config, run)
    pull_shards(run.root, [0, 1])
    out = tmp_path / "out"
    assert run_cli("reduce", str(run.root), "--partial", "--out", str(out)).returncode == 0
    pull_shards(run.root)
    assert run_cli("reduce", str(run.root), "--out", str(out)).returncode == 0
    full = orjson.loads((out / "report.json").read_bytes())
    partial = orjson.loads((out / "report-partial.json").read_bytes())
    assert full["sequences"] > partial["sequences"], "the full mix is the bigger one"
    result = run_cli("verify", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any("the full reduce" in line and f"{full['sequences']:,} sequences" in line for line in lines), lines
    assert any("the partial reduce" in line and f"{partial['sequences']:,} sequences" in line for line in lines)


def test_a_full_disk_under_reduce_out_is_one_line_naming_it(tmp_path: Path, tiny_model: Path) -> None:
    """A real full filesystem (a 1 MB tmpfs) as --out: the writes that hit it name no file."""
    from conftest import run_process, small_tmpfs

    with small_tmpfs(tmp_path / "small") as small:
        corpus = write_corpus(tmp_path / "c.jsonl", 400)
        config = fake_config(corpus, reduce={"tokenizer": str(tiny_model), "min_chars": 1, "part_shards": 1})
        config = dataclasses.replace(config, plan=dataclasses.replace(config.plan, shard_docs=20))
        run = RunDir(tmp_path / "run")
        plan_corpus(config, run)
        pull_shards(run.root)
        # A process of its own, as a user runs it (and nothing of ours keeps the tmpfs busy).
        done = run_process("reduce", str(run.root), "--out", str(small / "out"))
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, done.stderr
        assert f"no space left on the filesystem of {small / 'out'}" in lines[0], lines[0]
        assert "run the same reduce again" in lines[0]
