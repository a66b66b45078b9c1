"""GPU checks (marked `gpu`): the transformers engine on CUDA through the real worker.

Skipped where torch sees no CUDA device; run them on a GPU machine with `pytest -m gpu -s`.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from hpcsynth.files import read_jsonl_zst
from hpcsynth.plan import plan_corpus
from hpcsynth.rundir import RunDir
from hpcsynth.generate.worker import run_shard

from conftest import fake_config, write_corpus

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to torch")]


def test_transformers_engine_on_cuda(tiny_model: Path, tmp_path: Path) -> None:
    from hpcsynth.generate.engines.hf import TransformersEngine

    corpus = write_corpus(tmp_path / "c.jsonl", 64)
    config = fake_config(corpus, plan={"shard_docs": 64}, sampling={"max_tokens": 128},
                         worker={"device": "cuda", "batch_size": 64})
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, engine="transformers",
                                                                   path=str(tiny_model)))
    run = RunDir(tmp_path / "run")
    plan_corpus(config, run)
    engine = TransformersEngine(run.config())
    assert engine.device == "cuda" and next(engine.model.parameters()).is_cuda
    started = time.monotonic()
    result = run_shard(run, 0, engine, run.config(), "gpu-test")
    seconds = time.monotonic() - started
    assert result.state == "done" and result.records == 64 * 4
    records = list(read_jsonl_zst(run.output_path(0)))
    assert all(r["completion_tokens"] > 0 for r in records)
    print(f"\ntransformers on {torch.cuda.get_device_name(0)}: {result.completion_tokens} tokens in "
          f"{seconds:.2f}s ({result.completion_tokens / seconds:.0f} tok/s)")
