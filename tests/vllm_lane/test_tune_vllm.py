"""`hpcsynth tune` on vLLM's CPU build with the tiny model: every trial a real engine in its own process.

The numbers mean nothing on two shared cores; the mechanics are what is tested: trials over max_num_seqs
each measured in steady state with vLLM's own statistics (prefix-cache hits of four prompts per document),
a setting vLLM refuses classed and survived, the winner written as a fragment that a config takes, and
`estimate --tuned` pricing at its rate.
"""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
import yaml

try:
    from vllm import LLM  # noqa: F401
except Exception as exc:
    pytest.skip(f"needs vLLM (tools/setup_vllm_lane.sh builds the CPU lane): {type(exc).__name__}: {exc}",
                allow_module_level=True)

from conftest import run_cli
from hpcsynth.config import load_config

pytestmark = pytest.mark.vllm


def test_tune_on_vllm_cpu_measures_trials_with_vllm_telemetry(tiny_model: Path, tmp_path: Path,
                                                               measured) -> None:
    corpus = tmp_path / "sample.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": f"Document {i} on river {i % 3}. "
                                          + "The harbor keeps a ledger of every signal and market. " * 6}) + "\n"
                              for i in range(8)))
    config = tmp_path / "vllm.yaml"
    config.write_text(yaml.safe_dump({
        "prompts": ["faq", "math", "table", "tutorial"],
        "model": {"engine": "vllm", "path": str(tiny_model), "max_model_len": 2048},
        "sampling": {"max_tokens": 16, "temperature": 1.0, "top_k": 0, "seed": 0},
        "vllm": {"enforce_eager": True, "max_num_seqs": 4, "max_num_batched_tokens": 4096,
                 "enable_prefix_caching": True}}))
    out = tmp_path / "tune"
    # max_num_seqs 0 is refused by our range checks before any trial; -1 is not: the trial of a kv_cache_dtype
    # vLLM does not know is refused by vLLM itself, which the tune classes and survives.
    result = run_cli("tune", config, "--input", corpus, "--out", out, "--requests", "32", "--budget", "10",
                     "--try", "vllm.max_num_seqs=2,16", "--try", "vllm.kv_cache_dtype=no_such_dtype",
                     "--documents", "1000", "--json", timeout=900)
    assert result.returncode == 0, result.stderr
    data = orjson.loads(result.stdout)
    trials = data["trials"]
    measured.append("tune on vllm cpu: " + "; ".join(
        f"{t['settings'] or 'as given'}: {t['state']} {t.get('tokens_per_s', 0):.1f} tok/s" for t in trials))
    assert [t["state"] for t in trials[:3]] == ["ok", "ok", "ok"], trials
    assert trials[3]["state"] in ("invalid", "crash") and trials[3]["error"], trials[3]
    for trial in trials[:3]:
        assert trial["requests"] == 32 and trial["completion_tokens"] > 0 and trial["tokens_per_s"] > 0
        assert trial["load_s"] > 0  # the engine's start-up, timed apart from the steady state
        # Four prompts per document: each prompt's instruction is cached across the documents.
        assert 0 < trial["telemetry"]["prefix_cache_hit_rate"] <= 1
    assert data["device"] == "cpu" and data["engine"] == "vllm"
    winner = data["winner"]
    assert winner["tokens_per_s"] == max(t["tokens_per_s"] for t in trials[:3])
    fragment = yaml.safe_load((out / "winner.yaml").read_text())
    assert set(fragment) <= {"vllm"}
    assert load_config(out / "tuned.yaml").vllm.max_num_seqs == {**{"vllm.max_num_seqs": 4},
                                                                  **winner["settings"]}["vllm.max_num_seqs"]
    assert data["estimate"]["rows"][0]["tokens_per_s"] == pytest.approx(winner["tokens_per_s"])
