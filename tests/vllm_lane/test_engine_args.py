"""Pass-through vLLM options on a real vLLM (CPU build): they reach the engine, unknown names are refused.

Speculative decoding (FinePhrase's suffix method, or n-gram) is refused on the CPU build in one line: vLLM's CPU
runner crashes on seeded requests once speculation drafts tokens, and every hpcsynth record has its own seed.
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
    """Real web text when the shared data is there; else varied generated text (never one sentence
    repeated, which no corpus holds), so the lane passes the same on a clone without ../shared."""
    path = SHARED_DATA / "web" / "cc_en_head-0091.jsonl"
    if not path.is_file():
        words = ("river", "market", "engine", "winter", "garden", "protein", "ledger", "signal", "harbor", "theory")
        return [" ".join(f"{words[(i * 7 + j * 3) % 10]}{(i + j) % 13}" for j in range(300)) for i in range(count)]
    return [orjson.loads(line)["text"] for line in path.read_bytes().splitlines()[:count]]


def test_pass_through_reaches_vllm(tiny_model: Path, measured) -> None:
    config = lane_config(tiny_model, vllm={"engine_args": {"disable_log_stats": True, "max_logprobs": 7}},
                         sampling={"extra": {"stop": ["e"]}})
    engine = make_engine(config)
    try:
        assert engine.llm.llm_engine.vllm_config.model_config.max_logprobs == 7, "engine_args reached vllm.LLM"
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
    measured.append(f"stop via pass-through: {len(completions)} completions")


@pytest.mark.parametrize("vllm", [{"engine_args": {"speculative_config": NGRAM}},
                                  {"speculative_method": "suffix", "num_speculative_tokens": 32}])
def test_speculation_on_the_cpu_build_is_one_clear_error(tiny_model: Path, vllm: dict) -> None:
    # It crashed mid-run before ('CPU Generator does not use offset') once n-gram speculation drafted
    # tokens for a seeded request; the check_vllm_args pass-through still accepts the names.
    config = lane_config(tiny_model, vllm=vllm)
    check_vllm_args(config)
    with pytest.raises(EngineError) as caught:
        make_engine(config)
    message = str(caught.value)
    assert "speculative decoding on vLLM's CPU build" in message and "\n" not in message
    assert "vllm.speculative_method" in message and "vllm.engine_args.speculative_config" in message


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


def test_cpu_build_prefills_each_prompt_whole(tiny_model: Path) -> None:
    # Seeded requests whose prefill was chunked crashed vLLM's CPU build ('CPU Generator does not use
    # offset'): on CPU the engine turns chunked prefill off and gives a step at least one whole prompt.
    config = lane_config(tiny_model, vllm={"max_num_batched_tokens": 512})
    engine = make_engine(config)
    try:
        scheduler = engine.llm.llm_engine.vllm_config.scheduler_config
        assert not scheduler.enable_chunked_prefill and scheduler.max_num_batched_tokens >= 2048
    finally:
        engine.close()
    with pytest.raises(EngineError, match="enable_chunked_prefill: true crashes vLLM's CPU build"):
        make_engine(lane_config(tiny_model, vllm={"engine_args": {"enable_chunked_prefill": True}}))
