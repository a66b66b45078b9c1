"""Planner inputs: Parquet beside JSONL, and every kind of bad input counted, listed and survived."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import orjson
import pytest
import zstandard

from hpcsynth.files import read_jsonl_zst
from hpcsynth.plan import plan_corpus
from hpcsynth.rundir import RunDir

from conftest import fake_config, write_corpus

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def write_parquet(path: Path, rows: int, row_group: int = 4, text: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"id": [f"pq-{i}" for i in range(rows)],
                      text: [f"Parquet document {i}. " + "lorem ipsum " * (i % 5 + 1) for i in range(rows)],
                      "int_score": [i % 5 for i in range(rows)], "language": ["en" if i % 3 else "de" for i in range(rows)]})
    pq.write_table(table, path, row_group_size=row_group)
    return path


def all_docs(run: RunDir) -> list[dict]:
    return [d for s in run.manifest_rows() for d in read_jsonl_zst(run.shard_path(s["id"]))]


def rejects(run: RunDir) -> list[dict]:
    return [orjson.loads(l) for l in (run.root / "plan" / "rejects.jsonl").read_bytes().splitlines()]


def test_parquet_and_jsonl_mixed_with_filters_and_kept_fields(tmp_path: Path) -> None:
    write_parquet(tmp_path / "in" / "a.parquet", 10)
    write_corpus(tmp_path / "in" / "b.jsonl", 3)
    run = RunDir(tmp_path / "run")
    config = fake_config(tmp_path, plan={"filter": 'int_score >= 2 and language == "en"', "keep_fields": ("int_score",)})
    plan = plan_corpus(config, run, [str(tmp_path / "in")], jobs=1)
    docs = all_docs(run)
    # parquet rows 0..9: int_score i%5 >= 2 and i%3 != 0 -> 2, 4, 7, 8; the JSONL lines have no int_score
    assert [d["id"] for d in docs] == ["pq-2", "pq-4", "pq-7", "pq-8"]
    assert [d["meta"]["row"] for d in docs] == [2, 4, 7, 8] and docs[0]["meta"]["fields"] == {"int_score": 2}
    assert plan.summary["filtered_by_rule"] == {"filter": 9}
    assert run.manifest_row(0)["inputs"][0]["unit"] == "row"


def test_parquet_without_text_column_lists_its_columns(tmp_path: Path) -> None:
    write_parquet(tmp_path / "a.parquet", 4, text="content")
    write_corpus(tmp_path / "b.jsonl", 40)
    run = RunDir(tmp_path / "run")
    # A lost file (test_lost_files.py): planned without only under plan.skip_bad_files
    plan_corpus(fake_config(tmp_path, plan={"max_reject_rate": 0.5, "skip_bad_files": True}), run,
                [str(tmp_path / "*")], jobs=1)
    [reject] = rejects(run)
    assert reject["row"] == 0 and reject["reason"] == "no column 'text' (plan.text_key); the file has: id, content, " \
                                                      "int_score, language"


def flipped(data: bytes) -> bytes:
    """One bit flipped in the middle of a compressed file: a ZstdError once, now a reject like a cut file."""
    out = bytearray(data)
    out[len(out) // 2] ^= 0x10
    return bytes(out)


@pytest.mark.parametrize("name, data, reason", [
    ("bad.parquet", b"PAR1 this is not parquet at all PAR1", "not a readable Parquet file"),
    ("cut.jsonl.gz", gzip.compress(b'{"id": "g", "text": "gz text"}\n' * 200, mtime=0)[:-30], "gzip stream is truncated"),
    ("cut.jsonl.zst", zstandard.ZstdCompressor(write_checksum=True).compress(b'{"id": "z", "text": "zst"}\n' * 2000)[:-40],
     "zstd stream is truncated"),
    ("flip.jsonl.zst", flipped(zstandard.ZstdCompressor(write_checksum=True).compress(
        b"".join(b'{"id": "f%d", "text": "zst %d"}\n' % (i, i * i) for i in range(2000)))),
     "zstd stream is truncated or corrupt"),
], ids=["bad-parquet", "cut-gz", "cut-zst", "flipped-zst"])  # the same ids in every xdist worker
def test_corrupt_files_are_rejected_and_the_rest_planned(tmp_path: Path, name: str, data: bytes, reason: str) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / name).write_bytes(data)
    write_corpus(tmp_path / "in" / "z-good.jsonl", 50)
    run = RunDir(tmp_path / "run")
    plan = plan_corpus(fake_config(tmp_path, plan={"skip_bad_files": True, "max_reject_rate": 1.0}), run,
                       [str(tmp_path / "in")], jobs=1)
    found = [r for r in rejects(run) if reason in r["reason"]]
    assert len(found) == 1 and found[0]["source"].endswith(name) and found[0]["kind"] == "lost file"
    assert plan.documents >= 50


def test_bad_records_each_listed(tmp_path: Path) -> None:
    corpus = tmp_path / "c.jsonl"
    huge = "word " * 2_000_000  # 10 MB
    corpus.write_bytes(b"".join([
        b'{"id": "a", "text": 5}\n', b'{"id": "b", "text": "caf\xe9"}\n', b'{"id": "c", "text": "   "}\n',
        orjson.dumps({"id": "d", "text": huge}) + b"\n", b'{"id": "e", "text": "fine"}\n', b'[1, 2]\n',
        b'{"id": "e", "text": "again"}\n']))
    run = RunDir(tmp_path / "run")
    plan = plan_corpus(fake_config(corpus, plan={"max_reject_rate": 1.0, "max_chars": 1_000_000}), run, jobs=1)
    got = {r["line"]: r["reason"] for r in rejects(run)}
    assert got[1] == "field 'text' is int, not a string"
    assert got[2].startswith("invalid UTF-8 at byte")
    assert got[3] == "empty text"
    assert got[4] == "10000000 characters, above plan.max_chars=1000000"
    assert got[6] == "expected a JSON object, got list"
    assert got[7].startswith("duplicate id 'e' (first at ") and got[7].endswith("c.jsonl:5)")
    assert [d["id"] for d in all_docs(run)] == ["e"] and plan.documents == 1
    assert plan.summary["rejected_by_reason"]["duplicate id"] == 1


def test_unreadable_files_are_rejects(tmp_path: Path) -> None:
    locked = write_corpus(tmp_path / "locked.jsonl", 2)
    locked.chmod(0)
    broken = tmp_path / "eio.jsonl"
    broken.symlink_to("/proc/self/mem")  # a regular file whose first read fails with EIO, even for root
    good = write_corpus(tmp_path / "good.jsonl", 60)
    run = RunDir(tmp_path / "run")
    plan_corpus(fake_config(good, plan={"skip_bad_files": True}), run, [str(broken), str(locked), str(good)], jobs=1)
    reasons = {r["source"]: r["reason"] for r in rejects(run)}
    assert [v for k, v in reasons.items() if k.endswith("/mem")] == ["cannot read the file (Input/output error)"]
    if os.geteuid() != 0:  # root reads every file
        assert reasons[str(locked.resolve())] == "cannot read the file (permission denied)"


def test_empty_glob_among_others_is_a_reject(tmp_path: Path) -> None:
    good = write_corpus(tmp_path / "good.jsonl", 60)
    run = RunDir(tmp_path / "run")
    plan = plan_corpus(fake_config(good), run, [str(good), str(tmp_path / "none-*.jsonl")], jobs=1)
    assert rejects(run) == [{"source": str(tmp_path / "none-*.jsonl"), "kind": "reject", "reason": "matches no file"}]
    assert plan.summary["rejected_by_reason"] == {"matches no file": 1}
