"""Repair of a routed run (`prompts: [{name, when}]`): each sub-run holds one prompt, no routing, and only the
documents whose record of that prompt was refused, so no document gets a record of a prompt it was not routed
to, in the sub-runs or in the reduce output, and the reduce keeps each record once. The corpus is Parquet with
FineWeb-Edu's `int_score` (as tests/plan/test_routing.py); the engine is the fake one, whose records reach
sampling.max_tokens 30 about 45% of the time, refused as truncated (as tests/repair/test_repair.py)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from hpcsynth.files import read_json, read_jsonl_zst
from hpcsynth.rundir import RunDir

from conftest import run_cli
from test_repair import mix_docs, outputs, truncated

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

# int_score 0 goes nowhere; 1 to extract_knowledge only; 2 and 3 to both; 4 and 5 to distill only.
WHEN = {"distill": "int_score >= 2", "extract_knowledge": "int_score >= 1 and int_score <= 3"}
ROUTED = {"distill": lambda s: s >= 2, "extract_knowledge": lambda s: 1 <= s <= 3}


def routed_run(tmp_path: Path, tiny_model: Path, docs: int = 48) -> tuple[RunDir, set[tuple[str, str]]]:
    """A launched routed run; returns it and its routed (document id, prompt) pairs."""
    ids = [f"d{i}" for i in range(docs)]
    scores = [(i * 5) % 6 for i in range(docs)]
    texts = [f"Document {d} scores {s}.\n" + " ".join(f"word{(i * 13 + j) % 89}" for j in range(40))
             for i, (d, s) in enumerate(zip(ids, scores))]
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"id": ids, "text": texts, "int_score": scores}), tmp_path / "in" / "part.parquet",
                   row_group_size=7)
    entries = ", ".join(f'{{name: {name}, when: "{when}"}}' for name, when in WHEN.items())
    config = tmp_path / "routed.yaml"
    config.write_text(f"prompts: [{entries}]\n"
                      "model: {engine: fake, path: fake-model}\n"
                      "plan: {shard_docs: 8, group_mb: 0}\n"
                      "worker: {flush_interval_s: 0.05, heartbeat_interval_s: 0.05}\n"
                      "sampling: {max_tokens: 30}\n"
                      f"reduce: {{drop_truncated: true, min_chars: 1, original_ratio: 0.0, tokenizer: {tiny_model}}}\n"
                      "validate: {action: drop}\n")
    run = RunDir(tmp_path / "run")
    planned = run_cli("plan", config, "--run", run.root, "--input", tmp_path / "in")
    assert planned.returncode == 0, planned.stderr
    launched = run_cli("launch", run.root, "--progress", "0")
    assert launched.returncode == 0, launched.stderr
    pairs = {(d, p) for d, s in zip(ids, scores) for p, routed in ROUTED.items() if routed(s)}
    return run, pairs


def test_a_routed_run_is_repaired_only_on_its_routed_pairs_and_reduced_once_each(tmp_path: Path,
                                                                                  tiny_model: Path) -> None:
    run, pairs = routed_run(tmp_path, tiny_model)
    original = outputs(run)
    assert {(r["source_id"], r["prompt"]) for r in original} == pairs and len(original) == len(pairs)
    refused = truncated(original)
    pair_of = {r["id"]: (r["source_id"], r["prompt"]) for r in original}
    assert {pair_of[i][1] for i in refused} == set(WHEN), "both prompts have refused records to repair"
    assert any(pair_of[i][0] in {d for d, p in pairs if p != pair_of[i][1]} for i in refused), \
        "a document routed to both prompts has a refused record of one of them"

    proc = run_cli("repair", run.root, "--attempts", "2")
    assert proc.returncode == 0, proc.stderr
    subs = run.repair_runs()
    assert subs and {p for _, p, _ in subs} == set(WHEN)
    for attempt, prompt, sub in subs:
        config = sub.config()
        assert config.prompts == (prompt,) and config.prompt_when == {}, "a sub-run routes nothing"
        assert "routing" not in sub.manifest()
        docs = [d for shard in sub.shard_ids() for d in read_jsonl_zst(sub.shard_path(shard))]
        assert docs and all("prompts" not in d for d in docs)
        assert all((d["id"], prompt) in pairs for d in docs), "only documents routed to the sub-run's prompt"
        records = outputs(sub)
        assert len(records) == len(docs) and {r["prompt"] for r in records} == {prompt}
        assert {r["id"] for r in records} <= refused
        assert all(pair_of[r["id"]] == (r["source_id"], prompt) for r in records), "each repairs its own record"
    first = [r["id"] for a, _, sub in subs if a == 1 for r in outputs(sub)]
    assert sorted(first) == sorted(refused), "attempt 1: every refused record once, nothing else"

    assert run_cli("reduce", run.root).returncode == 0
    docs = mix_docs(run.default_reduce_dir)
    ids = [d["id"] for d in docs]
    assert len(ids) == len(set(ids)), "each record once in the reduce output"
    assert set(ids) <= set(pair_of), "no record of an unrouted (document, prompt) pair"
    still = sum(row["still_refused"] for row in read_json(run.repair_report_path)["prompts"].values())
    assert len(ids) == len(original) - still and still < len(refused)
    repaired = {d["id"] for d in docs if d["attempt"] > 0}
    assert repaired and repaired <= refused
    assert Counter(d["attempt"] for d in docs)[0] == len(original) - len(refused)
