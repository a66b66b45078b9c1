"""Validation over a whole run: `hpcsynth validate` through its real entry point, and reduce dropping,
counting and listing records by reason. The run's outputs are our hand-written samples, committed as a
worker commits them (output file and done marker with its checksum)."""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

import orjson
import pytest

from hpcsynth.files import atomic_write_json, read_json, read_jsonl_zst, sha256_file, write_jsonl_zst
from hpcsynth.generate.pull import pull_shards
from hpcsynth.plan import plan_corpus
from hpcsynth.reduce import reduce_run
from hpcsynth.reduce.validate import reason_code
from hpcsynth.rundir import RunDir

from conftest import fake_config, run_cli, write_corpus

SAMPLES = Path(__file__).parent / "samples"
PREAMBLE = "Sure! Here is the FAQ based on the document:\n\n"


def _text(name: str) -> str:
    if name.startswith("preamble+"):
        return PREAMBLE + (SAMPLES / f"{name[9:]}.md").read_text()
    return (SAMPLES / f"{name}.md").read_text()


# Per prompt, the outputs documents get in turn, with the check each must fail (None: accepted).
VARIANTS = {
    "table": [("table_good", None), ("table_no_separator", "table_no_separator"),
              ("table_no_question", "table_no_question")],
    "faq": [("faq_good", None), ("faq_one_pair", "faq_few_pairs"), ("preamble+faq_good", None)],
    "math": [("math_good", None), ("math_no_final", "math_no_final_answer"), ("loop", "repetition")],
    "tutorial": [("tutorial_good", None), ("tutorial_prose", "tutorial_no_steps")],
}
DOCUMENTS = 8
STRIPPED = 2  # faq documents 2 and 5 get the preamble variant (index % 3 == 2)


def plant(run: RunDir) -> dict[str, dict]:
    """Give every record of the run one of VARIANTS' texts; return the counts validation must find."""
    expected: dict[str, dict] = {}
    for shard in run.shard_ids():
        records = list(read_jsonl_zst(run.output_path(shard)))
        for record in records:
            index = int(record["id"].split("/")[0].split("-")[1]) + 5 * shard  # shard_docs is 5
            name, check = VARIANTS[record["prompt"]][index % len(VARIANTS[record["prompt"]])]
            record["text"] = _text(name)
            counts = expected.setdefault(record["prompt"], {"accepted": 0, "rejected": {}})
            if check:
                counts["rejected"][check] = counts["rejected"].get(check, 0) + 1
            else:
                counts["accepted"] += 1
        write_jsonl_zst(run.output_path(shard), records)
        marker = read_json(run.done_path(shard))
        marker.update(sha256=sha256_file(run.output_path(shard)), bytes=run.output_path(shard).stat().st_size)
        atomic_write_json(run.done_path(shard), marker)
    return expected


@pytest.fixture
def planted(tmp_path: Path, tiny_model: Path) -> tuple[RunDir, dict]:
    corpus = write_corpus(tmp_path / "c.jsonl", DOCUMENTS)
    config = fake_config(corpus, reduce={"tokenizer": str(tiny_model), "min_chars": 1, "original_ratio": 0.0},
                         validate={"action": "drop"})
    run = RunDir(tmp_path / "my run")  # a space: every command line we print must quote it
    plan_corpus(config, run)
    pull_shards(run.root)
    return run, plant(run)


def test_validate_command_reports_per_prompt(planted: tuple[RunDir, dict], tmp_path: Path) -> None:
    run, expected = planted
    proc = run_cli("validate", str(run.root))
    assert proc.returncode == 0, proc.stderr
    report = read_json(run.root / "validate" / "report.json")
    assert report["records"] == DOCUMENTS * 4 and report["shards_checked"] == 2
    for prompt, counts in expected.items():
        row = report["prompts"][prompt]
        assert (row["accepted"], row["rejected"]) == (counts["accepted"], counts["rejected"]), prompt
        assert row["format"] == prompt and row["truncation_rate"] == 0.0
        assert row["preamble_stripped"] == (STRIPPED if prompt == "faq" else 0)
        assert 0 < row["distinct_ngrams"] <= 1 and row["length_ratio"] > 0
        for check, samples in row["samples"].items():
            assert 1 <= len(samples) <= 3 and all(reason_code(s["reason"]) == check for s in samples)
            assert len(samples) == min(3, counts["rejected"][check])
    # The table shows every prompt and the reasons it refused.
    for word in ("faq", "table_no_separator", "math_no_final_answer", "tutorial_no_steps", "repetition"):
        assert word in proc.stdout, word
    # Other thresholds from another file: FAQs of three pairs fail a four-pair minimum.
    stricter = tmp_path / "stricter.yaml"
    stricter.write_text("validate:\n  min_faq_pairs: 4\n")
    own = (run.root / "validate" / "report.json").read_bytes()
    proc = run_cli("validate", str(run.root), "--config", str(stricter))
    assert (run.root / "validate" / "report.json").read_bytes() == own  # a what-if: the card's report stays
    report = read_json(next((run.root / "validate").glob("whatif-*.json")))
    assert proc.returncode == 0 and report["prompts"]["faq"]["accepted"] == 0
    assert report["prompts"]["faq"]["rejected"]["faq_few_pairs"] == DOCUMENTS
    assert report["config"].startswith(str(stricter)) and report["settings"]["min_faq_pairs"] == 4
    stricter.write_text("validate:\n  min_faq_pair: 4\n")
    proc = run_cli("validate", str(run.root), "--config", str(stricter))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "unknown key 'validate.min_faq_pair'" in proc.stderr


