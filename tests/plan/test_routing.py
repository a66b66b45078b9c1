"""Routing documents to prompts by their metadata (`prompts: [{name: faq, when: "int_score >= 3"}, math]`):
the plan judges each condition once per document and writes the routed prompts into the shard; launch
generates exactly those (document, prompt) pairs; status, estimate, validate and the mix count only them; a
document routed to no prompt is counted and stays an original. The corpus is Parquet with FineWeb-Edu's
`int_score` column, built here with pyarrow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from hpcsynth.config import config_from_dict, config_to_dict, fingerprint, load_config
from hpcsynth.files import read_json, read_jsonl_zst
from hpcsynth.rundir import RunDir

from conftest import REPO, run_cli

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

# faq on the good documents, math on the best and the worst, table on the worst: int_score 2 goes nowhere.
CONDITIONS = {"faq": "int_score >= 3", "math": "int_score == 5 or int_score <= 1", "table": "int_score <= 1"}
SELECTS = {"faq": lambda s: s >= 3, "math": lambda s: s == 5 or s <= 1, "table": lambda s: s <= 1}
PROMPTS = ("faq", "math", "table")
PLAIN = ("faq", "math", "table", "tutorial")  # tutorial: a plain name, every document


def selected(prompt: str, score: int) -> bool:
    return prompt not in SELECTS or SELECTS[prompt](score)


def write_corpus(folder: Path, files: int = 2, per_file: int = 30) -> dict[str, int]:
    """Parquet files of documents with an int_score (0-5); returns {id: int_score} of the planned ones (the
    second file repeats one id of the first, which keep_first drops)."""
    folder.mkdir(parents=True, exist_ok=True)
    scores: dict[str, int] = {}
    for f in range(files):
        ids = [f"f{f}-d{i}" for i in range(per_file)]
        if f == 1:
            ids[3] = "f0-d7"  # a duplicate id: its shard document (and routed pairs) are removed after the scan
        rows = [(doc_id, (i * 7 + f) % 6) for i, doc_id in enumerate(ids)]
        texts = [f"Document {doc_id} has quality {score}.\n" + " ".join(f"word{(i * 13 + j) % 89}" for j in range(40))
                 for i, (doc_id, score) in enumerate(rows)]
        pq.write_table(pa.table({"id": ids, "text": texts, "int_score": [s for _, s in rows]}),
                       folder / f"part-{f}.parquet", row_group_size=7)
        for doc_id, score in rows:
            scores.setdefault(doc_id, score)
    return scores


def config_text(prompts: tuple[str, ...] = PROMPTS, **extra: str) -> str:
    entries = ", ".join(f'{{name: {p}, when: "{CONDITIONS[p]}"}}' if p in CONDITIONS else p for p in prompts)
    text = (f"prompts: [{entries}]\n"
            "model: {engine: fake, path: fake-model}\n"
            "plan: {shard_docs: 9, group_mb: 0}\n"
            "worker: {flush_interval_s: 0.05, heartbeat_interval_s: 0.05}\n")
    return text + "".join(f"{key}: {value}\n" for key, value in extra.items())


def expected_pairs(scores: dict[str, int], prompts: tuple[str, ...] = PROMPTS) -> set[tuple[str, str]]:
    return {(doc_id, p) for doc_id, score in scores.items() for p in prompts if selected(p, score)}


def output_records(run: RunDir) -> list[dict]:
    return [r for shard in run.shard_ids() for r in read_jsonl_zst(run.output_path(shard))]


def planned(tmp_path: Path, *args: str, config: str | None = None, name: str = "run") -> tuple[RunDir, dict, object]:
    scores = write_corpus(tmp_path / "in")
    path = tmp_path / f"{name}.yaml"
    path.write_text(config or config_text())
    proc = run_cli("plan", path, "--run", tmp_path / name, "--input", tmp_path / "in", *args)
    return RunDir(tmp_path / name), scores, proc


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_routed_prompt_runs_on_exactly_the_documents_its_condition_selects(tmp_path: Path, jobs: str) -> None:
    run, scores, proc = planned(tmp_path, "--jobs", jobs)
    assert proc.returncode == 0, proc.stderr
    expected = expected_pairs(scores)
    unrouted = sum(1 for s in scores.values() if s == 2)
    assert 0 < unrouted and len(expected) < len(scores) * len(PROMPTS)
    # The plan: each shard document lists its prompts and keeps the field that routed it; rows and header count.
    docs = [d for shard in run.shard_ids() for d in read_jsonl_zst(run.shard_path(shard))]
    assert len(docs) == len(scores), "the duplicate id was dropped, the document routed to nothing kept"
    for doc in docs:
        score = doc["meta"]["fields"]["int_score"]
        assert score == scores[doc["id"]] and doc["prompts"] == [p for p in PROMPTS if selected(p, score)]
    rows = list(run.manifest_rows())
    assert [r["pairs"] for r in rows] == [sum(len(d["prompts"]) for d in docs if d["key"].startswith(f"{r['id']:06d}-"))
                                          for r in rows]
    routing = run.manifest()["routing"]
    assert routing["pairs"] == sum(r["pairs"] for r in rows) == len(expected)
    assert routing["unrouted"] == unrouted
    assert routing["by_prompt"]["faq"]["documents"] == sum(1 for s in scores.values() if s >= 3)
    summary = read_json(run.plan_dir / "summary.json")
    assert summary["routing"]["unrouted"] == unrouted and "routed to no prompt" in proc.stdout

    launched = run_cli("launch", run.root)
    assert launched.returncode == 0, launched.stderr
    records = output_records(run)
    got = [(r["source_id"], r["prompt"]) for r in records]
    assert len(got) == len(set(got)) and set(got) == expected
    assert all(r["meta"]["fields"]["int_score"] == scores[r["source_id"]] for r in records)
    assert sum(read_json(run.done_path(s))["records"] for s in run.shard_ids()) == len(expected)


def test_the_plan_is_the_same_for_any_jobs(tmp_path: Path) -> None:
    one, _, first = planned(tmp_path, "--jobs", "1", name="one")
    two, _, second = planned(tmp_path, "--jobs", "2", name="two")
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert one.manifest_rows_path.read_bytes() == two.manifest_rows_path.read_bytes()
    assert one.manifest()["routing"] == two.manifest()["routing"]


def test_status_estimate_and_validate_count_only_the_routed_pairs(tmp_path: Path) -> None:
    # With a plain name beside the routed prompts: tutorial runs on every document.
    run, scores, proc = planned(tmp_path, config=config_text(PLAIN, validate="{action: keep}"))
    assert proc.returncode == 0, proc.stderr
    expected = expected_pairs(scores, PLAIN)
    by_prompt = {p: sum(1 for _, q in expected if q == p) for p in PLAIN}
    assert by_prompt["tutorial"] == len(scores) and run.manifest()["routing"]["unrouted"] == 0

    status = json.loads(run_cli("status", run.root, "--json").stdout)
    assert status["records_expected"] == len(expected) and status["records_done"] == 0
    estimate = run_cli("estimate", run.root, "--json", "--output-tokens", "10", "--tokens-per-second", "100")
    assert estimate.returncode == 0, estimate.stderr
    rows = json.loads(estimate.stdout)["rows"]
    assert {r["prompt"]: r["documents"] for r in rows} == by_prompt
    assert {r["prompt"]: r["tokens"] for r in rows} == {p: 10.0 * n for p, n in by_prompt.items()}

    assert run_cli("launch", run.root).returncode == 0
    status = json.loads(run_cli("status", run.root, "--json").stdout)
    assert status["records_expected"] == status["records_done"] == len(expected)
    assert "records {0:,}/{0:,}".format(len(expected)) in run_cli("status", run.root).stdout
    validated = run_cli("validate", run.root)
    assert validated.returncode == 0, validated.stderr
    report = read_json(run.validate_report_path)
    assert report["records"] == len(expected)
    assert {p: row["records"] for p, row in report["prompts"].items()} == by_prompt


def test_a_reduce_mixes_the_routed_records_and_keeps_unrouted_documents_as_originals(tmp_path: Path,
                                                                                     tokenizer: Path) -> None:
    # Originals weigh far more than the synthetic text: the mix shrinks to the originals there are and takes
    # every one of them, so each planned document shows, the ones routed to no prompt too.
    mix = ('{tokenizer: "%s", min_chars: 1, mix: {synthetic: {"*": 1.0}, too_few: shrink, '
           'sources: [{name: run_originals, weight: 20.0}]}}' % tokenizer)
    run, scores, proc = planned(tmp_path, config=config_text(validate="{action: keep}", reduce=mix))
    assert proc.returncode == 0, proc.stderr
    assert run_cli("launch", run.root).returncode == 0
    reduced = run_cli("reduce", run.root)
    assert reduced.returncode == 0, reduced.stderr
    out = run.default_reduce_dir
    text = [row for path in sorted((out / "text").glob("*.parquet")) for row in pq.read_table(path).to_pylist()]
    exported = {(row["source_id"], row["prompt"]) for row in text}
    assert len(text) == len(exported) and exported == expected_pairs(scores), "the text holds the routed pairs only"
    docs = [orjson.loads(line) for line in (out / "mix.docs.jsonl").read_bytes().splitlines()]
    synthetic = {(d["source_id"], d["prompt"]) for d in docs if d["kind"] == "synthetic"}
    assert synthetic and synthetic <= expected_pairs(scores)
    originals = {d["source_id"] for d in docs if d["kind"] == "original"}
    assert originals == set(scores), "every planned document is an original, those routed to no prompt too"
    assert {doc_id for doc_id, s in scores.items() if s == 2} <= originals


@pytest.mark.parametrize("condition, why", [
    ("int_score => 3", "cannot read '=> 3' at column 10"),
    ("int_score ~ 3", "cannot read '~ 3' at column 10"),
    ("int_score >=", "it ends too early"),
])
def test_a_bad_condition_is_one_line_naming_its_entry(tmp_path: Path, condition: str, why: str) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f'model: {{engine: fake}}\nprompts:\n  - math\n  - {{name: faq, when: "{condition}"}}\n')
    proc = run_cli("plan", config, "--run", tmp_path / "run", "--input", tmp_path / "nowhere")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"{config} line 4: 'prompts[1].when' is not a valid condition ({why})" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_a_misspelled_field_in_a_condition_fails_the_plan_naming_the_fields_the_data_has(tmp_path: Path) -> None:
    text = config_text().replace(CONDITIONS["faq"], "int_scor >= 3")
    run, scores, proc = planned(tmp_path, config=text)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert (f"'prompts[0].when' reads field 'int_scor', which none of the {len(scores) + 1} documents it judged has, "
            f"and kept {len(scores) + 1} of them from prompt 'faq'") in proc.stderr
    assert "the documents have: id, int_score, text;" in proc.stderr
    assert not run.root.exists()


def test_the_condition_is_in_the_fingerprint_only_when_set() -> None:
    import hashlib

    plain = config_from_dict({"prompts": ["faq", "math"]})
    routed = config_from_dict({"prompts": [{"name": "faq", "when": "int_score >= 3"}, "math"]})
    other = config_from_dict({"prompts": [{"name": "faq", "when": "int_score >= 4"}, "math"]})
    hashes = {"faq": "x", "math": "y"}
    assert len({fingerprint(c, hashes) for c in (plain, routed, other)}) == 3
    # Without a condition the fingerprint is the one computed before routing existed (prompts: a list of names).
    data = config_to_dict(plain)
    del data["sampling"]["extra"], data["plan"]["skip_bad_files"]
    payload = {key: data[key] for key in ("prompts", "plan", "model", "sampling")}
    payload["prompt_templates"] = hashes
    before = hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert fingerprint(plain, hashes) == before
    assert config_to_dict(routed)["prompts"] == [{"name": "faq", "when": "int_score >= 3"}, "math"]
    assert config_from_dict(config_to_dict(routed)) == routed, "the resolved config reads back the same"


def test_shipped_nemotron_cc_config_routes_by_int_score() -> None:
    config = load_config(REPO / "configs" / "nemotron-cc.yaml")
    assert config.prompts == ("wrap_wikipedia", "diverse_qa", "distill", "extract_knowledge", "knowledge_list")
    assert config.prompt_when == {"wrap_wikipedia": "int_score <= 2", "diverse_qa": "int_score >= 3",
                                  "distill": "int_score >= 3", "extract_knowledge": "int_score >= 3",
                                  "knowledge_list": "int_score >= 3"}
    lines = (REPO / "configs" / "nemotron-cc.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if "when:" in line:  # each condition says where it comes from and how the buckets map, just above it
            assert lines[i - 1].lstrip().startswith("# Nemotron-CC:") and "int_score" in lines[i - 1], line


def test_kill_9_mid_shard_then_relaunch_gives_the_routed_pairs_exactly_once(tmp_path: Path) -> None:
    run, scores, proc = planned(tmp_path)
    assert proc.returncode == 0, proc.stderr
    counts = tmp_path / "generated.txt"
    env = {**os.environ, "HPCSYNTH_FAKE_FAULTS": json.dumps({"delay_s": 0.02, "count_to": str(counts)})}
    worker = subprocess.Popen([sys.executable, "-m", "hpcsynth.generate.pull", str(run.root)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    try:  # kill it once some shard is committed and another holds records but is not committed
        while time.monotonic() < deadline:
            logs = [p for p in run.work_root.glob("*/records.jsonl") if len(p.read_bytes().splitlines()) > 2]
            if run.done_ids() and logs:
                break
            assert worker.poll() is None, "the worker finished before it could be killed"
            time.sleep(0.01)
        else:
            pytest.fail("the worker never reached the middle of a shard")
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    assert not all(run.is_done(s, run.fingerprint()) for s in run.shard_ids())
    again = run_cli("launch", run.root, env={"HPCSYNTH_FAKE_FAULTS": json.dumps({"count_to": str(counts)})})
    assert again.returncode == 0, again.stderr
    records = output_records(run)
    got = [(r["source_id"], r["prompt"]) for r in records]
    expected = expected_pairs(scores)
    assert len(got) == len(set(got)) and set(got) == expected, "every routed pair once, no other"
    key_of = {r["id"]: (r["source_id"], r["prompt"]) for r in records}
    generated = counts.read_text().split()
    assert {key_of[record_id] for record_id in generated} == expected, "no pair outside the routing was generated"


def test_launch_refuses_a_config_routing_otherwise_before_writing_it(tmp_path: Path) -> None:
    """`launch --config NEW --force` with other conditions: refused in one line, and the run's config.yaml
    stays as it was (it used to be replaced first, then every worker refused the run)."""
    run, _, proc = planned(tmp_path)
    assert proc.returncode == 0, proc.stderr
    before = run.config_path.read_bytes()
    other = tmp_path / "other.yaml"
    other.write_text(config_text().replace("int_score >= 3", "int_score >= 4"))
    result = run_cli("launch", run.root, "--config", other, "--force", "--progress", "0")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "routing is decided at plan time" in result.stderr and "int_score >= 4" in result.stderr
    assert run.config_path.read_bytes() == before
    assert run_cli("launch", run.root, "--progress", "0").returncode == 0  # the run itself is untouched
