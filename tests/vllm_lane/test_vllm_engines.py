"""The vllm and endpoint engines on a real vLLM (CPU build) with the tiny model.

Run in the vLLM lane:  bash tools/setup_vllm_lane.sh && .venv-vllm/bin/python -m pytest -q tests/vllm_lane
Elsewhere the module skips: the main lane has no vLLM.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

try:
    # Not a bare `import vllm`: where vLLM is missing, that finds this test directory as a namespace package.
    from vllm import LLM  # noqa: F401
except Exception as exc:  # ImportError, or a vLLM that cannot load on this machine
    pytest.skip(f"needs vLLM (tools/setup_vllm_lane.sh builds the CPU lane): {type(exc).__name__}: {exc}",
                allow_module_level=True)

from hpcsynth.config import Config, config_from_dict
from hpcsynth.generate.engines import Completion, Request, make_engine

pytestmark = pytest.mark.vllm

MAX_MODEL_LEN = 2048
MAX_TOKENS = 16
SERVER_START_S = 240  # ~30 s on 2 idle cores; generous for a loaded machine


@pytest.fixture(scope="module")
def config(tiny_model: Path) -> Config:
    return config_from_dict({
        "model": {"engine": "vllm", "path": str(tiny_model), "max_model_len": MAX_MODEL_LEN},
        "sampling": {"max_tokens": MAX_TOKENS, "temperature": 1.0, "top_k": 0, "seed": 0},
        # A small batch so that 24 requests take several turns through the engine's slots.
        "vllm": {"enforce_eager": True, "max_num_seqs": 6, "in_flight": 2, "max_num_batched_tokens": 4096},
        "endpoint": {"concurrency": 8, "timeout_s": 60.0, "retries": 2, "backoff_s": 0.2},
    })


@pytest.fixture(scope="module")
def requests() -> list[Request]:
    out = [Request(f"doc{i}/faq", [{"role": "user", "content": f"Rewrite document {i} as a FAQ. " * (1 + i % 5)}],
                   seed=1000 + i) for i in range(23)]
    out.insert(7, Request("huge/faq", [{"role": "user", "content": "lorem ipsum dolor " * 1500}], seed=1))
    return out


@pytest.fixture(scope="module")
def offline(config: Config, measured):
    started = time.monotonic()
    engine = make_engine(config)
    measured.append(f"vllm offline: engine init {time.monotonic() - started:.1f}s")
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def offline_completions(offline, requests, measured) -> dict[str, Completion]:
    return run(offline, requests, "vllm offline", measured)


def run(engine, requests: list[Request], label: str, measured: list[str]) -> dict[str, Completion]:
    started = time.monotonic()
    completions = list(engine.generate(iter(requests)))
    seconds = time.monotonic() - started
    tokens = sum(c.completion_tokens for c in completions)
    measured.append(f"{label}: {len(completions)} completions, {tokens} tokens in {seconds:.2f}s "
                    f"({tokens / seconds:.0f} tok/s)")
    assert len(completions) == len(requests), "one Completion per Request"
    by_id = {c.record_id: c for c in completions}
    assert set(by_id) == {r.record_id for r in requests}
    return by_id


def check_completions(completions: dict[str, Completion]) -> None:
    huge = completions.pop("huge/faq")
    assert huge.finish_reason == "rejected" and huge.text == "" and huge.completion_tokens == 0
    assert str(MAX_MODEL_LEN) in huge.error, huge.error
    for completion in completions.values():
        assert completion.finish_reason in ("stop", "length"), completion
        assert completion.text and completion.error == ""
        assert completion.prompt_tokens > 10
        assert 1 <= completion.completion_tokens <= MAX_TOKENS
        if completion.finish_reason == "length":
            assert completion.completion_tokens == MAX_TOKENS


def test_offline_engine_completes_every_request(offline_completions):
    check_completions(dict(offline_completions))


def test_offline_engine_on_the_cpu_build_is_cpu_time(offline, monkeypatch):
    from hpcsynth.generate.clock import engine_device

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # as launch --workers N sets it, GPUs or not
    assert offline.device == "cpu" and engine_device(offline, "vllm") == ("cpu", 0)


def test_offline_engine_feeds_continuously(offline, requests):
    pulled = 0
    held = []

    def stream():
        nonlocal pulled
        for request in requests:
            pulled += 1
            yield request

    first_yield_at = None
    for _ in offline.generate(stream()):
        first_yield_at = first_yield_at or pulled
        held.append(offline.engine.get_num_unfinished_requests())
    assert first_yield_at is not None and first_yield_at <= offline.capacity + 1  # +1: the rejected one
    assert max(held) <= offline.capacity  # never more inside vLLM than max_num_seqs + in_flight
    assert pulled == len(requests)


def test_offline_per_request_seeds_reproduce(offline, requests, offline_completions, measured):
    again = run(offline, list(reversed(requests)), "vllm offline, reversed order", measured)
    assert {k: c.text for k, c in again.items()} == {k: c.text for k, c in offline_completions.items()}


def test_offline_engine_stops_cleanly_when_the_consumer_does(offline, requests):
    stream = offline.generate(iter(requests))
    next(stream)
    stream.close()  # the worker stops early (e.g. lost its lease)
    assert offline.engine.get_num_unfinished_requests() == 0


def test_worker_commits_a_shard_with_the_vllm_engine(offline, config, tmp_path):
    from hpcsynth.files import read_jsonl_zst
    from hpcsynth.plan import plan_corpus
    from hpcsynth.rundir import RunDir
    from hpcsynth.generate.worker import run_shard

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": f"Document {i}. " + "Some words here. " * 20}) + "\n"
                              for i in range(3)))
    run = RunDir(tmp_path / "run")
    plan_corpus(dataclasses.replace(config, plan=dataclasses.replace(config.plan, inputs=(str(corpus),))), run)
    result = run_shard(run, 0, offline, run.config(), "vllm-lane")
    assert result.state == "done", result.error
    records = list(read_jsonl_zst(run.output_path(0)))
    assert len(records) == 3 * len(config.prompts)
    assert all(r["engine"] == "vllm" and r["finish_reason"] in ("stop", "length") for r in records)
    assert all(r["completion_tokens"] > 0 and r["prompt_tokens"] > 0 for r in records)


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory, measured):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_model),
               "--host", "127.0.0.1", "--port", str(port), "--max-model-len", str(MAX_MODEL_LEN),
               "--max-num-seqs", "8", "--enforce-eager", "--dtype", "bfloat16", "--seed", "0"]
    started = time.monotonic()
    with open(log_path, "wb") as log:
        # Its own process group: the server spawns an engine-core process, and stopping the group by the
        # server's PID takes that child along.
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", process, log_path)
        measured.append(f"vllm server: healthy {time.monotonic() - started:.1f}s after start")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop(process)


def wait_healthy(url: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"vLLM server exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with opener.open(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    pytest.fail(f"vLLM server not healthy after {SERVER_START_S}s:\n{log_path.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)  # the group we created, named by the server's PID
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def test_endpoint_engine_against_vllm_server(server, config, requests, offline_completions, measured):
    endpoint = make_engine(dataclasses.replace(
        config, model=dataclasses.replace(config.model, engine="endpoint"),
        endpoint=dataclasses.replace(config.endpoint, url=server)))
    served = run(endpoint, requests, "vllm server via endpoint engine", measured)
    check_completions(dict(served))
    assert "maximum context length" in served["huge/faq"].error

    # Same records schema from both engines: the same fields, of the same types, for every outcome.
    for record_id, completion in served.items():
        other = offline_completions[record_id]
        assert {k: type(v) for k, v in dataclasses.asdict(completion).items()} == \
               {k: type(v) for k, v in dataclasses.asdict(other).items()}
        if completion.finish_reason != "rejected":
            # Both render the model's chat template the same way, so prompts count the same.
            assert completion.prompt_tokens == other.prompt_tokens
    # Per-request seeds make a record reproducible across engines too, whatever shares its batch.
    assert {k: c.text for k, c in served.items()} == {k: c.text for k, c in offline_completions.items()}


def test_endpoint_engine_reads_the_vllm_servers_metrics(server, config, requests, measured):
    """The endpoint engine's telemetry parses what a real `vllm serve` publishes at /metrics."""
    endpoint = make_engine(dataclasses.replace(
        config, model=dataclasses.replace(config.model, engine="endpoint"),
        endpoint=dataclasses.replace(config.endpoint, url=server)))
    before = endpoint.telemetry()
    run(endpoint, requests[:6], "vllm server via endpoint engine, for /metrics", measured)
    after = endpoint.telemetry()
    measured.append(f"vllm server /metrics: {after}")
    assert before is not None and after is not None
    assert set(after) >= {"kv_cache_usage", "requests_running", "requests_waiting", "preemptions",
                          "prefix_cache_queries", "prefix_cache_hits"}
    assert after["prefix_cache_queries"] > before.get("prefix_cache_queries", 0)
    assert 0 <= after["kv_cache_usage"] <= 1 and after["prefix_cache_hits"] <= after["prefix_cache_queries"]



