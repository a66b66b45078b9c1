"""Reduce: validation, mixing ratio, and output files that other readers agree with."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import orjson
import pytest

from hpcsynth.errors import ConfigError, RunError
from hpcsynth.reduce.formats.megatron import IndexedDatasetWriter, read_indexed_dataset
from hpcsynth.plan import plan_corpus
from hpcsynth.generate.pull import pull_shards
from hpcsynth.reduce import reduce_run
from hpcsynth.rundir import RunDir

from conftest import SHARED_DATA, fake_config, write_corpus


@pytest.fixture
def finished(tmp_path: Path, tiny_model: Path) -> RunDir:
    corpus = write_corpus(tmp_path / "c.jsonl", 12)
    config = fake_config(corpus, reduce={"tokenizer": str(tiny_model), "min_chars": 1})
    run = RunDir(tmp_path / "run")
    plan_corpus(config, run)
    pull_shards(run.root)
    return run


def test_megatron_writer_matches_megatron_core_builder(tmp_path: Path) -> None:
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 4000, size=int(n)).tolist() for n in rng.integers(1, 200, size=50)]
    ours = IndexedDatasetWriter(tmp_path / "ours", np.uint16)
    theirs = IndexedDatasetBuilder(str(tmp_path / "theirs.bin"), dtype=np.uint16)
    for doc in docs:
        ours.add(doc)
        theirs.add_document(torch.tensor(doc), [len(doc)])
    ours.finish()
    theirs.finalize(str(tmp_path / "theirs.idx"))
    for ext in ("bin", "idx"):
        assert (tmp_path / f"ours.{ext}").read_bytes() == (tmp_path / f"theirs.{ext}").read_bytes(), ext
    assert [d.tolist() for d in read_indexed_dataset(tmp_path / "ours")] == docs


def test_mix_ratio_is_met_and_reported(finished: RunDir) -> None:
    """reduce.original_ratio is the simple form of reduce.mix: every prompt pooled, run_originals at the ratio."""
    config = finished.config()
    _rewrite_config(finished, dataclasses.replace(config, reduce=dataclasses.replace(config.reduce,
                                                                                     original_ratio=0.4)))
    report = reduce_run(finished).data
    assert report["synthetic_documents"] == 12 * 4  # the synthetic text sets the total: all of it is in
    assert [(r["name"], r["kind"], r["prompt"], r["weight"]) for r in report["mix"]["sources"]] == [
        ("synthetic", "synthetic", None, 1.0), ("run_originals", "original", None, 0.4)]
    assert report["mix"]["policy"]["form"] == "reduce.original_ratio" and report["original_ratio_target"] == 0.4
    # Chosen across the run (not shard by shard, which overshot by up to a document per shard): off
    # the target by at most one original document.
    longest = max(entry["tokens"] for entry in _index(finished) if entry["kind"] == "original")
    assert abs(report["original_tokens"] - 0.4 * report["synthetic_tokens"]) <= longest
    assert not report["original_pool_exhausted"]
    assert report["original_ratio"] == pytest.approx(report["original_tokens"] / report["synthetic_tokens"], 1e-3)


def test_small_pool_is_reported_exhausted(finished: RunDir) -> None:
    report = reduce_run(finished).data  # ratio 1.0, but 12 short documents cannot match 48 outputs
    assert report["original_pool_exhausted"] and report["original_documents"] == 12
    # The default too_few (shrink) keeps the ratio: fewer rephrasings go in, and the command says so.
    assert report["synthetic_documents"] < 48
    assert report["original_ratio"] == pytest.approx(1.0, abs=0.05)
    assert any("run_originals has" in n and "shrank" in n for n in report["mix"]["policy"]["notes"])


def test_ratio_zero_means_synthetic_only(finished: RunDir, tmp_path: Path) -> None:
    config = finished.config()
    _rewrite_config(finished, dataclasses.replace(config, reduce=dataclasses.replace(config.reduce,
                                                                                     original_ratio=0.0)))
    report = reduce_run(finished, tmp_path / "out").data
    assert report["original_documents"] == 0 and report["sequences"] == 48


def test_unfinished_run_needs_partial(finished: RunDir) -> None:
    finished.done_path(1).unlink()
    with pytest.raises(RunError, match=r"1 of 3 shards are not ready .* --partial"):
        reduce_run(finished)
    report = reduce_run(finished, partial=True).data
    assert report["shards_used"] == 2 and report["text_export"]["rows"] == 7 * 4
    assert (finished.default_reduce_dir / "mix-partial.json").is_file()


def test_corrupt_output_is_detected(finished: RunDir) -> None:
    path = finished.output_path(2)
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(RunError, match="bytes, its done marker says"):  # a stat tells a cut file, before any part
        reduce_run(finished)


def test_bad_tokenizer_path_is_one_clear_error(finished: RunDir, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--tokenizer: no tokenizer.json at"):
        reduce_run(finished, tokenizer=str(tmp_path / "nowhere"))


@pytest.mark.parametrize("name, eos, bos", [("gpt-neox-20b", "<|endoftext|>", None), ("llama2", "</s>", "<s>")])
def test_real_tokenizers_round_trip(finished: RunDir, tmp_path: Path, name: str, eos: str, bos) -> None:
    """Each sequence is the tokenizer's own encoding of its text (BOS as its post-processor adds it,
    Llama-2's <s> included), then EOS looked up by name (the OLMo NeoX variant has it at 50279)."""
    path = SHARED_DATA / "tokenizers" / f"{name}.tokenizer.json"
    if not path.is_file():
        pytest.skip("shared tokenizers not present")
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from tokenizers import Tokenizer

    report = reduce_run(finished, tmp_path / name, tokenizer=str(path)).data
    tokenizer = Tokenizer.from_file(str(path))
    eos_id = tokenizer.token_to_id(eos)
    assert report["eos_token"] == eos and report["eos_id"] == eos_id and report["dtype"] == "uint16"
    assert report["bos_ids"] == ([tokenizer.token_to_id(bos)] if bos else [])
    texts = _texts(finished)
    index = [orjson.loads(l) for l in (tmp_path / name / "mix.docs.jsonl").read_bytes().splitlines()]
    dataset = IndexedDataset(str(tmp_path / name / "mix"))
    assert len(dataset) == len(index) == report["sequences"]
    for i, entry in enumerate(index):
        expected = tokenizer.encode(texts[entry["id"]], add_special_tokens=True).ids + [eos_id]
        assert dataset[i].tolist() == expected, entry


