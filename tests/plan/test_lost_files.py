"""A file that cannot be read whole is a lost file: it fails the plan (nothing committed), or, opted in with
plan --skip-bad-files / plan.skip_bad_files, is listed and its bytes held to plan.max_reject_rate.
Bad lines inside a readable JSONL file stay per-record rejects."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pytest
import zstandard

from hpcsynth.files import read_json

from conftest import run_cli, write_corpus

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

LINES = b"".join(orjson.dumps({"id": f"c{i}", "text": f"Cut document {i}. " + "words " * 20}) + b"\n"
                 for i in range(300))


def no_text_column(path: Path) -> None:
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(288)], "content": ["text"] * 288}), path)


def cut_gz(path: Path) -> None:
    data = gzip.compress(LINES, mtime=0)
    path.write_bytes(data[:len(data) // 2])


def cut_zst(path: Path) -> None:
    data = zstandard.ZstdCompressor(write_checksum=True).compress(LINES)
    path.write_bytes(data[:len(data) // 2])


def not_parquet(path: Path) -> None:
    path.write_bytes(b"PAR1 this is not parquet at all PAR1")


BAD = {  # name: (how to write it, what the error says of it)
    "a.parquet": (no_text_column, "no column 'text' (plan.text_key); the file has: id, content"),
    "a.jsonl.gz": (cut_gz, "gzip stream is truncated or corrupt (cut at byte"),
    "a.jsonl.zst": (cut_zst, "zstd stream is truncated or corrupt (the file is cut short or damaged inside the "
                             "zstd frame at byte"),
    "b.parquet": (not_parquet, "not a readable Parquet file"),
}


def corpus(tmp_path: Path, bad: str) -> Path:
    """A bad file beside a good one of 40 documents, both in tmp/in."""
    write_corpus(tmp_path / "in" / "z-good.jsonl", 40)
    BAD[bad][0](tmp_path / "in" / bad)
    return tmp_path / "in"


def config(tmp_path: Path, **plan: object) -> Path:
    path = tmp_path / "c.yaml"
    settings = {"group_mb": 0, "shard_docs": 7, **plan}  # group_mb 0: a group per file, so --jobs 2 has a pool
    path.write_text(f"model: {{engine: fake}}\nplan: {orjson.dumps(settings).decode()}\n")
    return path


@pytest.mark.parametrize("bad", sorted(BAD))
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_file_that_cannot_be_read_whole_fails_the_plan(tmp_path: Path, bad: str, jobs: str) -> None:
    inputs = corpus(tmp_path, bad)
    proc = run_cli("plan", config(tmp_path), "--run", tmp_path / "run", "--input", inputs, "--jobs", jobs)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stdout + proc.stderr
    assert f"input file {inputs / bad}: {BAD[bad][1]}" in proc.stderr
    assert "repair or remove it, or plan with --skip-bad-files" in proc.stderr
    assert not (tmp_path / "run").exists()  # nothing of the plan was committed


def test_a_failed_replan_leaves_the_earlier_plan_as_it_was(tmp_path: Path) -> None:
    write_corpus(tmp_path / "in" / "z-good.jsonl", 40)
    args = ["plan", config(tmp_path), "--run", tmp_path / "run", "--input", tmp_path / "in", "--jobs", "2"]
    assert run_cli(*args).returncode == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file() and "summary" not in p.name}
    cut_gz(tmp_path / "in" / "a.jsonl.gz")
    proc = run_cli(*args, "--force")
    assert proc.returncode == 2 and "a.jsonl.gz: gzip stream is truncated" in proc.stderr
    after = {p.name: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file() and "summary" not in p.name}
    assert after == before


@pytest.mark.parametrize("how", ["flag", "config"])
def test_skipped_files_are_listed_and_the_same_for_any_jobs(tmp_path: Path, how: str) -> None:
    inputs = corpus(tmp_path, "a.jsonl.gz")
    no_text_column(inputs / "a.parquet")
    extra = ["--skip-bad-files"] if how == "flag" else []
    plan = {"max_reject_rate": 0.9} | ({} if how == "flag" else {"skip_bad_files": True})
    runs = []
    for jobs in ("1", "2"):
        run = tmp_path / f"run{jobs}"
        proc = run_cli("plan", config(tmp_path, **plan), "--run", run, "--input", inputs, "--jobs", jobs, *extra)
        assert proc.returncode == 0, proc.stderr
        runs.append(run)
        assert "lost files" in proc.stdout and "2 lost file(s)" in proc.stdout
        assert f"warning: lost file {inputs / 'a.jsonl.gz'} (" in proc.stderr
        assert f"warning: lost file {inputs / 'a.parquet'} (" in proc.stderr
    sizes = {name: (inputs / name).stat().st_size for name in ("a.jsonl.gz", "a.parquet")}
    summary = read_json(runs[0] / "plan" / "summary.json")
    lost = {Path(e["source"]).name: e for e in summary["lost_files"]}
    assert {name: e["bytes"] for name, e in lost.items()} == sizes
    assert summary["lost_bytes"] == sum(sizes.values())
    assert summary["input_bytes"] == sum(p.stat().st_size for p in inputs.iterdir())
    # The readable prefix of the cut file is kept (the file still counts as lost, all its bytes); the
    # Parquet file had none. A lost file is no record: read and rejected count records only.
    assert lost["a.parquet"]["documents"] == 0 and 0 < lost["a.jsonl.gz"]["documents"] < 300
    assert summary["documents"] == 40 + lost["a.jsonl.gz"]["documents"]
    assert summary["records_read"] == summary["documents"] and summary["rejected"] == 0
    rejects = [orjson.loads(line) for line in (runs[0] / "plan" / "rejects.jsonl").read_bytes().splitlines()]
    assert [(Path(r["source"]).name, r["kind"], r["bytes"]) for r in rejects] == \
        [("a.jsonl.gz", "lost file", sizes["a.jsonl.gz"]), ("a.parquet", "lost file", sizes["a.parquet"])]
    for name in ("manifest.json", "manifest.rows.jsonl", "plan/rejects.jsonl"):
        assert (runs[0] / name).read_bytes() == (runs[1] / name).read_bytes()
    assert sorted(p.read_bytes() for p in (runs[0] / "shards").iterdir()) == \
        sorted(p.read_bytes() for p in (runs[1] / "shards").iterdir())


def test_lost_bytes_count_against_max_reject_rate(tmp_path: Path) -> None:
    inputs = corpus(tmp_path, "a.parquet")
    size, total = (inputs / "a.parquet").stat().st_size, sum(p.stat().st_size for p in inputs.iterdir())
    proc = run_cli("plan", config(tmp_path), "--run", tmp_path / "run", "--input", inputs, "--skip-bad-files")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert f"1 lost input file(s), {size:,} of {total:,} input bytes ({size / total:.1%}), above " \
           f"plan.max_reject_rate=0.05: {inputs / 'a.parquet'}: no column 'text'" in proc.stderr
    assert not (tmp_path / "run").exists()
    allowed = config(tmp_path, max_reject_rate=round(size / total + 0.01, 2))
    assert run_cli("plan", allowed, "--run", tmp_path / "run", "--input", inputs, "--skip-bad-files").returncode == 0


def test_bad_lines_stay_record_rejects(tmp_path: Path) -> None:
    good = write_corpus(tmp_path / "in" / "a.jsonl", 60)
    with open(good, "ab") as handle:
        handle.write(b'{"id": "broken", "text": \n')
        handle.write(orjson.dumps({"id": "long", "text": "x" * 5000}) + b"\n")
    proc = run_cli("plan", config(tmp_path, max_line_bytes=4096), "--run", tmp_path / "run", "--input", good)
    assert proc.returncode == 0, proc.stderr
    summary = read_json(tmp_path / "run" / "plan" / "summary.json")
    assert summary["lost_files"] == [] and summary["rejected"] == 2 and summary["records_read"] == 62


def test_skip_bad_files_must_be_true_or_false(tmp_path: Path) -> None:
    write_corpus(tmp_path / "in" / "a.jsonl", 3)
    proc = run_cli("plan", config(tmp_path, skip_bad_files="yes"), "--run", tmp_path / "run",
                   "--input", tmp_path / "in")
    assert proc.returncode == 2 and "'plan.skip_bad_files' must be true or false" in proc.stderr


def test_the_slurm_map_keeps_and_lists_the_same(tmp_path: Path) -> None:
    """`plan --executor slurm` scans groups as array tasks (run_groups_mapped); here the same map runs in
    this process, each item and result pickled as submitit would: the plan is the --jobs 1 plan."""
    import pickle

    from hpcsynth.config import load_config
    from hpcsynth.plan import plan_corpus
    from hpcsynth.rundir import RunDir

    def in_process(fn, items, name):  # noqa: ANN001, ARG001  (the MapGroups signature)
        return [pickle.loads(pickle.dumps(fn(pickle.loads(pickle.dumps(item))))) for item in items]

    inputs = corpus(tmp_path, "a.jsonl.gz")
    loaded = load_config(config(tmp_path, max_reject_rate=0.9, skip_bad_files=True))
    local = plan_corpus(loaded, RunDir(tmp_path / "local"), [str(inputs)], jobs=1)
    mapped = plan_corpus(loaded, RunDir(tmp_path / "mapped"), [str(inputs)], map_groups=in_process)
    assert mapped.summary["lost_files"] == local.summary["lost_files"] and len(local.summary["lost_files"]) == 1
    for name in ("manifest.json", "manifest.rows.jsonl", "plan/rejects.jsonl"):
        assert (tmp_path / "local" / name).read_bytes() == (tmp_path / "mapped" / name).read_bytes()
