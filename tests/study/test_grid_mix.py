"""A grid's mix-in axis given as `reduce.mix` (exact shares, another corpus), not only original_ratio."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson

from conftest import write_corpus
from test_grid import hpcsynth

GRID_MIX = """\
prompts: [faq, math]
plan: {{shard_docs: 4}}
model: {{engine: fake, path: fake-model}}
reduce: {{tokenizer: {model}, min_chars: 1}}
validate: {{action: keep}}
grid:
  generators: [{{name: a}}, {{name: b, sampling: {{temperature: 0.5}}}}]
  mixins:
    - {{name: none, original_ratio: 0}}
    - name: hq
      mix:
        synthetic: {{"*": 2.0}}
        sources: [{{name: run_originals, weight: 1.0}}, {{name: hq, path: {hq}, weight: 1.0}}]
        too_few: repeat
"""


def test_a_mixin_with_reduce_mix_mixes_another_corpus_per_cell(tmp_path: Path, tiny_model: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus.jsonl", 12)
    hq = write_corpus(tmp_path / "hq.jsonl", 30)
    config = tmp_path / "grid.yaml"
    config.write_text(GRID_MIX.format(model=tiny_model, hq=hq))
    run = tmp_path / "run"
    hpcsynth("plan", str(config), "--run", str(run), "--input", str(corpus))
    hpcsynth("launch", str(run))
    out = hpcsynth("reduce", str(run)).stdout
    for gen in ("a", "b"):
        for prompt in ("faq", "math"):
            none = orjson.loads((run / "datasets" / f"{gen}-{prompt}-none" / "report.json").read_bytes())
            assert none["original_tokens"] == 0 and not none.get("corpus_tokens")
            folder = run / "datasets" / f"{gen}-{prompt}-hq"
            report = orjson.loads((folder / "report.json").read_bytes())
            mix = orjson.loads((folder / "mix.json").read_bytes())
            shares = {s["name"]: s for s in mix["sources"]}
            assert set(shares) == {"synthetic", "run_originals", "hq"} and shares["hq"]["kind"] == "corpus"
            assert report["corpus_tokens"] == shares["hq"]["tokens"] > 0
            # The tokens written, read back as the flat array the .bin is, are the mix's own total.
            written = np.memmap(folder / "mix.bin", dtype=np.uint16, mode="r").size
            assert written == report["tokens"] == sum(s["tokens"] for s in mix["sources"])
            assert f"+ {report['corpus_tokens']:,} corpus" in out
            card = (folder / "README.md").read_text()
            assert "| hq | corpus |" in card and str(tmp_path) not in card
    train = (run / "datasets" / "TRAIN.md").read_text()
    assert "tokens (synthetic + original + other corpora)" in train