def _texts(run: RunDir) -> dict[str, str]:
    from hpcsynth.files import read_jsonl_zst

    texts = {r["id"]: r["text"] for out in (run.root / "outputs").glob("*.jsonl.zst") for r in read_jsonl_zst(out)}
    texts.update({d["key"]: d["text"] for shard in (run.root / "shards").glob("*.jsonl.zst")
                  for d in read_jsonl_zst(shard)})
    return texts


def _index(run: RunDir) -> list[dict]:
    return [orjson.loads(l) for l in (run.default_reduce_dir / "mix.docs.jsonl").read_bytes().splitlines()]


def _rewrite_config(run: RunDir, config) -> None:
    run.write_config(config, run.fingerprint())


@pytest.mark.parametrize("key, value, says", [("backend", "fast", "must be auto, tokenizers or gigatoken"),
                                              ("part_shards", 0, "must be 1 or more"),
                                              ("max_file_mb", -1, "must be 0 (no cap) or more"),
                                              ("format", "parquet", "must be one of megatron, datatrove, numpy")])
def test_bad_reduce_settings_are_one_clear_line(key: str, value, says: str) -> None:
    from hpcsynth.config import config_from_dict

    with pytest.raises(ConfigError, match=rf"'reduce.{key}' {re.escape(says)}"):
        config_from_dict({"reduce": {key: value}})
