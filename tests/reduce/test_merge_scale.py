"""The reduce at many parts: the merge reads a window of buckets from each part at once, one file open at a
time, and writes the bytes the per-bucket merge wrote; parts are looked up by dict; each part checks the
outputs it reads. Each test here failed on the code before (see its docstring)."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from hpcsynth.errors import RunError
from hpcsynth.generate.pull import pull_shards
from hpcsynth.reduce import merge, reduce_run
from hpcsynth.reduce.formats.datatrove import ds_dtype
from hpcsynth.reduce.merge import merge_parts
from hpcsynth.reduce.mix.choose import copies_of
from hpcsynth.reduce.spec import ReduceSpec, read_spec, write_spec
from hpcsynth.rundir import RunDir

from conftest import planned_fake_run
from test_mix import set_mix

OUTPUTS = ("mix.bin", "mix.idx", "mix.docs.jsonl")


@pytest.fixture(scope="module")
def parted_run(tmp_path_factory, tiny_model: Path) -> RunDir:
    """40 documents x 4 prompts in 10 shards, a part each, 7 buckets, originals mixed in."""
    run = planned_fake_run(tmp_path_factory.mktemp("scale"), docs=40, shard_docs=4,
                           reduce={"tokenizer": str(tiny_model), "min_chars": 1, "part_shards": 1,
                                   "bucket_docs": 6, "original_ratio": 0.5})
    pull_shards(run.root)
    return run


# The merge before windows, verbatim (hpcsynth/reduce/merge.py's _gather and _load_bucket): the reference.
def old_gather(spec, mix, bucket):
    most = max(1, max((c + (limit > 0) for c, limit in zip(mix.copies, mix.limits)), default=1))
    stride = max(1, spec.buckets // most)
    picked = []
    for offset in range(min(most, spec.buckets)):
        home = (bucket - offset * stride) % spec.buckets
        arrays, lines, keys, sources = old_load_bucket(spec, home)
        times = copies_of(keys, sources, mix.copies, mix.limits)
        for j in np.flatnonzero(times > offset):
            array = arrays[j] if home == bucket else arrays[j].copy()
            picked += [(copy, j, (array, lines[j], int(sources[j]), copy))
                       for copy in range(offset, int(times[j]), spec.buckets)]
    picked.sort(key=lambda entry: (entry[0], entry[1]))
    return [entry for _, _, entry in picked]


def old_load_bucket(spec, bucket):
    arrays, lines = [], []
    keys, sources = [np.zeros(0, np.uint64)], [np.zeros(0, np.uint8)]
    dtype = ds_dtype(spec.tokenizer["vocab_size"])
    for index in spec.part_indices():
        bounds = np.load(spec.part_path(index, ".bounds.npy"), mmap_mode="r")
        d0, d1 = int(bounds[0, bucket]), int(bounds[0, bucket + 1])
        if d0 == d1:
            continue
        t0, t1 = int(bounds[1, bucket]), int(bounds[1, bucket + 1])
        b0, b1 = int(bounds[2, bucket]), int(bounds[2, bucket + 1])
        lens = np.asarray(np.load(spec.part_path(index, ".lens.npy"), mmap_mode="r")[d0:d1])
        tokens = np.fromfile(spec.part_path(index, ".bin"), dtype=dtype, count=t1 - t0,
                             offset=t0 * np.dtype(dtype).itemsize)
        arrays += np.split(tokens, np.cumsum(lens)[:-1])
        keys.append(np.asarray(np.load(spec.part_path(index, ".keys.npy"), mmap_mode="r")[d0:d1]))
        sources.append(np.asarray(np.load(spec.part_path(index, ".src.npy"), mmap_mode="r")[d0:d1]))
        with open(spec.part_path(index, ".docs.jsonl"), "rb") as handle:
            handle.seek(b0)
            lines += handle.read(b1 - b0).splitlines(keepends=True)
    return arrays, lines, np.concatenate(keys), np.concatenate(sources)


def outputs(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in OUTPUTS}


@pytest.mark.parametrize("mix", ["plain", "repeated"])
def test_the_merge_writes_the_bytes_of_the_per_bucket_merge(parted_run: RunDir, tmp_path: Path, monkeypatch,
                                                            mix: str) -> None:
    """Windows of every size (one bucket each, a few, all) give the bytes the old merge gave on the same
    parts, with a source repeated past the bucket count too (copies drawn from other windows)."""
    config = parted_run.config()
    tiny = tmp_path / "tiny.jsonl"
    tiny.write_bytes(b"".join(orjson.dumps({"id": f"t{i}", "text": f"tiny {i}"}) + b"\n" for i in range(3)))
    if mix == "repeated":
        set_mix(parted_run, synthetic={"*": 1.0}, sources=[{"name": "tiny", "path": str(tiny), "weight": 0.3}],
                too_few="repeat", max_repeat=1e9)
    out = tmp_path / "out"
    try:
        reduce_run(parted_run, out)
    finally:
        parted_run.write_config(config, parted_run.fingerprint())
    spec = read_spec(out)
    assert len(spec.part_indices()) >= 10 and spec.buckets == 7
    monkeypatch.setattr(merge, "_buckets", lambda spec, mix, markers: ((b, old_gather(spec, mix, b))
                                                                       for b in range(spec.buckets)))
    merge_parts(str(out))
    reference = outputs(out)
    monkeypatch.undo()
    windows = set()
    for window_bytes in (1, int(merge._Layout(spec).sizes.sum() / 3), merge.WINDOW_BYTES):
        monkeypatch.setattr(merge, "WINDOW_BYTES", window_bytes)
        windows.add(len(merge._windows(merge._Layout(spec).sizes)))
        merge_parts(str(out))
        assert outputs(out) == reference, f"window of {window_bytes} bytes"
    assert len(windows) == 3 and min(windows) == 1 and max(windows) == 7  # all at once, some, one by one
    if mix == "repeated":
        assert reference["mix.docs.jsonl"].count(b'"copy":') > 7 * 3


def many_parts(out: Path, count: int) -> None:
    """`count` copies of the reduce's first part, each in the one bucket, a part of its own in the spec."""
    spec = read_spec(out)
    first = spec.part_indices()[0]
    for path in spec.parts_dir.glob(f"part-{first:06d}.*"):
        suffix = path.name[len(f"part-{first:06d}"):]
        for index in range(1, count):
            target = spec.part_path(index, suffix)
            if suffix == ".done.json":
                target.write_bytes(orjson.dumps({**orjson.loads(path.read_bytes()), "shards": [index]}))
            else:
                shutil.copyfile(path, target)
    marker = orjson.loads(spec.part_path(first, ".done.json").read_bytes())
    spec.part_path(first, ".done.json").write_bytes(orjson.dumps({**marker, "shards": [0]}))
    write_spec(dataclasses.replace(spec, parts=[[index, index] for index in range(count)], corpus_parts=[]))


