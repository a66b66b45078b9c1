"""Pass-through engine options (vllm.engine_args, sampling.extra) and whole GPU nodes, without vLLM or Slurm.

vLLM's own signature check runs in tests/vllm_lane/; the 2-GPU Slurm task in tests/execute/.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hpcsynth.config import config_from_dict, fingerprint, load_config
from hpcsynth.errors import ConfigError
from hpcsynth.execute.local import run_task
from hpcsynth.files import read_json, read_jsonl_zst
from hpcsynth.generate.engines.endpoint import EndpointEngine
from hpcsynth.generate.engines.vllm_args import engine_kwargs, sampling_kwargs
from hpcsynth.generate.lease import holder_gone
from hpcsynth.plan import plan_corpus
from hpcsynth.rundir import RunDir

from conftest import REPO, fake_config, write_corpus

PASS = {"vllm": {"engine_args": {"quantization": "fp8", "speculative_config": {"method": "ngram",
                                                                              "num_speculative_tokens": 4}}},
        "sampling": {"extra": {"repetition_penalty": 1.1, "min_p": 0.05}}, "model": {"engine": "vllm"}}


def test_pass_through_reaches_engine_and_sampling_arguments() -> None:
    config = config_from_dict(PASS)
    kwargs = engine_kwargs(config)
    assert kwargs["quantization"] == "fp8" and kwargs["speculative_config"]["method"] == "ngram"
    assert kwargs["max_num_seqs"] == config.vllm.max_num_seqs
    sampling = sampling_kwargs(config, seed=7, max_tokens=99)
    assert sampling["repetition_penalty"] == 1.1 and sampling["min_p"] == 0.05
    assert sampling["seed"] == 7 and sampling["max_tokens"] == 99 and sampling["top_k"] == -1


def test_named_speculative_keys_build_vllms_speculative_config() -> None:
    config = config_from_dict({"model": {"engine": "vllm"},
                               "vllm": {"speculative_method": "suffix", "num_speculative_tokens": 32}})
    assert engine_kwargs(config)["speculative_config"] == {"method": "suffix", "num_speculative_tokens": 32}
    assert "speculative_config" not in engine_kwargs(config_from_dict({"model": {"engine": "vllm"}}))


def test_endpoint_sends_extras_in_the_body() -> None:
    config = config_from_dict({**PASS, "model": {"engine": "endpoint", "path": "m"}})
    from hpcsynth.generate.engines import Request

    body = EndpointEngine(config).body(Request("a/faq", [{"role": "user", "content": "x"}], seed=3))
    assert body["repetition_penalty"] == 1.1 and body["min_p"] == 0.05 and body["seed"] == 3


@pytest.mark.parametrize("text, expected", [
    ("vllm:\n  engine_args:\n    max_num_seqs: 8\n", "line 3: 'vllm.engine_args.max_num_seqs' is set by vllm.max_num_seqs"),
    ("sampling:\n  extra:\n    temperature: 0.5\n", "line 3: 'sampling.extra.temperature' is set by sampling.temperature"),
    ("model: {engine: transformers}\nsampling:\n  extra: {min_p: 0.1}\n", "line 3: 'sampling.extra' is passed"),
    ("vllm:\n  speculative_method: suffix\n  engine_args: {speculative_config: {method: ngram}}\n",
     "keep one of them"),
    ("vllm:\n  engine_args: [quantization]\n", "line 2: 'vllm.engine_args' must be a mapping"),
    ("slurm:\n  gpu_mode: all\n", "line 2: 'slurm.gpu_mode' must be one of per_gpu, tensor_parallel"),
])
def test_conflicting_or_malformed_options_are_one_line(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert expected in str(caught.value) and "\n" not in str(caught.value)


def test_engine_args_are_fingerprinted_but_engine_tuning_is_not() -> None:
    base = config_from_dict({"model": {"engine": "vllm"}})
    hashes = {"faq": "x"}
    with_args = config_from_dict({"model": {"engine": "vllm"}, "vllm": {"engine_args": {"quantization": "fp8"}}})
    tuned = config_from_dict({"model": {"engine": "vllm"}, "vllm": {"max_num_seqs": 8}})
    extra = config_from_dict({"model": {"engine": "vllm"}, "sampling": {"extra": {"min_p": 0.1}}})
    assert fingerprint(with_args, hashes) != fingerprint(base, hashes)
    assert fingerprint(extra, hashes) != fingerprint(base, hashes)
    assert fingerprint(tuned, hashes) == fingerprint(base, hashes)


def test_runs_without_pass_through_keep_their_fingerprint() -> None:
    """The fingerprint as computed before the pass-through keys existed: finished shards stay done."""
    import hashlib
    import json

    from hpcsynth.config import config_to_dict

    config = config_from_dict({"model": {"engine": "vllm"}})
    data = config_to_dict(config)
    del data["sampling"]["extra"]
    del data["plan"]["skip_bad_files"]  # a key added later, counted only when true
    payload = {key: data[key] for key in ("prompts", "plan", "model", "sampling")}
    payload["prompt_templates"] = {"faq": "x"}
    before = hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert fingerprint(config, {"faq": "x"}) == before


def test_resolved_config_keeps_the_pass_through(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus.jsonl", 3)
    config = fake_config(corpus, vllm={"engine_args": {"quantization": "fp8"}}, sampling={"extra": {"min_p": 0.1}})
    run = RunDir(tmp_path / "run")
    plan_corpus(config, run)
    again = run.config()
    assert again.vllm.engine_args == {"quantization": "fp8"} and again.sampling.extra == {"min_p": 0.1}
    assert fingerprint(again, {p["name"]: p["template_hash"] for p in run.manifest()["prompts"]}) == run.fingerprint()
    from hpcsynth.generate.pull import pull_shards

    pull_shards(run.root)
    record = next(read_jsonl_zst(run.output_path(0)))
    assert record["sampling"]["extra"] == {"min_p": 0.1}, "a record says how it was sampled"


def test_finephrase_config_states_the_recipe() -> None:
    config = load_config(REPO / "configs" / "finephrase.yaml")
    assert config.prompts == ("faq", "math", "table", "tutorial")
    assert config.model.engine == "vllm" and "SmolLM2-1.7B-Instruct" in config.model.path
    assert (config.model.max_model_len, config.sampling.max_tokens) == (8192, 2048)
    assert config.vllm.enable_prefix_caching and config.vllm.max_num_batched_tokens == 16384
    assert config.vllm.max_num_seqs == 2048 and config.model.dtype == "bfloat16"
    assert (config.vllm.speculative_method, config.vllm.num_speculative_tokens) == ("suffix", 32)
    assert config.reduce.original_ratio == 0.5  # one third of the mix is original text
    for line in (REPO / "configs" / "finephrase.yaml").read_text().splitlines():
        if ":" in line and not line.lstrip().startswith("#") and not line.rstrip().endswith(":"):
            assert "#" in line, f"no source comment: {line}"


def test_sibling_gpu_workers_do_not_take_each_others_leases(monkeypatch) -> None:
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("HPCSYNTH_GPU_SLOT", "0")
    sibling = {"owner": "elsewhere:12345:abc", "task": "77_3", "slot": "1"}
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # this worker runs after a requeue
    sibling = {**sibling, "restart": "1"}
    earlier_self = {"owner": "elsewhere:12345:abc", "task": "77_3", "slot": "0", "restart": "0"}
    assert not holder_gone(sibling), "a sibling on another GPU of the same task is alive"
    assert holder_gone(earlier_self), "the same slot of the same array task is this worker's earlier run"


def test_a_task_seeing_two_gpus_runs_two_workers_that_split_the_shards(tmp_path: Path, monkeypatch) -> None:
    corpus = write_corpus(tmp_path / "corpus.jsonl", 40)
    config = fake_config(corpus, plan={"shard_docs": 5})
    run = RunDir(tmp_path / "run")
    plan_corpus(config, run)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    monkeypatch.setenv("HPCSYNTH_FAKE_FAULTS", '{"delay_s": 0.01}')
    assert run_task(str(run.root), None, False, "per_gpu") == 0
    ids = [r["id"] for s in run.shard_ids() for r in read_jsonl_zst(run.output_path(s))]
    assert len(ids) == len(set(ids)) == 40 * 4
    tasks = [read_json(p) for p in sorted((run.root / "tasks").glob("*.json"))]
    # "gpus" says what the engine computed on (the fake engine: none); the pinning shows in the logs below.
    assert len(tasks) == 2 and len({t["pid"] for t in tasks}) == 2
    assert sum(t["shards_done"] for t in tasks) == 8 and min(t["shards_done"] for t in tasks) >= 1
    logs = sorted((run.root / "logs").glob("worker-*-gpu*.log"))
    assert len(logs) == 2
    assert "CUDA_VISIBLE_DEVICES=2" in logs[0].read_text() and "CUDA_VISIBLE_DEVICES=5" in logs[1].read_text()


def test_tensor_parallel_mode_runs_one_worker_in_process(tmp_path: Path, monkeypatch) -> None:
    corpus = write_corpus(tmp_path / "corpus.jsonl", 10)
    run = RunDir(tmp_path / "run")
    plan_corpus(fake_config(corpus, plan={"shard_docs": 5}), run)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert run_task(str(run.root), None, False, "tensor_parallel") == 0
    tasks = list((run.root / "tasks").glob("*.json"))
    assert len(tasks) == 1 and read_json(tasks[0])["pid"] == os.getpid()


def test_local_launch_on_a_machine_listing_two_gpus_uses_both(tmp_path: Path, monkeypatch) -> None:
    from hpcsynth.execute.launch import launch_run

    corpus = write_corpus(tmp_path / "corpus.jsonl", 20)
    run = RunDir(tmp_path / "run")
    plan_corpus(fake_config(corpus, plan={"shard_docs": 5}), run)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("HPCSYNTH_FAKE_FAULTS", '{"delay_s": 0.01}')
    report = launch_run(run)
    assert report.done == 4 and not report.failed
    tasks = [read_json(p) for p in (run.root / "tasks").glob("*.json")]
    assert len(tasks) == 2 and len({t["pid"] for t in tasks}) == 2


def test_tensor_parallel_mode_gives_vllm_every_visible_gpu(monkeypatch) -> None:
    """The one engine of a tensor_parallel task is built with tensor_parallel_size = the GPUs it sees, and
    vLLM receives that; any other engine keeps its config (and the log says it uses one GPU)."""
    from hpcsynth.execute import local

    built = []
    monkeypatch.setattr(local, "make_engine", lambda config: built.append(config) or object())
    vllm = config_from_dict({"model": {"engine": "vllm"}, "vllm": {"engine_args": {"quantization": "fp8"}}})
    local._tensor_parallel_factory(4)(vllm)
    assert built[-1].vllm.tensor_parallel_size == 4
    assert engine_kwargs(built[-1])["tensor_parallel_size"] == 4 and engine_kwargs(built[-1])["quantization"] == "fp8"
    fake = config_from_dict({"model": {"engine": "fake"}})
    local._tensor_parallel_factory(4)(fake)
    assert built[-1] is fake
