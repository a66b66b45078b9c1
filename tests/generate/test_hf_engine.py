"""The transformers engine on the tiny real model: every record a function of (config, record id) only."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import orjson

from hpcsynth.config import load_config
from hpcsynth.files import read_json, read_jsonl_zst
from hpcsynth.generate.lease import new_owner
from hpcsynth.generate.worker import run_shard
from hpcsynth.generate.pull import pull_shards
from hpcsynth.plan import plan_corpus
from hpcsynth.rundir import RunDir

from conftest import REPO, write_corpus


def run_with(tmp_path: Path, name: str, corpus: Path, tiny_model: Path, limit: int = 400, stop_after: int = 0,
             **worker) -> dict[str, dict]:
    config = load_config(REPO / "configs" / "demo.yaml")
    config = dataclasses.replace(
        config, prompts=("faq", "math"),
        model=dataclasses.replace(config.model, path=str(tiny_model), max_model_len=limit, max_input_chars=100_000),
        sampling=dataclasses.replace(config.sampling, max_tokens=24),
        plan=dataclasses.replace(config.plan, inputs=(str(corpus),), shard_docs=100),
        worker=dataclasses.replace(config.worker, **worker))
    run = RunDir(tmp_path / name)
    plan_corpus(config, run)
    if stop_after:
        stopped_part_way(run, config, stop_after)
    assert all(r.state == "done" for r in pull_shards(run.root))
    if stop_after:
        assert read_json(run.done_path(0))["resumed_records"] == stop_after, "the restart resumed from the log"
    return {(r["source_id"], r["prompt"]): r for s in run.shard_ids() for r in read_jsonl_zst(run.output_path(s))}


def stopped_part_way(run: RunDir, config, records: int) -> None:
    """A worker on the real engine that dies after `records` completions, as a killed one would."""
    from hpcsynth.generate.engines.hf import TransformersEngine

    engine = TransformersEngine(config)
    real = engine.generate

    def dies(requests):
        for n, completion in enumerate(real(requests)):
            if n == records:
                raise RuntimeError("killed (injected)")
            yield completion

    engine.generate = dies
    try:
        assert run_shard(run, 0, engine, config, new_owner()).state == "failed"
    finally:
        engine.close()
    run.failed_path(0).unlink()


def test_records_do_not_depend_on_the_batch(tmp_path: Path, tiny_model: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus.jsonl", 12)
    small = run_with(tmp_path, "b3", corpus, tiny_model, batch_size=3)
    large = run_with(tmp_path, "b16", corpus, tiny_model, batch_size=16)
    assert len(small) == len(large) == 24
    same = [key for key in small if small[key]["text"] == large[key]["text"]]
    assert len(same) == 24, f"{24 - len(same)} of 24 records changed with the batch size"
    # A restart: 7 records from the first worker's log, the other 17 batched afresh by the next one.
    restarted = run_with(tmp_path, "restart", corpus, tiny_model, stop_after=7, batch_size=5)
    assert [k for k in small if restarted[k]["text"] != small[k]["text"]] == [], "records changed with a restart"
    assert len({r["text"] for r in small.values()}) > 12, "records differ from each other (seeded per record)"


def prompt_tokens(tiny_model: Path, text: str, prompts: tuple[str, ...] = ("faq", "math")) -> int:
    from transformers import AutoTokenizer

    from hpcsynth.prompts import load_prompts

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    config = load_config(REPO / "configs" / "demo.yaml")
    config = dataclasses.replace(config, prompts=prompts)
    return max(len(tokenizer(tokenizer.apply_chat_template(p.render(text), add_generation_prompt=True,
                                                           tokenize=False), add_special_tokens=False)["input_ids"])
               for p in load_prompts(config))


def test_a_long_prompt_does_not_shorten_its_neighbours(tmp_path: Path, tiny_model: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus.jsonl", 6)
    long_text = " ".join(f"word{i % 97}" for i in range(150))
    # A window the long prompt nearly fills: it may add 6 tokens, its neighbours their full 24.
    limit = prompt_tokens(tiny_model, long_text) + 6
    alone = run_with(tmp_path, "alone", corpus, tiny_model, limit=limit, batch_size=16)
    with_long = tmp_path / "with-long.jsonl"
    with_long.write_bytes(orjson.dumps({"id": "long", "text": long_text}) + b"\n" + corpus.read_bytes())
    mixed = run_with(tmp_path, "mixed", with_long, tiny_model, limit=limit, batch_size=16)
    long_records = [r for (source, _), r in mixed.items() if source == "long"]
    assert len(long_records) == 2 and all(r["finish_reason"] != "rejected" for r in long_records)
    assert all(r["prompt_tokens"] + r["completion_tokens"] <= limit for r in long_records)
    assert max(r["completion_tokens"] for r in alone.values()) > 6, "neighbours need more than the long one's room"
    for key, record in alone.items():
        assert mixed[key]["text"] == record["text"], f"{key} changed when a long prompt shared its batch"