def test_a_bucket_of_many_parts_merges_under_a_low_open_files_limit(tmp_path: Path, tiny_model: Path) -> None:
    """Every memory-mapped slice of a bucket kept a descriptor until the bucket was gathered: 2 per part,
    so a bucket drawn from 200 parts failed with EMFILE under a limit of 128 open files (as 1,000 parts
    did under `ulimit -n 1024`). Now one part file is open at a time."""
    run = planned_fake_run(tmp_path, docs=4, shard_docs=4, reduce={"tokenizer": str(tiny_model), "min_chars": 1,
                                                                    "text_export": False, "original_ratio": 0.0})
    pull_shards(run.root)
    out = tmp_path / "out"
    reduce_run(run, out)
    documents = orjson.loads((out / "parts" / "part-000000.done.json").read_bytes())["documents"]
    many_parts(out, 200)
    assert read_spec(out).buckets == 1
    code = ("import resource, sys\nfrom hpcsynth.reduce.merge import merge_parts\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))\nmerge_parts(sys.argv[1])\n")
    proc = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = orjson.loads((out / "report.json").read_bytes())
    assert report["parts"] == 200 and report["sequences"] == 200 * documents > 0


def test_a_part_is_found_by_dict_not_by_a_scan_of_every_part() -> None:
    """part_shards scanned the spec's list of parts on every call: 20,000 lookups over 20,000 parts were
    2 x 10^8 comparisons (~10 s here; 16.5 s per sweep of 42,375 parts)."""
    spec = ReduceSpec(run="run", out="out", name="mix", partial=False, shards_skipped=[],
                      parts=[[i, 2 * i, 2 * i + 1] for i in range(20_000)], buckets=1, format="megatron",
                      max_file_mb=0, text_export=False, tokenizer={}, backend_note="", run_info={}, key="k",
                      corpus_parts=[[20_000, 0, "corpus.jsonl", None]])
    started = time.perf_counter()
    for index in range(20_000):
        assert spec.part_shards(index) == [2 * index, 2 * index + 1]
    assert spec.part_shards(20_000) == [] and spec.corpus_part(20_000) == (0, "corpus.jsonl", None)
    assert time.perf_counter() - started < 1.0
    with pytest.raises(RunError, match="has no part 20001"):
        spec.part_shards(20_001)
    spec.part_shards(3).append(99)  # a caller's list is its own
    assert spec.part_shards(3) == [6, 7] and "_shards_by_part" not in dataclasses.asdict(spec)


def test_a_damaged_output_is_found_by_the_part_that_reads_it(tmp_path: Path, tiny_model: Path) -> None:
    """One process hashed every output before any part started (hours at 339,000 shards). Now each part
    checks the outputs it reads: the parts before a damaged one finish and are kept, and the damaged
    output is one line naming the file and the fix."""
    run = planned_fake_run(tmp_path, docs=8, shard_docs=2, reduce={"tokenizer": str(tiny_model), "min_chars": 1,
                                                                    "part_shards": 1})
    pull_shards(run.root)
    output = run.output_path(2)
    data = bytearray(output.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only its checksum tells
    output.write_bytes(bytes(data))
    out = tmp_path / "out"
    with pytest.raises(RunError) as caught:
        reduce_run(run, out)
    message = str(caught.value)
    assert "\n" not in message and str(output) in message and "sha256" in message and "hpcsynth launch" in message
    assert [(out / "parts" / f"part-{i:06d}.done.json").is_file() for i in range(4)] == [True, True, False, False]