def test_validate_skips_a_damaged_output_and_refuses_a_run_with_none_done(planted: tuple[RunDir, dict]) -> None:
    run, _ = planted
    output = run.output_path(1)
    output.write_bytes(output.read_bytes()[:40])  # cut: its checksum no longer matches its marker
    proc = run_cli("validate", str(run.root))
    assert proc.returncode == 0, proc.stderr
    report = read_json(run.root / "validate" / "report.json")
    assert report["shards_checked"] == 1 and report["records"] == 5 * 4
    assert report["shards_skipped"][0]["shard"] == 1 and "its done marker says" in report["shards_skipped"][0]["reason"]
    assert "1 shard(s) not done were left out" in proc.stdout
    # Where the report cannot be written, the table is still shown, then one line says why.
    import shutil

    shutil.rmtree(run.root / "validate")
    (run.root / "validate").write_text("in the way")
    proc = run_cli("validate", str(run.root))
    assert proc.returncode == 2 and "faq_few_pairs" in proc.stdout
    assert proc.stderr.startswith("hpcsynth: error: ") and proc.stderr.count("\n") == 1, proc.stderr
    run.done_path(0).unlink()
    proc = run_cli("validate", str(run.root))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "no shard of" in proc.stderr and "hpcsynth launch" in proc.stderr


def test_reduce_drops_counts_and_lists_by_reason(planted: tuple[RunDir, dict]) -> None:
    run, expected = planted
    report = reduce_run(run).data
    got = {p: {"accepted": v["accepted"], "rejected": v["rejected"]} for p, v in report["validation"].items()}
    assert got == expected and report["validate_action"] == "drop"
    assert report["validation"]["faq"]["preamble_stripped"] == STRIPPED
    accepted = sum(v["accepted"] for v in expected.values())
    assert report["synthetic_documents"] == accepted == report["sequences"]
    assert report["rejected_records"] == DOCUMENTS * 4 - accepted
    rejects = [orjson.loads(line) for line in (run.default_reduce_dir / "rejects.jsonl").read_bytes().splitlines()]
    assert len(rejects) == report["rejected_records"]
    assert all(r["check"] == reason_code(r["reason"]) and r["prompt"] in VARIANTS for r in rejects)
    docs = [orjson.loads(line) for line in (run.default_reduce_dir / "mix.docs.jsonl").read_bytes().splitlines()]
    assert not {d["id"] for d in docs} & {r["id"] for r in rejects}
    # The preamble went; the rest of that FAQ is what was tokenized and exported.
    import pyarrow.parquet as pq

    texts = [t for f in sorted((run.default_reduce_dir / "text").glob("*.parquet"))
             for t in pq.read_table(f, columns=["text"]).column("text").to_pylist()]
    assert len(texts) == accepted and not any(t.startswith("Sure!") for t in texts)
    assert sum(t == _text("faq_good").strip() for t in texts) == STRIPPED  # the preamble went, nothing else
    assert sum(t == _text("faq_good") for t in texts) == expected["faq"]["accepted"] - STRIPPED  # as written
    card = (run.default_reduce_dir / "text" / "README.md").read_text()
    lost = expected["math"]["rejected"]
    assert (f"| math | math | {DOCUMENTS} | {expected['math']['accepted']} | math_no_final_answer "
            f"{lost['math_no_final_answer']}, repetition {lost['repetition']} |") in card
    assert "are not in this dataset" in card


def test_changed_thresholds_redo_the_parts_and_keep_flags_only(planted: tuple[RunDir, dict]) -> None:
    run, expected = planted
    proc = run_cli("reduce", str(run.root))
    assert proc.returncode == 0, proc.stderr
    lost = expected["table"]["rejected"]
    assert (f"table: {sum(lost.values())} of {DOCUMENTS} rejected (table_no_separator {lost['table_no_separator']}"
            in proc.stdout), proc.stdout
    assert "rejects with their reasons:" in proc.stdout
    assert f"hpcsynth validate {shlex.quote(str(run.root))}" in proc.stdout
    config = run.config()
    run.write_config(dataclasses.replace(config, validate=dataclasses.replace(config.validate, action="keep")),
                     run.fingerprint())
    report = reduce_run(run).data  # same reduce dir: parts made under "drop" must not be reused
    assert report["synthetic_documents"] == DOCUMENTS * 4 and report["rejected_records"] == 0
    assert report["validation"]["table"]["flagged"] == expected["table"]["rejected"]
    assert all(not v["rejected"] for v in report["validation"].values())
