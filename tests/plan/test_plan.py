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
    plan = plan_corpus(fake_config(corpus), run)
    assert (plan.shards, plan.documents, plan.rejected) == (3, 12, 0)
    manifest = read_json(run.manifest_path)
    assert [s["documents"] for s in manifest["shards"]] == [5, 5, 2]
    assert manifest["fingerprint"] == run.fingerprint() == plan.fingerprint
    keys = []
    for shard in manifest["shards"]:
        assert sha256_file(run.shard_path(shard["id"])) == shard["sha256"]
        keys += [d["key"] for d in read_jsonl_zst(run.shard_path(shard["id"]))]
    assert len(set(keys)) == 12
    assert run.config().plan.inputs == (str(corpus.resolve()),)


def test_bad_lines_are_rejected_with_file_and_line(tmp_path: Path) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_bytes(b'{"id": 1, "text": "fine text"}\n{"id": 2}\n{"id": 3, "text": ""}\n\n'
                       b'{"text": "no id here"}\n')
    run = RunDir(tmp_path / "run")
    plan = plan_corpus(fake_config(corpus), run)
    assert (plan.documents, plan.rejected) == (2, 2)
    rejects = [orjson.loads(l) for l in (run.root / "rejects" / "plan.jsonl").read_bytes().splitlines()]
    assert [(r["line"], r["reason"]) for r in rejects] == [(2, "no string field 'text'"),
                                                           (3, "shorter than plan.min_chars=1")]
    docs = list(read_jsonl_zst(run.shard_path(0)))
    assert [d["id"] for d in docs] == ["1", "c.jsonl:5"]


def test_invalid_json_names_file_and_line(tmp_path: Path) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_bytes(b'{"id": 1, "text": "ok"}\n{"id": 2, "text": \n')
    with pytest.raises(InputError, match=r"c.jsonl line 2: not valid JSON"):
        plan_corpus(fake_config(corpus), RunDir(tmp_path / "run"))


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


def test_planned_run_is_not_replanned(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "c.jsonl", 3)
    run = RunDir(tmp_path / "run")
    plan_corpus(fake_config(corpus), run)
    with pytest.raises(RunError, match="already planned"):
        plan_corpus(fake_config(corpus), run)


def test_real_common_crawl_documents(tmp_path: Path) -> None:
    if not (SHARED_DATA / "web").is_dir():
        pytest.skip("shared Common Crawl sample not present")
    run = RunDir(tmp_path / "run")
    plan = plan_corpus(fake_config(tmp_path / "x"), run, [str(SHARED_DATA / "web" / "*")])
    assert plan.documents == 30 and plan.rejected == 0
    ids = {d["id"] for s in range(plan.shards) for d in read_jsonl_zst(run.shard_path(s))}
    assert all(i for i in ids) and len(ids) == 30
