"""Pass-through vLLM options on a real vLLM (CPU build): they reach the engine, unknown names are refused.

Also the one speculative decoding method the CPU build runs without extra packages (n-gram); FinePhrase's
suffix decoding needs arctic-inference, which the lane does not install (see docs/engines.md).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

try:
    from vllm import LLM  # noqa: F401
except Exception as exc:
    pytest.skip(f"needs vLLM (tools/setup_vllm_lane.sh builds the CPU lane): {type(exc).__name__}: {exc}",
                allow_module_level=True)

from hpcsynth.config import Config, config_from_dict
from hpcsynth.errors import ConfigError, EngineError
from hpcsynth.generate.engines import Request, make_engine
from hpcsynth.generate.engines.vllm_args import check_vllm_args
from hpcsynth.prompts import load_prompts

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

pytestmark = pytest.mark.vllm

NGRAM = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3}


def lane_config(tiny_model: Path, **extra) -> Config:
    data = {"model": {"engine": "vllm", "path": str(tiny_model), "max_model_len": 2048, "max_input_chars": 1500},
            "sampling": {"max_tokens": 24, "seed": 0},
            "vllm": {"enforce_eager": True, "max_num_seqs": 8, "max_num_batched_tokens": 4096}}
    for section, values in extra.items():
        data[section] = {**data.get(section, {}), **values}
    return config_from_dict(data)


def web_documents(count: int) -> list[str]:
    path = SHARED_DATA / "web" / "cc_en_head-0091.jsonl"
    if not path.is_file():
        return [f"Document {i}: the quick brown fox jumps over the lazy dog. " * 20 for i in range(count)]
    return [orjson.loads(line)["text"] for line in path.read_bytes().splitlines()[:count]]


def test_pass_through_reaches_vllm_with_ngram_speculation(tiny_model: Path, measured) -> None:
    config = lane_config(tiny_model, vllm={"engine_args": {"speculative_config": NGRAM}},
                         sampling={"extra": {"stop": ["e"]}})
    engine = make_engine(config)
    try:
        spec = engine.llm.llm_engine.vllm_config.speculative_config
        assert spec is not None and spec.method == "ngram" and spec.num_speculative_tokens == 3
        prompts = load_prompts(config)
        requests = [Request(f"d{i}/{p.name}", p.render(doc[:1500]), seed=i)
                    for i, doc in enumerate(web_documents(3)) for p in prompts]
        completions = list(engine.generate(iter(requests)))
    finally:
        engine.close()
    assert sorted(c.record_id for c in completions) == sorted(r.record_id for r in requests)
    # sampling.extra reached SamplingParams: generation stops at the first "e" and never shows it.
    assert all("e" not in c.text for c in completions), [c.text for c in completions]
    assert sum(c.finish_reason == "stop" for c in completions) >= len(completions) // 2
    measured.append(f"ngram speculation + stop via pass-through: {len(completions)} completions")


def test_unknown_names_are_refused_with_the_valid_ones(tiny_model: Path) -> None:
    typo = lane_config(tiny_model, vllm={"engine_args": {"max_num_seq": 4}})
    with pytest.raises(ConfigError) as caught:
        check_vllm_args(typo)
    assert "vllm.engine_args.max_num_seq is not an argument" in str(caught.value)
    assert "speculative_config" in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match="sampling.extra.min_pp is not .* valid names: .*min_p"):
        check_vllm_args(lane_config(tiny_model, sampling={"extra": {"min_pp": 0.1}}))
    with pytest.raises(ConfigError, match="sampling.extra.output_kind"):
        check_vllm_args(lane_config(tiny_model, sampling={"extra": {"output_kind": 1}}))
    with pytest.raises(ConfigError, match="max_num_seq is not"):
        make_engine(typo)  # the engine checks too, before vLLM starts


def test_launch_refuses_an_unknown_engine_arg_before_running(tiny_model: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(b"".join(orjson.dumps({"id": f"d{i}", "text": f"Document {i} text."}) + b"\n" for i in range(3)))
    config = tmp_path / "config.yaml"
    config.write_text(f"model: {{engine: vllm, path: {tiny_model}}}\nvllm:\n  engine_args: {{quantisation: fp8}}\n")
    env_run = [sys.executable, "-m", "hpcsynth"]
    plan = subprocess.run(env_run + ["plan", str(config), "--run", str(tmp_path / "run"), "--input", str(corpus)],
                          capture_output=True, text=True, timeout=120)
    assert plan.returncode == 0, plan.stderr
    proc = subprocess.run(env_run + ["launch", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    # vLLM itself may print a line on import; ours is one line, with the likely fix first.
    ours = [line for line in proc.stderr.splitlines() if line.startswith("hpcsynth: error:")]
    assert proc.returncode == 2 and len(ours) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "vllm.engine_args.quantisation is not an argument of vllm.LLM in this vLLM (did you mean " \
           "quantization?)" in ours[0]
    assert not (tmp_path / "run" / "tasks").exists(), "no worker started"


def test_suffix_decoding_without_its_package_is_one_clear_error(tiny_model: Path) -> None:
    config = lane_config(tiny_model, vllm={"speculative_method": "suffix", "num_speculative_tokens": 32})
    try:
        import arctic_inference  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("arctic-inference is installed here, so suffix decoding would start")
    with pytest.raises(EngineError, match="vLLM cannot start .* Arctic Inference is required"):
        make_engine(config)
