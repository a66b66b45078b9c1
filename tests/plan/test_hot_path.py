"""The planner's per-document loop, made fast, still does every check: line bounds, the cut rule,
token estimates, kept fields, rejects naming file:line."""

from __future__ import annotations

import datetime
import random
from pathlib import Path

import orjson
import pytest
import zstandard

from hpcsynth.files import read_jsonl_zst
from hpcsynth.plan import plan_corpus
from hpcsynth.plan.documents import DocumentBuilder, Dropped, estimate_tokens
from hpcsynth.corpus.readers import read_file
from hpcsynth.plan.scan import GroupJob, count_shards
from hpcsynth.plan.shards import ShardSink, finish_syncs
from hpcsynth.rundir import RunDir

from conftest import fake_config


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.zst"])
def test_line_bound_at_the_edges(tmp_path: Path, suffix: str) -> None:
    """A line of exactly the bound (newline included) is read; one byte more is a reject naming its line,
    and reading goes on after it; blank lines count in the numbering but are not records."""
    limit = 40
    fits = orjson.dumps({"text": "x" * (limit - 12)}) + b"\n"
    assert len(fits) == limit
    over = orjson.dumps({"text": "x" * (limit - 11)}) + b"\n"
    data = fits + b"\n" + over + b"  \n" + b"y" * 200 + b"\n" + fits + b"[1]\n" + b"z" * 100
    path = tmp_path / f"edge{suffix}"
    path.write_bytes(zstandard.ZstdCompressor().compress(data) if suffix.endswith(".zst") else data)
    items = [(n, record is not None, reason.split(" (")[0].split("=")[0]) for n, record, reason
             in read_file(path, ["text"], max_line_bytes=limit)]
    too_long = "line longer than plan.max_line_bytes"
    assert items == [(1, True, ""), (3, False, too_long), (5, False, too_long), (6, True, ""),
                     (7, False, "expected a JSON object, got list"), (8, False, too_long)]


def test_shard_sink_cuts_where_count_shards_counts(tmp_path: Path) -> None:
    """The sink cuts by its rows' own counts (no separate counter per document); a spilled group's shard
    ids come from count_shards (ShardCutter): the two must agree on every sequence."""
    rng = random.Random(7)
    config = fake_config(tmp_path, plan={"shard_tokens": 1000, "shard_docs": 7})
    job = GroupJob(0, (), str(tmp_path), config.plan, 4.0, 0)
    for trial in range(30):
        tokens = [rng.choice([1, 5, 50, 400, 999, 1000, 3000]) for _ in range(rng.randint(1, 60))]
        sink = ShardSink(tmp_path / f"s{trial}", 0, 1, 1000, 7)
        for i, t in enumerate(tokens):
            sink.add(b'{"id":"x"}', t, 1, "in.jsonl", "line", i + 1)
        rows = sink.close()
        finish_syncs()
        assert len(rows) == count_shards(tokens, job)
        assert [r.documents for r in rows] == _cut(tokens, 1000, 7)
        assert sum(r.est_tokens for r in rows) == sum(tokens)


def _cut(tokens: list[int], shard_tokens: int, shard_docs: int) -> list[int]:
    sizes, total, docs = [], 0, 0
    for t in tokens:
        total, docs = total + t, docs + 1
        if total >= shard_tokens or docs >= shard_docs:
            sizes.append(docs)
            total = docs = 0
    return sizes + ([docs] if docs else [])


def test_token_estimates_and_kept_fields_of_every_kind(tmp_path: Path) -> None:
    """Non-ASCII text is estimated from its UTF-8 bytes; kept fields keep JSON values as they are, a missing
    one is null, anything else (a Parquet timestamp) its str()."""
    texts = ["plain ascii text " * 20, "café, naïve, 東京 " * 30, "emoji 🙂 " * 40]
    corpus = tmp_path / "c.jsonl"
    corpus.write_bytes(b"".join(orjson.dumps({"id": str(i), "text": t, "n": {"a": i}, "s": [i]}) + b"\n"
                                for i, t in enumerate(texts)))
    config = fake_config(corpus, plan={"bytes_per_token": 3.3, "keep_fields": ("n.a", "s", "gone"),
                                       "shard_docs": 100})
    run = RunDir(tmp_path / "run")
    plan_corpus(config, run, jobs=1)
    docs = list(read_jsonl_zst(run.root / "shards" / "000000.jsonl.zst"))
    assert [d["meta"]["fields"] for d in docs] == [{"n.a": i, "s": [i], "gone": None} for i in range(3)]
    expected = [estimate_tokens(t, 3.3) for t in texts]
    assert expected[1] == max(1, round(len(texts[1].encode()) / 3.3)) != round(len(texts[1]) / 3.3)
    assert run.manifest_row(0)["est_tokens"] == sum(expected)
    builder = DocumentBuilder(config.plan, 3.3)
    parts = builder.build({"text": texts[0], "s": datetime.date(2024, 1, 2)}, "id", "f", "row", 0)
    assert not isinstance(parts, Dropped) and orjson.loads(parts[0].line)["meta"]["fields"]["s"] == "2024-01-02"