def test_same_records_from_transformers_vllm_and_endpoint(offline, server, config, tmp_path):
    """One shard through the worker with each engine: identical record schema, ids and prompt tokens."""
    from hpcsynth.generate.engines.hf import TransformersEngine
    from hpcsynth.files import read_jsonl_zst
    from hpcsynth.plan import plan_corpus
    from hpcsynth.rundir import RunDir
    from hpcsynth.generate.worker import run_shard

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": f"Document {i}. " + "Facts and figures. " * 12})
                              + "\n" for i in range(3)))
    base = dataclasses.replace(config, prompts=("faq", "table"),
                               plan=dataclasses.replace(config.plan, inputs=(str(corpus),)),
                               worker=dataclasses.replace(config.worker, threads=1, device="cpu"),
                               endpoint=dataclasses.replace(config.endpoint, url=server))
    engines = {"vllm": lambda c: offline, "endpoint": make_engine, "transformers": TransformersEngine}
    outputs = {}
    for name, build in engines.items():
        cfg = dataclasses.replace(base, model=dataclasses.replace(base.model, engine=name))
        run = RunDir(tmp_path / name)
        plan_corpus(cfg, run)
        engine = build(run.config())
        result = run_shard(run, 0, engine, run.config(), f"lane-{name}")
        assert result.state == "done", (name, result.error)
        outputs[name] = list(read_jsonl_zst(run.output_path(0)))
    schema = {name: [{k: type(v).__name__ for k, v in r.items()} for r in recs] for name, recs in outputs.items()}
    assert schema["vllm"] == schema["endpoint"] == schema["transformers"]
    ids = {name: [r["id"] for r in recs] for name, recs in outputs.items()}
    assert ids["vllm"] == ids["endpoint"] == ids["transformers"] and len(ids["vllm"]) == 6
    prompt_tokens = {name: [r["prompt_tokens"] for r in recs] for name, recs in outputs.items()}
    assert prompt_tokens["vllm"] == prompt_tokens["endpoint"] == prompt_tokens["transformers"]
    assert {r["engine"] for r in outputs["endpoint"]} == {"endpoint"}


def test_offline_step_down_restarts_with_half_the_sequences(offline, requests, offline_completions, measured):
    # Last in the module: it restarts the shared engine. What the worker calls after an out-of-memory error.
    before = offline.max_num_seqs
    change = offline.step_down()
    assert change == f"max_num_seqs {before} -> {before // 2} (engine restarted)"
    assert offline.capacity == before // 2 + offline.config.vllm.in_flight
    again = run(offline, requests[:6], "vllm offline after step-down", measured)
    # Per-request seeds: the same text whatever the batch size.
    assert {k: c.text for k, c in again.items()} == {k: offline_completions[k].text for k in again}
