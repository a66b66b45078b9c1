"""The merge copies the parts' rejects into RUN/reduce/rejects.jsonl a block at a time, never all at once."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from hpcsynth.generate.pull import pull_shards
from hpcsynth.reduce import reduce_run
from hpcsynth.reduce.merge import merge_parts
from hpcsynth.reduce.spec import read_spec
from hpcsynth.rundir import RunDir

from conftest import planned_fake_run

PART_BYTES = 4 << 20  # each part's rejects grown to this: 12 parts, 48 MiB in all


@pytest.fixture(scope="module")
def rejecting_run(tmp_path_factory, tiny_model: Path) -> RunDir:
    """12 parts (2 documents a shard, one shard a part); min_chars refuses about a third of the fake
    engine's 50-330-character answers, so most parts have rejects of their own."""
    run = planned_fake_run(tmp_path_factory.mktemp("rejects"), docs=24, shard_docs=2,
                           reduce={"tokenizer": str(tiny_model), "min_chars": 150, "part_shards": 1,
                                   "bucket_docs": 5, "original_ratio": 0.5})
    pull_shards(run.root)
    return run


def parts_rejects(out: Path) -> bytes:
    """What the merge always wrote: every part's rejects file, in part order, joined."""
    spec = read_spec(out)
    return b"".join(spec.part_path(i, ".rejects.jsonl").read_bytes() for i in spec.part_indices())


def test_rejects_of_every_part_are_joined_in_part_order(rejecting_run: RunDir, tmp_path: Path) -> None:
    report = reduce_run(rejecting_run, tmp_path / "out").data
    parts = sorted((tmp_path / "out" / "parts").glob("part-*.rejects.jsonl"))
    assert len(parts) == 12 and sum(p.stat().st_size > 0 for p in parts) >= 3
    joined = (tmp_path / "out" / "rejects.jsonl").read_bytes()
    assert joined == parts_rejects(tmp_path / "out") and report["rejects"] == "rejects.jsonl"
    assert joined.count(b"\n") == report["rejected_records"] > 0


def test_the_merge_holds_a_block_of_the_rejects_not_all_of_them(rejecting_run: RunDir, tmp_path: Path) -> None:
    out = tmp_path / "out"
    reduce_run(rejecting_run, out)
    spec = read_spec(out)
    grown = 0
    for index in spec.part_indices():  # as a check refusing most records of a large run leaves them
        path = spec.part_path(index, ".rejects.jsonl")
        lines = path.read_bytes()
        if lines:
            path.write_bytes(lines * (PART_BYTES // len(lines) + 1))
            grown += path.stat().st_size
    assert grown > 30 << 20
    tracemalloc.start()
    try:
        merge_parts(str(out))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Joined in memory it was every part's rejects, then their join: twice `grown` (~100 MiB); streamed, ~5 MiB.
    assert peak < grown // 4, f"merge peak {peak / 2**20:.1f} MiB for {grown / 2**20:.1f} MiB of rejects"
    assert (out / "rejects.jsonl").read_bytes() == parts_rejects(out)
    assert not list(out.glob(".rejects*.tmp"))
