"""The whole demo pipeline through the real `hpcsynth` entry point, read back with megatron-core."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from hpcsynth.files import read_jsonl_zst

from conftest import Result, run_cli


# The installed console script when there is one (the real entry point), else the module.
ENTRY = [shutil.which("hpcsynth")] if shutil.which("hpcsynth") else [sys.executable, "-m", "hpcsynth"]


def hpcsynth(*args: str, check: bool = True, real: bool = False) -> subprocess.CompletedProcess | Result:
    """`hpcsynth ARGS`: in this process (run_cli), or with real=True as the installed command."""
    proc = subprocess.run([*ENTRY, *args], capture_output=True, text=True, timeout=600) if real else run_cli(*args)
    if check and proc.returncode != 0:
        raise AssertionError(f"hpcsynth {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    proc = hpcsynth("demo", str(out), "--documents", "24", real=True)  # the whole pipeline through the real command
    assert "training data" in proc.stdout
    (out / "stdout.txt").write_text(proc.stdout)
    return out


def test_demo_summary_says_where_records_are_and_how_to_start_a_project(demo: Path, tmp_path: Path) -> None:
    said = (demo / "stdout.txt").read_text()
    assert f"in {demo / 'run' / 'outputs'}/*.jsonl.zst" in said and "gibberish by design" in said
    assert "hpcsynth config demo > mine.yaml" in said
    # What it says works: the shipped config plus the demo's model plans and runs a corpus of one's own.
    mine = tmp_path / "mine.yaml"
    mine.write_text(hpcsynth("config", "demo").stdout.replace("model:\n", f"model:\n  path: {demo / 'model'}\n"))
    corpus = tmp_path / "my-corpus.jsonl"
    corpus.write_text('{"id": "a", "text": "A first document of my own."}\n')
    hpcsynth("plan", str(mine), "--run", str(tmp_path / "my-run"), "--input", str(corpus))
    assert "1/1 shards done" in hpcsynth("launch", str(tmp_path / "my-run")).stdout


def test_demo_reports_where_files_are(demo: Path) -> None:
    run = demo / "run"
    for name in ("manifest.json", "config.yaml", "fingerprint", "reduce/mix.bin", "reduce/mix.idx",
                 "reduce/report.json"):
        assert (run / name).is_file(), name
    assert not (run / "work").exists() or not any((run / "work").iterdir()), "work dirs are cleaned on commit"


def test_status_json_counts_everything(demo: Path) -> None:
    status = orjson.loads(hpcsynth("status", str(demo / "run"), "--json").stdout)
    assert status["shards"]["done"] == status["shards"]["total"] == 3
    assert status["docs_done"] == 24
    assert status["records_done"] == 24 * 4
    tokens = sum(r["completion_tokens"] for out in sorted((demo / "run" / "outputs").glob("*.jsonl.zst"))
                 for r in read_jsonl_zst(out))
    assert status["tokens_done"] == tokens > 0


def test_megatron_core_reads_every_document_as_tokens_plus_eos(demo: Path) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from tokenizers import Tokenizer

    run = demo / "run"
    report = orjson.loads((run / "reduce" / "report.json").read_bytes())
    tokenizer = Tokenizer.from_file(str(demo / "model" / "tokenizer.json"))
    # A ChatML generator names <|im_end|> (end of turn) as its eos_token; training documents end with
    # the tokenizer's end-of-text instead, and the report says why.
    eos = tokenizer.token_to_id("<|endoftext|>")
    assert report["eos_id"] == eos and report["eos_token"] == "<|endoftext|>"
    assert report["eos_source"] == "end-of-text by name"

    texts = {r["id"]: r["text"] for out in (run / "outputs").glob("*.jsonl.zst") for r in read_jsonl_zst(out)}
    texts.update({d["key"]: d["text"] for shard in (run / "shards").glob("*.jsonl.zst")
                  for d in read_jsonl_zst(shard)})
    index = [orjson.loads(line) for line in (run / "reduce" / "mix.docs.jsonl").read_bytes().splitlines()]

    dataset = IndexedDataset(str(run / "reduce" / "mix"))
    assert len(dataset) == len(index) == report["sequences"]
    kinds = {"synthetic": 0, "original": 0}
    for i, entry in enumerate(index):
        expected = tokenizer.encode(texts[entry["id"]], add_special_tokens=False).ids + [eos]
        assert dataset[i].tolist() == expected, entry
        kinds[entry["kind"]] += 1
    status = orjson.loads(hpcsynth("status", str(run), "--json").stdout)
    assert kinds["synthetic"] == status["records_done"] == report["synthetic_documents"]
    assert kinds["original"] == report["original_documents"] >= 1
    assert int(dataset.sequence_lengths.sum()) == report["tokens"]
    # Seeded shuffle: synthetic and original documents are interleaved, not in two blocks.
    order = [e["kind"] for e in index]
    assert order != sorted(order) and order != sorted(order, reverse=True)


def test_demo_refuses_to_overwrite(demo: Path) -> None:
    proc = hpcsynth("demo", str(demo), check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "already holds a demo run" in proc.stderr


def test_flat_readers_see_the_same_tokens(demo: Path) -> None:
    """OLMo-core and nanoGPT read the .bin as one flat array with np.memmap: EOS separates documents."""
    import numpy as np

    from hpcsynth.reduce.formats.megatron import read_indexed_dataset

    prefix = demo / "run" / "reduce" / "mix"
    flat = np.memmap(prefix.with_name("mix.bin"), dtype=np.uint16, mode="r")
    docs = read_indexed_dataset(prefix)
    assert np.array_equal(flat, np.concatenate(docs))
    eos = orjson.loads((demo / "run" / "reduce" / "report.json").read_bytes())["eos_id"]
    ends = np.flatnonzero(flat == eos)
    assert len(ends) >= len(docs) and ends[-1] == len(flat) - 1


def test_estimate_of_the_demo_run_measures_the_real_tiny_model(demo: Path) -> None:
    # The measured path on a real engine (transformers, the tiny Llama on CPU): lengths from the outputs,
    # the rate from the worker's clock, and the account of what the run cost.
    data = orjson.loads(hpcsynth("estimate", str(demo / "run"), "--price", "1", "--json").stdout)
    assert data["unit"] == "worker" and data["rows"]
    for row in data["rows"]:
        assert row["length_source"].startswith("measured: ") and row["rate_source"].startswith("measured: ")
        assert row["tokens_per_record"] > 0 and row["tokens_per_s"] > 0 and row["documents"] == 24
    account = data["account"]
    assert account["tokens_committed"] == account["tokens_generated"] > 0
    assert account["hours"]["hours"] > account["wasted"]["startup"]["hours"] > 0  # the model load is measured
    # The demo's own dataset card: the real model by its directory's name, no path of this machine on it.
    card = (demo / "run" / "reduce" / "README.md").read_text()
    assert "| generator | `model (a local directory)` |" in card and str(demo) not in card
    assert "## Cost" in card and "CPU worker-hours" in card


def test_demo_refuses_a_folder_that_holds_the_users_files(tmp_path: Path) -> None:
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "my-corpus.jsonl").write_text('{"id": "a", "text": "mine"}\n')
    result = run_cli("demo", str(mine))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "is not empty (my-corpus.jsonl) and not a demo's" in result.stderr
    assert sorted(p.name for p in mine.iterdir()) == ["my-corpus.jsonl"], "nothing written beside the user's file"
