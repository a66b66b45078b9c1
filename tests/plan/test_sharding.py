"""Token-balanced shards, long documents, --jobs giving the same bytes, duplicates across groups."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import orjson
import pytest
import zstandard

from hpcsynth.errors import ConfigError
from hpcsynth.files import read_json, read_jsonl_zst, sha256_file
from hpcsynth.plan import parallel, plan_corpus
from hpcsynth.plan.documents import cut_point, split_text
from hpcsynth.corpus.filters import compile_predicate
from hpcsynth.rundir import RunDir

from conftest import fake_config


def mixed_corpus(path: Path, count: int, dup_every: int = 0) -> Path:
    """Documents of very different lengths, some long enough for the long-document policy."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        for i in range(count):
            size = (i * 7919) % 40 + 1
            text = "\n\n".join(f"Paragraph {j} of document {i}. " + "text " * (size * 3) for j in range(size))
            doc_id = f"dup-{i // dup_every}" if dup_every and i % dup_every == 1 else f"{path.stem}-{i}"
            handle.write(orjson.dumps({"id": doc_id, "text": text, "score": i % 10}) + b"\n")
    return path


def tree_digest(run: RunDir) -> str:
    digest = hashlib.sha256(run.manifest_path.read_bytes() + run.manifest_rows_path.read_bytes())
    digest.update((run.root / "plan" / "rejects.jsonl").read_bytes())
    for path in sorted((run.root / "shards").iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def test_shards_balance_estimated_tokens_not_documents(tmp_path: Path) -> None:
    corpus = mixed_corpus(tmp_path / "c.jsonl", 300)
    run = RunDir(tmp_path / "run")
    config = fake_config(corpus, plan={"shard_docs": 10_000, "shard_tokens": 20_000, "bytes_per_token": 4.0,
                                       "long_docs": "keep"})
    plan_corpus(config, run, jobs=1)
    manifest = read_json(run.manifest_path)
    rows = list(run.manifest_rows())
    full = [r["est_tokens"] for r in rows[:-1]]
    assert len(rows) > 5 and min(full) >= 20_000 and max(full) < 20_000 + 5_000  # one document over, at most
    assert len({r["documents"] for r in rows}) > 3, "document counts vary; tokens do not"
    for row in rows:
        blob = (run.root / row["path"]).read_bytes()
        assert zstandard.get_frame_parameters(blob).has_checksum, "frames carry content checksums"
        docs = list(read_jsonl_zst(run.root / row["path"]))
        assert row["est_tokens"] == sum(max(1, round(len(d["text"].encode()) / 4.0)) for d in docs)
        assert sha256_file(run.root / row["path"]) == row["sha256"] and row["bytes"] == (run.root / row["path"]).stat().st_size
        assert [d["key"] for d in docs] == [f"{row['id']:06d}-{i:06d}" for i in range(len(docs))]
        lines = [d["meta"]["line"] for d in docs]
        assert row["inputs"] == [{"path": str(corpus.resolve()), "unit": "line", "first": lines[0], "last": lines[-1]}]
    assert manifest["est_tokens"] == sum(r["est_tokens"] for r in rows)


def test_jobs_and_groups_give_byte_identical_plans(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(6):
        mixed_corpus(tmp_path / "in" / f"part-{i}.jsonl", 40, dup_every=7)
    (tmp_path / "in" / "part-3.jsonl").open("ab").write(b"{broken\n")
    # group_mb 0: each file its own group, so --jobs 2 and 3 spill most of them
    config = fake_config(tmp_path, plan={"shard_tokens": 15_000, "long_docs": "split", "long_doc_chars": 3000,
                                         "max_reject_rate": 1.0, "group_mb": 0})
    digests, plans = [], []
    for jobs in (1, 2, 3):
        # --jobs 3 keeps only ~3 documents of a group in memory while it waits: the rest goes to disk
        monkeypatch.setattr(parallel, "HOLD_BYTES", 10_000 if jobs == 3 else 256 << 20)
        run = RunDir(tmp_path / f"run-{jobs}")
        plans.append(plan_corpus(config, run, [str(tmp_path / "in")], jobs=jobs))
        digests.append(tree_digest(run))
    assert digests[0] == digests[1] == digests[2]
    assert plans[0].summary["input_groups"] > 3 and plans[0].summary["rejected_by_reason"]["duplicate id"] > 5
    leftovers = [p for p in (tmp_path / "run-2").rglob("*") if "spill" in str(p) or ".plan-tmp" in str(p)]
    assert not leftovers


def test_long_documents_truncate_or_split_at_paragraphs(tmp_path: Path) -> None:
    paragraphs = [f"Paragraph {i}. " + "x" * 990 for i in range(20)]  # 20 x ~1004 chars
    corpus = tmp_path / "c.jsonl"
    corpus.write_bytes(orjson.dumps({"id": "long", "text": "\n\n".join(paragraphs)}) + b"\n")
    for policy, parts in (("truncate", 1), ("split", 7), ("keep", 1)):
        run = RunDir(tmp_path / policy)
        result = plan_corpus(fake_config(corpus, plan={"long_docs": policy, "long_doc_chars": 3500}), run, jobs=1)
        docs = [d for s in range(result.shards) for d in read_jsonl_zst(run.shard_path(s))]
        assert len(docs) == parts and {d["id"] for d in docs} == {"long"}
        meta = docs[0]["meta"]
        assert meta["chars"] == len("\n\n".join(paragraphs)) and meta["parts"] == parts
        if policy == "keep":
            assert not meta["truncated"] and meta["kept_fraction"] == 1.0
            continue
        assert all(len(d["text"]) <= 3500 and d["text"].startswith("Paragraph") and d["text"].endswith("x")
                   for d in docs)
        assert [d["meta"]["part"] for d in docs] == list(range(parts))
        assert meta["truncated"] == (policy == "truncate")
        assert meta["kept_fraction"] == round(sum(len(d["text"]) for d in docs) / meta["chars"], 4)


def test_cut_points() -> None:
    assert cut_point("aaaa bbbb. cccc dddd", 12) == 10  # after the sentence
    assert cut_point("a" * 50, 20) == 20  # no boundary: a hard cut
    assert split_text("one two three four", 8) == ["one two", "three", "four"]


def test_filters_limit_and_seeded_sample(tmp_path: Path) -> None:
    corpus = mixed_corpus(tmp_path / "c.jsonl", 400)
    ids = {}
    for name, plan in (("limit", {"limit": 25}), ("sample", {"sample_fraction": 0.3, "sample_seed": 7}),
                       ("sample-again", {"sample_fraction": 0.3, "sample_seed": 7}),
                       ("other-seed", {"sample_fraction": 0.3, "sample_seed": 8}),
                       ("pred", {"filter": "score >= 8 or not score in [0, 1, 2, 3, 4, 5, 6]", "min_chars": 300})):
        run = RunDir(tmp_path / name)
        result = plan_corpus(fake_config(corpus, plan={**plan, "long_docs": "keep"}), run, jobs=2)
        ids[name] = [d["id"] for s in range(result.shards) for d in read_jsonl_zst(run.shard_path(s))]
        ids[name + "-summary"] = result.summary["filtered_by_rule"]
    assert ids["limit"] == [f"c-{i}" for i in range(25)]
    assert 90 < len(ids["sample"]) < 150 and ids["sample"] == ids["sample-again"] != ids["other-seed"]
    assert ids["sample-summary"] == {"sample": 400 - len(ids["sample"])}
    assert all(int(i.split("-")[1]) % 10 in (7, 8, 9) for i in ids["pred"])
    assert set(ids["pred-summary"]) == {"filter", "min_chars"}


@pytest.mark.parametrize("text, record, expected", [
    ('int_score >= 3 and language == "en"', {"int_score": 3, "language": "en"}, True),
    ('int_score >= 3 and language == "en"', {"int_score": 2, "language": "en"}, False),
    ("a.b == 'x' or c", {"a": {"b": "x"}}, True),
    ("c == 1 or (d != null and not d < 0.5)", {"d": 0.7}, True),
    ("score > 3", {"score": "high"}, False),  # another type: no match, no error
    ("flag == true", {"flag": 1}, False),
    ("missing == 1", {}, False),
])
def test_predicate_language(text: str, record: dict, expected: bool) -> None:
    if text.endswith("or c"):
        with pytest.raises(ConfigError, match="plan.filter.*ends too early"):
            compile_predicate(text)
        return
    assert compile_predicate(text)(record) is expected


@pytest.mark.parametrize("text, why", [("score >= ", "ends too early"), ("score => 3", "cannot read|expected"),
                                       ("(a == 1", "not closed"), ("a == 1 b", "unexpected 'b'")])
def test_bad_predicates_name_the_key(text: str, why: str) -> None:
    with pytest.raises(ConfigError, match=f"'plan.filter' is not a valid filter .*({why})"):
        compile_predicate(text)


def test_bytes_per_token_measured_with_the_generators_tokenizer(tmp_path: Path) -> None:
    from conftest import SHARED_DATA

    source = SHARED_DATA / "tokenizers" / "gpt-neox-20b.tokenizer.json"
    if not source.is_file() or not (SHARED_DATA / "web").is_dir():
        pytest.skip("shared tokenizer or Common Crawl sample not present")
    model = tmp_path / "model"
    model.mkdir()
    (model / "tokenizer.json").write_bytes(source.read_bytes())
    run = RunDir(tmp_path / "run")
    config = fake_config(tmp_path, model={"path": str(model)})
    plan = plan_corpus(config, run, [str(SHARED_DATA / "web" / "*")], jobs=1)
    ratio = read_json(run.manifest_path)["bytes_per_token"]
    assert 3.0 < ratio < 6.0 and ratio != 4.0  # English web text under a 50k BPE
    assert plan.summary["bytes_per_token_source"].startswith("measured on")
    plain = plan_corpus(fake_config(tmp_path), RunDir(tmp_path / "plain"), [str(SHARED_DATA / "web" / "*")], jobs=1)
    assert plain.summary["bytes_per_token"] == 4.0 and plain.summary["bytes_per_token_source"].startswith("default")


@pytest.mark.parametrize("yaml_text, message", [
    ("plan:\n  long_docs: cut\n", "line 2: 'plan.long_docs' must be one of truncate, split, keep, got 'cut'"),
    ("plan:\n  shard_tokens: 1\n  filter: 'score >> 2'\n", "line 3: 'plan.filter' is not a valid filter"),
    ("plan:\n  sample_fraction: 0\n", "'plan.sample_fraction' must be above 0 and at most 1"),
    ("plan:\n  duplicate_ids: drop\n", "'plan.duplicate_ids' must be one of keep_first, reject"),
])
def test_plan_config_mistakes_name_the_line(tmp_path: Path, yaml_text: str, message: str) -> None:
    from hpcsynth.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(path)
