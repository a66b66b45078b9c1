"""Output formats read by readers we did not write; tokenizer choices; the Parquet text export."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import orjson
import pytest

from hpcsynth.errors import ConfigError
from hpcsynth.files import atomic_write_json, read_json, read_jsonl_zst, write_jsonl_zst
from hpcsynth.reduce import reduce_run
from hpcsynth.reduce.formats.megatron import IndexedDatasetWriter, read_indexed_dataset
from hpcsynth.reduce.tokenize import load_tokenizer
from hpcsynth.rundir import RunDir

from conftest import SHARED_DATA
import subprocess

from test_demo import ENTRY
from test_pipeline import make_run


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model: Path) -> RunDir:
    return make_run(tmp_path_factory.mktemp("formats"), tiny_model, docs=16)


def with_reduce(run: RunDir, **changes) -> RunDir:
    config = run.config()
    run.write_config(dataclasses.replace(config, reduce=dataclasses.replace(config.reduce, **changes)),
                     run.fingerprint())
    return run


@pytest.fixture
def megatron(run: RunDir, tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    out = tmp_path_factory.mktemp("megatron")
    reduce_run(with_reduce(run, format="megatron", max_file_mb=0), out)
    return out, read_indexed_dataset(out / "mix")


def test_datatrove_reader_sees_the_same_documents(run: RunDir, megatron, tmp_path: Path) -> None:
    from datatrove.utils.dataset import DatatroveFolderDataset

    report = reduce_run(with_reduce(run, format="datatrove"), tmp_path).data
    docs = megatron[1]
    flat = np.concatenate(docs)
    seq_len = 16
    dataset = DatatroveFolderDataset(str(tmp_path), seq_len=seq_len, filename_pattern="*.ds", recursive=False,
                                     token_size=2)
    windows = [dataset[i] for i in range(len(dataset))]
    # Back-to-back windows of seq_len + 1 tokens: together they are the file, minus a short tail.
    joined = np.concatenate([w["input_ids"].numpy() for w in windows])
    assert np.array_equal(joined, flat[: len(joined)]) and len(joined) > len(flat) - seq_len - 1
    # .ds.index: each document's end as a cumulative token count, uint64, no leading 0.
    ends = np.fromfile(tmp_path / "mix.ds.index", dtype="<u8")
    assert np.array_equal(ends, np.cumsum([len(d) for d in docs]))
    meta = (tmp_path / "mix.ds.metadata").read_text().splitlines()
    assert meta[0].endswith("|2") and int(meta[1]) == report["tokens"] == len(flat)


def test_numpy_and_size_cap(run: RunDir, megatron, tmp_path: Path) -> None:
    flat = np.concatenate(megatron[1])
    report = reduce_run(with_reduce(run, format="numpy"), tmp_path / "npy").data
    array = np.load(tmp_path / "npy" / "mix.npy", mmap_mode="r")
    assert array.dtype == np.uint16 and np.array_equal(array, flat) and report["tokens"] == len(flat)
    # A cap of 10 KB over ~11 KB of uint16 tokens: numbered files, each whole, together the same tokens.
    capped = tmp_path / "capped"
    report = reduce_run(with_reduce(run, format="megatron", max_file_mb=0.01), capped).data
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    names = [p.rsplit("/", 1)[1] for p in report["prefixes"]]
    assert len(names) >= 2 and names[:2] == ["mix-00000", "mix-00001"] and not (capped / "mix.bin").exists()
    assert all((capped / f"{n}.bin").stat().st_size <= 0.01 * (1 << 20) for n in names)
    parts = [IndexedDataset(str(capped / n)) for n in names]
    assert np.array_equal(np.concatenate([d[i] for d in parts for i in range(len(d))]), flat)
    with_reduce(run, max_file_mb=0)
    assert "is whole" in subprocess.run([*ENTRY, "verify", str(capped)], capture_output=True, text=True).stdout


def test_megatron_writer_streams_byte_identical_to_the_builder(tmp_path: Path) -> None:
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from hpcsynth.reduce.formats import megatron as module

    rng = np.random.default_rng(1)
    docs = [rng.integers(0, 70000, size=int(n)) for n in rng.integers(1, 50, size=37)]
    old_block, module.BLOCK = module.BLOCK, 5  # many index blocks: the streaming seams are exercised
    try:
        ours = IndexedDatasetWriter(tmp_path / "ours", np.int32)
        for doc in docs:
            ours.add(doc)
        ours.finish()
    finally:
        module.BLOCK = old_block
    theirs = IndexedDatasetBuilder(str(tmp_path / "theirs.bin"), dtype=np.int32)
    for doc in docs:
        theirs.add_document(torch.tensor(doc), [len(doc)])
    theirs.finalize(str(tmp_path / "theirs.idx"))
    for ext in ("bin", "idx"):
        assert (tmp_path / f"ours.{ext}").read_bytes() == (tmp_path / f"theirs.{ext}").read_bytes(), ext
    assert not list(tmp_path.glob("*.tmp"))


def test_chatml_generator_ends_documents_with_end_of_text(tiny_model: Path, tmp_path: Path) -> None:
    config = json.loads((tiny_model / "tokenizer_config.json").read_text())
    assert config["eos_token"] == "<|im_end|>"  # the generator's own end of turn
    tok = load_tokenizer(tiny_model)
    assert tok.eos_token == "<|endoftext|>" and tok.eos_source == "end-of-text by name"
    assert load_tokenizer(tiny_model, "<|im_end|>").eos_token == "<|im_end|>"  # asked for by name: kept
    # A vocabulary with no end-of-text token at all is one clear line.
    data = json.loads((tiny_model / "tokenizer.json").read_text())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "<|endoftext|>"]
    data["model"]["vocab"].pop("<|endoftext|>", None)
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    with pytest.raises(ConfigError, match="cannot tell its end-of-text token.*set reduce.eos_token"):
        load_tokenizer(tmp_path)


def test_parity_gate_refuses_a_tokenizer_gigatoken_encodes_differently(run: RunDir, tmp_path: Path) -> None:
    pytest.importorskip("gigatoken")
    path = SHARED_DATA / "tokenizers" / "gpt-neox-20b.tokenizer.json"
    if not path.is_file():
        pytest.skip("shared tokenizers not present")
    same = reduce_run(with_reduce(run, backend="auto"), tmp_path / "same", tokenizer=str(path)).data
    assert same["backend"] == "gigatoken" and not same["backend_note"]
    # An added non-special token: `tokenizers` matches it inside text, gigatoken 0.10 does not.
    data = json.loads(path.read_text())
    data["added_tokens"].append({"id": 100, "content": "word", "single_word": False, "lstrip": False,
                                 "rstrip": False, "normalized": False, "special": False})
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps(data))
    gated = reduce_run(run, tmp_path / "gated", tokenizer=str(odd)).data
    assert gated["backend"] == "tokenizers" and "encodes odd.json differently" in gated["backend_note"]
    plain = reduce_run(with_reduce(run, backend="tokenizers"), tmp_path / "plain", tokenizer=str(odd)).data
    assert (tmp_path / "gated" / "mix.bin").read_bytes() == (tmp_path / "plain" / "mix.bin").read_bytes()
    assert plain["backend"] == "tokenizers"
    with_reduce(run, backend="auto")


def rows_rewritten(records: list[dict]) -> set[str]:
    return {r["id"] for r in records}


def test_text_export_loads_with_datasets_and_keeps_provenance(tmp_path: Path, tiny_model: Path) -> None:
    datasets = pytest.importorskip("datasets")
    run = make_run(tmp_path, tiny_model, docs=6)
    # A planner that attaches provenance: records carry a "meta" dict (done marker rewritten to match).
    shard = 0
    records = [dict(r, meta={"url": f"u{i}", "score": i}) for i, r in enumerate(read_jsonl_zst(run.output_path(shard)))]
    _, digest = write_jsonl_zst(run.output_path(shard), records)
    marker = read_json(run.done_path(shard))
    atomic_write_json(run.done_path(shard), {**marker, "sha256": digest,
                                             "bytes": run.output_path(shard).stat().st_size})
    report = reduce_run(run).data
    folder = run.default_reduce_dir / "text"
    card = (folder / "README.md").read_text()
    assert card.startswith("---\n") and "    path: train-*.parquet" in card.split("\n---\n")[0]  # YAML front matter
    ds = datasets.load_dataset("parquet", data_dir=str(folder), split="train")
    assert len(ds) == report["synthetic_documents"] == report["text_export"]["rows"]
    assert {"id", "text", "prompt", "source_id", "meta"} <= set(ds.column_names)
    rows = {row["id"]: row for row in ds}
    assert orjson.loads(rows[records[1]["id"]]["meta"]) == {"url": "u1", "score": 1}
    assert rows[records[1]["id"]]["source_id"] == records[1]["source_id"] and rows[records[1]["id"]]["text"]
    # The planner's own provenance (source file and line) rides along on every other record.
    assert all(orjson.loads(row["meta"]).get("source") for row in ds if row["id"] not in rows_rewritten(records))


def test_verify_reads_every_format(run: RunDir, tmp_path: Path) -> None:
    for fmt, cap in (("datatrove", 0), ("numpy", 0.01), ("megatron", 0.01)):
        out = tmp_path / f"{fmt}-{cap}"
        reduce_run(with_reduce(run, format=fmt, max_file_mb=cap), out)
        proc = subprocess.run([*ENTRY, "verify", str(out)], capture_output=True, text=True)
        assert proc.returncode == 0 and "is whole" in proc.stdout, (fmt, proc.stdout)
    with_reduce(run, format="megatron", max_file_mb=0)


def test_each_part_checks_the_fast_backend_again(tmp_path: Path, tiny_model: Path) -> None:
    """The gate's sample (the first shard) encodes alike; a later shard holds text gigatoken encodes
    differently: that part falls back to tokenizers, and the output equals a tokenizers-only reduce."""
    pytest.importorskip("gigatoken")
    path = SHARED_DATA / "tokenizers" / "gpt-neox-20b.tokenizer.json"
    if not path.is_file():
        pytest.skip("shared tokenizers not present")
    data = json.loads(path.read_text())
    data["added_tokens"].append({"id": 100, "content": "zebra", "single_word": False, "lstrip": False,
                                 "rstrip": False, "normalized": False, "special": False})
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps(data))
    corpus = tmp_path / "c.jsonl"
    texts = ["Plain text about rivers and hills, nothing odd here at all."] * 2 + \
        ["A zebra crossed the road; zebras and more zebra stripes."] * 2
    corpus.write_bytes(b"".join(orjson.dumps({"id": f"d{i}", "text": t}) + b"\n" for i, t in enumerate(texts)))
    from conftest import fake_config
    from hpcsynth.generate.pull import pull_shards
    from hpcsynth.plan import plan_corpus

    config = fake_config(corpus, reduce={"tokenizer": str(odd), "min_chars": 1, "part_shards": 1})
    config = dataclasses.replace(config, plan=dataclasses.replace(config.plan, shard_docs=2))
    run = RunDir(tmp_path / "run")
    plan_corpus(config, run)
    pull_shards(run.root)
    report = reduce_run(run, tmp_path / "auto").data
    assert report["backend"] == "gigatoken+tokenizers" and "differed" in report["backend_note"]
    with_reduce(run, backend="tokenizers")
    reduce_run(run, tmp_path / "plain")
    assert (tmp_path / "auto" / "mix.bin").read_bytes() == (tmp_path / "plain" / "mix.bin").read_bytes()


def test_a_vocabulary_past_65536_ids_is_written_wide_in_every_format(run: RunDir, tmp_path: Path) -> None:
    """dtype from the vocabulary size: with ids above 65,535 (Llama-3, Gemma have 128k-256k) every format
    holds them whole (Megatron int32, .ds and .npy uint32), where uint16 would wrap them silently."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from datatrove.utils.dataset import DatatroveFolderDataset
    from tokenizers import Tokenizer, models, pre_tokenizers

    from test_reduce import _texts

    # Fillers take ids 0-69,999, so every word of the corpus and of the fake engine's text lands above them.
    vocab = {f"filler{i}": i for i in range(70000)}
    words = {w for t in _texts(run).values() for w in re.findall(r"\w+|[^\w\s]+", t)}
    for word in ["[UNK]", "<|endoftext|>", *sorted(words)]:
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens(["<|endoftext|>"])
    path = tmp_path / "wide.json"
    tokenizer.save(str(path))
    eos = tokenizer.token_to_id("<|endoftext|>")
    texts = _texts(run)
    try:
        outputs = {}
        for fmt in ("megatron", "datatrove", "numpy"):
            out = tmp_path / fmt
            outputs[fmt] = reduce_run(with_reduce(run, format=fmt), out, tokenizer=str(path)).data
            proc = subprocess.run([*ENTRY, "verify", str(out)], capture_output=True, text=True)
            assert proc.returncode == 0 and "is whole" in proc.stdout, (fmt, proc.stdout)
    finally:
        with_reduce(run, format="megatron")
    assert [outputs[f]["dtype"] for f in outputs] == ["int32", "uint32", "uint32"]
    index = [orjson.loads(l) for l in (tmp_path / "megatron" / "mix.docs.jsonl").read_bytes().splitlines()]
    expected = [tokenizer.encode(texts[e["id"]], add_special_tokens=False).ids + [eos] for e in index]
    flat = np.concatenate([np.asarray(d, dtype=np.int64) for d in expected])
    assert flat.max() >= 70000 and not (flat == vocab["[UNK]"]).any()
    megatron = IndexedDataset(str(tmp_path / "megatron" / "mix"))
    assert [megatron[i].tolist() for i in range(len(megatron))] == expected
    ds = DatatroveFolderDataset(str(tmp_path / "datatrove"), seq_len=16, filename_pattern="*.ds", recursive=False,
                                token_size=4)
    joined = np.concatenate([ds[i]["input_ids"].numpy() for i in range(len(ds))])
    assert np.array_equal(joined, flat[: len(joined)]) and len(joined) > len(flat) - 17
    assert np.array_equal(np.load(tmp_path / "numpy" / "mix.npy"), flat)
