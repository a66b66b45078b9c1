"""plan.filter's fields against the data: a field no document has fails the plan when the filter removed
documents (a misspelling filters the corpus away), a field some documents lack is warned about."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from hpcsynth.files import read_json

from conftest import run_cli


def write_docs(path: Path, count: int, **fields: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        for i in range(count):
            extra = {k: (v(i) if callable(v) else v) for k, v in fields.items()}
            handle.write(orjson.dumps({"id": f"{path.stem}-{i}", "text": f"Document {i}. " + "words " * 20, **extra})
                         + b"\n")
    return path


def plan(tmp_path: Path, filter_: str, *extra: str, run: str = "run"):
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {{engine: fake}}\nplan: {{group_mb: 0, filter: {orjson.dumps(filter_).decode()}}}\n")
    return run_cli("plan", config, "--run", tmp_path / run, "--input", tmp_path / "in", *extra)


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_misspelled_field_fails_the_plan_naming_the_fields_the_data_has(tmp_path: Path, jobs: str) -> None:
    for part in range(2):
        write_docs(tmp_path / "in" / f"p{part}.jsonl", 100, url=lambda i: f"https://example.org/{i}",
                   score=lambda i: i % 5, metadata={"lang": "en"})
    # Before: urll was taken as absent, its comparison false: 160 of 200 documents filtered away, exit 0.
    proc = plan(tmp_path, 'urll != "https://example.org/5" or score >= 4', "--jobs", jobs)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stdout + proc.stderr
    assert "'plan.filter' reads field 'urll', which none of the 200 documents it judged has, and removed 160 of " \
           "them" in proc.stderr
    assert "the documents have: id, metadata, metadata.lang, score, text, url;" in proc.stderr
    assert not (tmp_path / "run").exists()
    nested = plan(tmp_path, 'metadata.lnag == "en"')
    assert nested.returncode == 2 and "field 'metadata.lnag'" in nested.stderr


def test_a_field_some_documents_lack_is_a_warning(tmp_path: Path) -> None:
    write_docs(tmp_path / "in" / "a.jsonl", 30, score=lambda i: i % 5)
    write_docs(tmp_path / "in" / "b.jsonl", 10)  # no score at all: ragged metadata, not a misspelling
    proc = plan(tmp_path, "score >= 1", "--jobs", "2")
    assert proc.returncode == 0, proc.stderr
    warning = ("warning: plan.filter removed 10 of the 40 documents it judged (25.0%) that lack field 'score' (a "
               "missing field never matches)")
    assert warning in proc.stderr
    summary = read_json(tmp_path / "run" / "plan" / "summary.json")
    assert summary["documents"] == 24 and summary["warnings"] == [warning.removeprefix("warning: ")]


def test_a_field_no_document_has_that_removed_none_is_a_warning(tmp_path: Path) -> None:
    write_docs(tmp_path / "in" / "a.jsonl", 20)
    proc = plan(tmp_path, 'not language == "de"')  # keeps every document whatever the metadata
    assert proc.returncode == 0, proc.stderr
    assert "warning: plan.filter reads field 'language', which none of the 20 documents it judged has (it removed " \
           "none for it); check the field's name" in proc.stderr
    assert read_json(tmp_path / "run" / "plan" / "summary.json")["documents"] == 20


def test_a_parquet_column_the_schema_lacks(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(20)], "text": [f"Parquet text {i}" for i in range(20)],
                             "int_score": [i % 5 for i in range(20)]}), tmp_path / "in" / "a.parquet")
    proc = plan(tmp_path, "int_scor >= 3")
    assert proc.returncode == 2 and "field 'int_scor'" in proc.stderr
    assert "the documents have: id, int_score, text;" in proc.stderr
    assert plan(tmp_path, "int_score >= 3").returncode == 0
