"""Planning: shards, manifest, rejects, and one-line errors for bad input."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pytest

from hpcsynth.errors import InputError, RunError
from hpcsynth.files import read_json, read_jsonl_zst, sha256_file
from hpcsynth.plan import plan_corpus
from hpcsynth.rundir import RunDir

from conftest import SHARED_DATA, fake_config, write_corpus


def test_plan_splits_into_shards_with_manifest(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "c.jsonl", 12)
    run = RunDir(tmp_path / "run")
    plan = plan_corpus(fake_config(corpus), run, jobs=1)
    assert (plan.shards, plan.documents, plan.rejected) == (3, 12, 0)
    manifest = read_json(run.manifest_path)
    rows = list(run.manifest_rows())
    assert [s["documents"] for s in rows] == [5, 5, 2]
    assert manifest["fingerprint"] == run.fingerprint() == plan.fingerprint
    keys = []
    for shard in rows:
        assert sha256_file(run.shard_path(shard["id"])) == shard["sha256"]
        keys += [d["key"] for d in read_jsonl_zst(run.shard_path(shard["id"]))]
    assert len(set(keys)) == 12
    assert run.config().plan.inputs == (str(corpus.resolve()),)


def test_bad_lines_are_rejected_with_file_and_line(tmp_path: Path) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_bytes(b'{"id": 1, "text": "fine text"}\n{"id": 2}\n{"id": 3, "text": ""}\n\n'
                       b'{"text": "no id here"}\n{"id": 4, "text": \n')
    run = RunDir(tmp_path / "run")
    plan = plan_corpus(fake_config(corpus, plan={"max_reject_rate": 1.0}), run, jobs=1)
    assert (plan.documents, plan.rejected) == (2, 3)
    rejects = [orjson.loads(l) for l in (run.root / "plan" / "rejects.jsonl").read_bytes().splitlines()]
    assert [(r["line"], r["reason"].split(" (")[0]) for r in rejects] == [
        (2, "no string field 'text'"), (3, "empty text"), (6, "not valid JSON")]
    assert all(r["source"] == str(corpus.resolve()) for r in rejects)
    docs = list(read_jsonl_zst(run.shard_path(0)))
    assert [d["id"] for d in docs] == ["1", "c.jsonl:5"]
    assert docs[1]["meta"]["line"] == 5 and docs[1]["meta"]["source"] == str(corpus.resolve())


def test_reject_rate_aborts_with_one_line_and_leaves_no_plan(tmp_path: Path) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_bytes(b'{"id": 1, "text": "ok"}\n{"id": 2, "text": \n')
    run = RunDir(tmp_path / "run")
    with pytest.raises(InputError, match=r"1 of 2 records rejected \(50.0%\), above plan.max_reject_rate=0.05: "
                                         r"not valid JSON \(1\); first: .*c.jsonl line 2: not valid JSON .*; "
                                         r"see .*plan-failed-rejects.jsonl"):
        plan_corpus(fake_config(corpus), run, jobs=1)
    assert not run.manifest_path.exists() and not (run.root / "shards").exists()
    assert [p.name for p in run.root.iterdir()] == ["plan-failed-rejects.jsonl"]
    assert b'"line":2' in (run.root / "plan-failed-rejects.jsonl").read_bytes()


def test_gzip_and_glob_inputs(tmp_path: Path) -> None:
    write_corpus(tmp_path / "in" / "a.jsonl", 3)
    with gzip.open(tmp_path / "in" / "b.jsonl.gz", "wb") as handle:
        handle.write(b'{"id": "g", "text": "gzipped text"}\n')
    run = RunDir(tmp_path / "run")
    plan = plan_corpus(fake_config(tmp_path / "none"), run, [str(tmp_path / "in" / "*")])
    assert plan.documents == 4


def test_no_input_and_no_match(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="matches no file"):
        plan_corpus(fake_config(tmp_path / "missing.jsonl"), RunDir(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_replanning_same_is_a_no_op_and_different_refuses_unless_forced(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "c.jsonl", 12)
    run = RunDir(tmp_path / "run")
    first = plan_corpus(fake_config(corpus), run, jobs=1)
    manifest = run.manifest_path.read_bytes()
    again = plan_corpus(fake_config(corpus), run, jobs=1)
    assert again.unchanged and again.shards == first.shards and run.manifest_path.read_bytes() == manifest
    with pytest.raises(RunError, match=r"already planned differently \(config keys changed: plan.shard_docs\); "
                                       r".*--force"):
        plan_corpus(fake_config(corpus, plan={"shard_docs": 4}), run, jobs=1)
    write_corpus(corpus, 13)
    with pytest.raises(RunError, match=r"inputs changed \(size or time\): .*c.jsonl"):
        plan_corpus(fake_config(corpus), run, jobs=1)
    assert run.manifest_path.read_bytes() == manifest, "a refused re-plan leaves the old plan alone"
    (run.root / "done").mkdir()
    for shard in (0, 2):
        (run.root / "done" / f"00000{shard}.json").write_text("{}")
    forced = plan_corpus(fake_config(corpus), run, jobs=1, force=True)
    assert forced.shards == 3 and len(list((run.root / "shards").iterdir())) == 3
    # the 13th document changed shard 2 only: its old output moves aside (kept), shard 0's stays done
    assert (run.root / "done" / "000000.json").exists() and not (run.root / "done" / "000002.json").exists()
    assert [p.name for p in (run.root / "replaced").glob("*/done/*")] == ["000002.json"]
    assert not [p for p in run.root.iterdir() if p.name.startswith(".plan")]


def test_real_common_crawl_documents(tmp_path: Path) -> None:
    if not (SHARED_DATA / "web").is_dir():
        pytest.skip("shared Common Crawl sample not present")
    run = RunDir(tmp_path / "run")
    plan = plan_corpus(fake_config(tmp_path / "x"), run, [str(SHARED_DATA / "web" / "*")])
    assert plan.documents == 30 and plan.rejected == 0
    ids = {d["id"] for s in range(plan.shards) for d in read_jsonl_zst(run.shard_path(s))}
    assert all(i for i in ids) and len(ids) == 30


def test_progress_reports_input_bytes(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "c.jsonl", 300)
    calls: list[tuple[int, int]] = []
    plan_corpus(fake_config(corpus), RunDir(tmp_path / "run"), jobs=1, progress=lambda d, t: calls.append((d, t)))
    size = corpus.stat().st_size
    assert calls and calls[-1] == (size, size)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
