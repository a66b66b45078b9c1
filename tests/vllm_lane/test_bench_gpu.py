"""tools/bench_gpu.py on the vLLM CPU lane: the reduced mode end to end, and the GPU mode's model and server
flags without a GPU.

Its own pytest process (tools/test.sh): it reads vLLM's argument parser, as test_engine_args.py does.
The rates mean nothing here (a tiny model on 2 shared cores); the mechanics are what is tested: the same
requests through our worker, LLM.generate and `vllm serve`, the same tokens out of each, the server gone.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import vllm  # noqa: F401
except Exception as exc:
    pytest.skip(f"needs vLLM (tools/setup_vllm_lane.sh builds the CPU lane): {type(exc).__name__}: {exc}",
                allow_module_level=True)

pytestmark = pytest.mark.vllm

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "bench_gpu.py"
ROWS = ("ours", "llm_generate", "serve")


def load_tool():
    spec = importlib.util.spec_from_file_location("bench_gpu", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reduced_mode_runs_the_same_requests_through_the_three_paths(tmp_path: Path, measured) -> None:
    out = tmp_path / "result.json"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    process = subprocess.Popen([sys.executable, str(TOOL), "--reduced", "--json", str(out), "--work",
                                str(tmp_path / "work")], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = process.communicate(timeout=420)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)  # the bench stops its server and engine on SIGTERM
        output, _ = process.communicate(timeout=90)
        pytest.fail(f"bench_gpu --reduced did not finish in 7 minutes:\n{output[-4000:]}")
    assert process.returncode == 0, output[-4000:]
    result = json.loads(out.read_text())
    rows = result["rows"]

    assert result["mode"] == "reduced" and set(rows) == set(ROWS)
    assert result["prompts"] == ["faq", "math", "table", "tutorial"]
    for name in ROWS:
        assert rows[name]["tok_s"] > 0 and rows[name]["tok_s_per_gpu"] > 0, rows[name]
        assert rows[name]["failed"] == 0, rows[name]
    # The same requests everywhere: as many, the same prompt token ids, and with ignore_eos exactly the
    # output lengths drawn.
    assert {rows[n]["requests"] for n in ROWS} == {result["requests"]} == {result["documents"] * 4}
    assert len({rows[n]["prompt_tokens"] for n in ROWS}) == 1, rows
    assert {rows[n]["output_tokens"] for n in ROWS} == {result["drawn_output_tokens"]}
    assert 100 < result["drawn_output_tokens"] / result["requests"] < 1000  # drawn around 359
    ratios = result["ratios"]
    assert ratios["ours_over_llm_generate"] == pytest.approx(
        rows["ours"]["tok_s_per_gpu"] / rows["llm_generate"]["tok_s_per_gpu"], rel=1e-3)
    assert ratios["ours_over_serve"] == pytest.approx(
        rows["ours"]["tok_s_per_gpu"] / rows["serve"]["tok_s_per_gpu"], rel=1e-3)
    assert result["engine_kwargs"]["load_format"] == "dummy"
    assert result["server"]["prefix_cache_reset"] is True
    for label in ("(a) hpcsynth worker", "(b) vLLM LLM.generate", "(c) vllm serve", "ours/LLM.generate"):
        assert label in output, output[-3000:]
    with pytest.raises(ProcessLookupError):  # the server is gone
        os.kill(result["server"]["pid"], 0)
    measured.append("bench_gpu --reduced: " + ", ".join(f"{n} {rows[n]['tok_s']:,.0f} tok/s" for n in ROWS)
                    + f"; ours/LLM.generate {ratios['ours_over_llm_generate']:.3f}x")


def test_gpu_mode_model_is_smollm2_shaped(tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    tool = load_tool()
    model = tool.build_smollm2_shape(tmp_path / "model")
    config = AutoConfig.from_pretrained(model)
    assert config.architectures == ["LlamaForCausalLM"]
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (2048, 8192, 24)
    assert (config.num_attention_heads, config.num_key_value_heads, config.vocab_size) == (32, 32, 49152)
    assert config.tie_word_embeddings is True
    params = (config.vocab_size * config.hidden_size + config.num_hidden_layers
              * (4 * config.hidden_size ** 2 + 3 * config.hidden_size * config.intermediate_size))
    assert 1.65e9 < params < 1.75e9  # SmolLM2-1.7B
    tokenizer = AutoTokenizer.from_pretrained(model)
    assert len(tokenizer) == 49152  # every id the random model samples decodes
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                         tokenize=False)
    assert text.endswith("<|im_start|>assistant\n")
    assert not list(model.glob("*.safetensors"))  # weights come from vLLM's dummy loader


def test_gpu_mode_server_gets_the_offline_settings(tmp_path: Path) -> None:
    # FinePhrase's GPU settings (CUDA graphs, chunked prefill, suffix decoding) as flags, parsed back by
    # vLLM's own parser: what the H100 run's server will be given.
    from hpcsynth.config import config_from_dict

    tool = load_tool()
    args = argparse.Namespace(reduced=False, speculative=True, docs=256, max_model_len=8192, set=[])
    config = config_from_dict(tool.bench_config(args, tmp_path / "model", tmp_path / "corpus.jsonl"))
    kwargs = tool.engine_args(config, "cuda")
    flags = tool.server_flags(kwargs)
    assert kwargs["speculative_config"] == {"method": "suffix", "num_speculative_tokens": 32}
    assert kwargs["max_num_seqs"] == 2048 and kwargs["enforce_eager"] is False
    assert "--no-enforce-eager" in flags and "--load-format" in flags
    assert config.sampling.extra == {"ignore_eos": True}
