"""Our worker against raw vLLM and `vllm serve`, on one GPU, on the same FinePhrase-shaped requests.

A model with SmolLM2-1.7B-Instruct's architecture (its published config.json, below) and random weights
(vLLM's load_format="dummy", through `vllm.engine_args`: nothing is downloaded or written but config.json
and a 49,152-token BPE trained on the spot) generates the FinePhrase prompt mix (faq, math, table,
tutorial on every document) with output lengths drawn per request (gamma, mean 359 tokens: FinePhrase's
published mean; `ignore_eos`, so every path generates exactly the lengths drawn; the same seeds) through:

  (a) ours: a planned run's shards through the real WorkerSession and VllmEngine (shard reading, the
      request stream and continuous feeding, the progress log, the commits). Not `hpcsynth launch`: it
      starts its own engine in a child process, which could not share the GPU with (b), and a config has
      one sampling.max_tokens for all records; so a subclass of VllmEngine changes only that, per request.
  (b) vLLM's own `LLM.generate` on the same token ids and SamplingParams, on the same LLM instance (one
      engine on the GPU at a time; it was built by our engine, statistics on, as our workers run it).
  (c) `vllm serve` (python -m vllm.entrypoints.openai.api_server: the same server, and the CPU build's
      `vllm` script is broken) on 127.0.0.1 with the same engine settings as flags, fed by an async
      OpenAI client at datatrove's concurrency: 500 requests open, as datatrove's inference benchmark
      (examples/inference/generate_data.py, max_concurrent_generations=500) drives its server.

(a) and (b) run in a child process that exits before the server starts, so the GPU is free for it. Each
pass starts with the prefix cache reset (the paths repeat the same prompts) after a warm-up on other
documents; rounds alternate (a) and (b). Rate = output tokens / wall seconds of the whole pass.

    python tools/bench_gpu.py --json bench-gpu.json                 # one H100 (estimated 5-8 minutes)
    python tools/bench_gpu.py --speculative --json spec.json        # + suffix decoding (arctic-inference)
    VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python tools/bench_gpu.py --reduced --json /tmp/r.json

--reduced: the tiny random-weight Llama (hpcsynth/tinymodel.py), 3 documents, CPU; the mechanics only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
for _key, _value in {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
                     "TOKENIZERS_PARALLELISM": "false", "VLLM_CPU_KVCACHE_SPACE": "1"}.items():
    os.environ.setdefault(_key, _value)

# SmolLM2-1.7B-Instruct's architecture, from its published config.json
# (https://huggingface.co/HuggingFaceTB/SmolLM2-1.7B-Instruct/blob/main/config.json).
SMOLLM2_1_7B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
    "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24, "num_attention_heads": 32,
    "num_key_value_heads": 32, "vocab_size": 49152, "max_position_embeddings": 8192, "rope_theta": 130000,
    "rms_norm_eps": 1e-5, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "attention_bias": False, "mlp_bias": False,
}
FINEPHRASE_OUTPUT_MEAN = 359    # completion tokens per request, FinePhrase's published mean
FINEPHRASE_PROMPT_MEAN = 1150   # prompt tokens per request (~1,150: ../shared/notes/performance-anchors.md)
DATATROVE_CONCURRENCY = 500     # datatrove examples/inference/generate_data.py: max_concurrent_generations
GOAL_RATIO, GOAL_SPEC, GOAL_PLAIN = 0.98, 9200, 5300   # ours/LLM.generate; FinePhrase's tok/s per H100
WEB = ROOT.parent / "shared" / "data" / "web"


# ---- the model, the documents, the requests -------------------------------------------------------------

def build_smollm2_shape(out: Path) -> Path:
    """config.json of SmolLM2-1.7B-Instruct and a byte-level BPE of exactly its vocabulary size (trained on
    Python's own help texts and standard library, padded with reserved tokens if the text runs short), so
    every id the random model samples decodes. No weights: vLLM draws them (load_format dummy)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from hpcsynth.tinymodel import CHATML, SPECIAL_TOKENS, training_text

    if (out / "config.json").is_file() and (out / "tokenizer.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    vocab = SMOLLM2_1_7B["vocab_size"]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts, size = training_text(), 0
    for path in sorted(stdlib.rglob("*.py")):
        if "test" in path.parts or "site-packages" in path.parts or size > 12_000_000:
            continue
        texts.append(path.read_text(errors="replace"))
        size += len(texts[-1])
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(texts, trainer=trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    short = vocab - tokenizer.get_vocab_size()
    if short > 0:
        tokenizer.add_tokens([f"<|reserved_{i}|>" for i in range(short)])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>",
                                      pad_token="<|endoftext|>", bos_token="<|im_start|>")
    wrapped.chat_template = CHATML
    wrapped.save_pretrained(out)
    assert len(wrapped) == vocab, (len(wrapped), vocab)
    (out / "config.json").write_text(json.dumps(SMOLLM2_1_7B, indent=1) + "\n")
    return out


def source_texts() -> list[str]:
    """Common Crawl documents where the project's shared data is present, else Python's help texts (real
    English prose that ships with Python, so a machine without ../shared has text of the same kind)."""
    texts = []
    for path in sorted(WEB.glob("*.jsonl")) if WEB.is_dir() else []:
        texts += [orjson.loads(line)["text"] for line in path.read_bytes().splitlines() if line.strip()]
    if not texts:
        from hpcsynth.tinymodel import training_text

        texts = [t for t in training_text() if len(t) > 500]
    return texts


def write_corpus(path: Path, model: Path, prompts, count: int, prompt_tokens: int, seed: int, first: int = 0) -> None:
    """`count` documents cut to a drawn number of tokens (uniform 0.5-1.5x, so that prompts average about
    `prompt_tokens` with the instruction and chat template), each from its own text and the next ones."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model))
    overhead = statistics.mean(len(tokenizer.encode(tokenizer.apply_chat_template(
        p.render(""), add_generation_prompt=True, tokenize=False), add_special_tokens=False)) for p in prompts)
    budget = max(16, prompt_tokens - int(overhead))
    texts, rng = source_texts(), random.Random(f"docs:{seed}:{first}")
    with open(path, "wb") as handle:
        for i in range(first, first + count):
            want = max(8, round(budget * rng.uniform(0.5, 1.5)))
            ids: list[int] = []
            for k in range(len(texts)):
                ids += tokenizer.encode(texts[(i + k) % len(texts)] + "\n\n", add_special_tokens=False)
                if len(ids) >= want:
                    break
            text = tokenizer.decode(ids[:want])
            handle.write(orjson.dumps({"id": f"doc{i}", "text": text}) + b"\n")


def drawn_length(seed: int, mean: float, cap: int) -> int:
    """A request's output length, from its own seed: every path draws the same without sharing state."""
    return max(1, min(cap, round(random.Random(seed).gammavariate(2.0, mean / 2.0))))


def run_requests(run, config) -> list:
    """The Requests the worker sends for a planned run, in its order, made by the worker's own functions."""
    from hpcsynth.generate.engines import Request
    from hpcsynth.generate.shard import read_shard, record_seed, routed_pairs, truncate_document
    from hpcsynth.prompts import load_prompts

    prompts, out = load_prompts(config), []
    for shard in run.shard_ids():
        for doc, prompt in routed_pairs(read_shard(run, shard, None), prompts):
            text, _ = truncate_document(doc["text"], config.model.max_input_chars)
            out.append(Request(f"{doc['key']}/{prompt.name}", prompt.render(text),
                               record_seed(config.sampling.seed, doc["id"], prompt.name)))
    return out


def bench_config(args, model: Path, corpus: Path) -> dict:
    """FinePhrase's shipped config (configs/finephrase.yaml), pointed at the random model and the corpus."""
    from hpcsynth.config.load import read_yaml

    data, _ = read_yaml(ROOT / "configs" / "finephrase.yaml")
    data["model"].update(path=str(model), max_model_len=args.max_model_len)
    data["plan"].update(inputs=[str(corpus)], shard_docs=max(1, args.docs // 4), shard_tokens=10**9)
    data["sampling"]["extra"] = {"ignore_eos": True}  # lengths are the ones drawn, on every path
    vllm = data["vllm"]
    vllm["engine_args"] = {"load_format": "dummy"}    # random weights drawn by vLLM, nothing to load
    if not args.speculative:
        vllm.update(speculative_method="", num_speculative_tokens=0)
    if args.reduced:  # CPU: no CUDA graphs, a batch the tiny model fills
        vllm.update(enforce_eager=True, max_num_seqs=16, in_flight=0, max_num_batched_tokens=8192)
    for item in args.set:  # --set vllm.max_num_seqs=256: any key of the config, its value as YAML
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        data.setdefault(section, {})[name] = yaml.safe_load(value)
    return data


# ---- (a) and (b): one LLM in a child process --------------------------------------------------------------

def offline_phase(state_path: Path) -> None:
    import vllm

    from hpcsynth.config import config_from_dict
    from hpcsynth.generate.engines.vllm_args import sampling_kwargs
    from hpcsynth.generate.engines.vllm_offline import VllmEngine, platform_device
    from hpcsynth.generate.worker import WorkerSession
    from hpcsynth.plan import plan_corpus
    from hpcsynth.rundir import RunDir

    state = json.loads(state_path.read_text())
    config = config_from_dict(state["config"])
    mean, cap = state["output_mean"], config.sampling.max_tokens

    class DrawnLengthEngine(VllmEngine):
        """Our engine, but each request's max_tokens is its drawn length (a config has one for all)."""

        def _sampling(self, request, max_tokens):
            return super()._sampling(request, min(max_tokens, drawn_length(request.seed, mean, cap)))

    def ours(index: int) -> dict:
        run = RunDir(Path(state["work"]) / f"run{index}")
        plan_corpus(config, run)
        started = time.perf_counter()
        results = WorkerSession(run, engine, run.config(), "bench-gpu").work(run.shard_ids())
        seconds = time.perf_counter() - started
        assert all(r.state == "done" for r in results), results
        markers = [orjson.loads(run.done_path(s).read_bytes()) for s in run.shard_ids()]
        return row(sum(m["records"] + m["rejected"] for m in markers), sum(m["prompt_tokens"] for m in markers),
                   sum(m["completion_tokens"] for m in markers), seconds, sum(m["rejected"] for m in markers))

    def raw(requests: list) -> dict:
        tokenizer = engine.llm.get_tokenizer()
        started = time.perf_counter()
        prompts = [{"prompt_token_ids": tokenizer.encode(tokenizer.apply_chat_template(
            r.messages, add_generation_prompt=True, tokenize=False), add_special_tokens=False)} for r in requests]
        params = [vllm.SamplingParams(**sampling_kwargs(config, r.seed, drawn_length(r.seed, mean, cap)))
                  for r in requests]
        outputs = engine.llm.generate(prompts, params, use_tqdm=False)
        seconds = time.perf_counter() - started
        return row(len(outputs), sum(len(o.prompt_token_ids) for o in outputs),
                   sum(len(o.outputs[0].token_ids) for o in outputs), seconds,
                   sum(o.outputs[0].finish_reason not in ("stop", "length") for o in outputs))

    started = time.perf_counter()
    engine = DrawnLengthEngine(config)
    device = {"platform": platform_device(), "vllm": vllm.__version__,
              "engine_start_s": round(time.perf_counter() - started, 1)}
    try:  # through NVML on a GPU: no CUDA context in this process beside the engine's
        from vllm.platforms import current_platform

        device["name"] = str(current_platform.get_device_name(0))
    except Exception:
        device["name"] = device["platform"]
    try:
        raw(state_requests(state, "warmup"))  # first-call costs, on other documents
        rounds: dict[str, list] = {"ours": [], "llm_generate": []}
        requests = state_requests(state)
        for index in range(state["rounds"]):
            for name in (("llm_generate", "ours") if index % 2 == 0 else ("ours", "llm_generate")):
                engine.llm.reset_prefix_cache()
                rounds[name].append(ours(index) if name == "ours" else raw(requests))
                print(f"[bench_gpu] round {index} {name}: {rounds[name][-1]['tok_s']:,.0f} tok/s", flush=True)
    finally:
        engine.close()
    # The server's flags are made here, where vLLM is imported anyway: the parent never touches the GPU.
    kwargs = engine_args(config, device["platform"])
    Path(state["out"]).write_text(json.dumps({"device": device, "rounds": rounds, "kwargs": kwargs,
                                              "flags": server_flags(kwargs)}))


def engine_args(config, platform: str) -> dict:
    """The keyword arguments our engine hands vllm.LLM (the server gets the same as flags)."""
    from hpcsynth.generate.engines.vllm_args import engine_kwargs
    from hpcsynth.generate.engines.vllm_offline import cpu_prefill_whole

    kwargs = {"disable_log_stats": False, **engine_kwargs(config)}
    return cpu_prefill_whole(kwargs) if platform == "cpu" else kwargs


def state_requests(state: dict, key: str = "requests") -> list:
    from hpcsynth.generate.engines import Request

    return [Request(r["record_id"], r["messages"], r["seed"]) for r in state[key]]


def row(requests: int, prompt_tokens: int, output_tokens: int, seconds: float, failed: int = 0) -> dict:
    return {"requests": requests, "prompt_tokens": prompt_tokens, "output_tokens": output_tokens,
            "seconds": round(seconds, 3), "tok_s": round(output_tokens / seconds, 1), "failed": failed}


# ---- (c): vllm serve and an async OpenAI client -----------------------------------------------------------

def server_flags(kwargs: dict) -> list[str]:
    """vllm.LLM's keyword arguments as `vllm serve` flags, read back with vLLM's own parser: the server
    gets the settings the offline engine got, or the bench stops here."""
    from vllm.engine.arg_utils import EngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = EngineArgs.add_cli_args(FlexibleArgumentParser())
    optional = {a.dest for a in parser._actions if isinstance(a, argparse.BooleanOptionalAction)}
    flags = ["--model", str(kwargs["model"])]
    for key, value in kwargs.items():
        name = key.replace("_", "-")
        if key == "model" or value is None or (value is False and key not in optional):
            continue  # a plain store_true flag left off is its default
        if isinstance(value, bool):
            flags.append(f"--{name}" if value else f"--no-{name}")
        else:
            flags += [f"--{name}", json.dumps(value) if isinstance(value, (dict, list)) else str(value)]
    parsed = vars(parser.parse_args(flags))
    differ = {k: (v, parsed.get(k)) for k, v in kwargs.items()
              if k != "model" and parsed.get(k) != v and not (isinstance(v, dict) and parsed.get(k) == json.dumps(v))}
    if differ:
        raise SystemExit(f"bench_gpu: the server's flags would not mean the offline settings: {differ}")
    return flags


def start_server(flags: list[str], log_path: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    env["VLLM_SERVER_DEV_MODE"] = "1"  # POST /reset_prefix_cache between passes, as offline does
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *flags, "--host", "127.0.0.1",
               "--port", str(port), "--disable-uvicorn-access-log"]
    with open(log_path, "wb") as log:
        # Its own process group: stopping the group by its leader's PID takes the engine process along.
        process = subprocess.Popen(guarded(command), env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    return process, f"http://127.0.0.1:{port}"


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the process group we created for a child (named by its PID: a group id stays taken while
    any member lives, so it names only what our child started), SIGKILL to what is left after 30 s."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        process.poll()
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=10)


def guarded(command: list[str]) -> list[str]:
    """`command` run under this bench's guard (see `guard`), as the leader of a new process group."""
    return [sys.executable, __file__, "--guard", str(os.getpid()), "--", *command]


def guard(bench: int, command: list[str]) -> int:
    """Leader of a child's process group: runs the child (the offline phase, the server), and ends the whole
    group, engine processes included, when the child ends or the bench that started it is gone, even killed
    by SIGKILL, which no finally block sees. Its exit status is the child's. stop_group's SIGTERM ends the
    child; the guard stays a moment to end what the child left in the group."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen(command, preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    while child.poll() is None and os.getppid() == bench:
        time.sleep(0.5)
    os.killpg(0, signal.SIGTERM)  # the child if the bench is gone, and whatever the child left behind
    deadline = time.monotonic() + 30
    while (child.poll() is None or group_members()) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in group_members():
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    child.wait()
    return child.returncode if child.returncode >= 0 else 128 - child.returncode


def group_members() -> list[int]:
    """The live processes of this process's group but itself (Linux /proc)."""
    me, group, out = os.getpid(), os.getpgid(0), []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != me:
            try:
                state = Path(f"/proc/{name}/stat").read_text().rsplit(") ", 1)[-1][:1]
                if os.getpgid(int(name)) == group and state != "Z":  # a zombie is dead, left to be reaped
                    out.append(int(name))
            except OSError:
                pass
    return out


def call(url: str, method: str = "GET", timeout: float = 5) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1, never a proxy
    with opener.open(urllib.request.Request(url, method=method), timeout=timeout) as response:
        return response.status


def wait_healthy(base: str, process: subprocess.Popen, log_path: Path, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"bench_gpu: vllm serve exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if call(f"{base}/health", timeout=2) == 200:
                return
        except OSError:
            pass
        time.sleep(1)
    raise SystemExit(f"bench_gpu: vllm serve not healthy after {limit_s:.0f}s:\n{log_path.read_text()[-3000:]}")


async def serve_pass(base: str, model: str, requests: list, config, mean: float, concurrency: int) -> dict:
    import httpx
    import openai

    from hpcsynth.generate.engines.vllm_args import sampling_kwargs

    cap = config.sampling.max_tokens
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(3600.0), trust_env=False) as http:
        client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="EMPTY", max_retries=0, http_client=http)
        gate = asyncio.Semaphore(concurrency)

        async def one(request) -> tuple[int, int, str]:
            body = sampling_kwargs(config, request.seed, drawn_length(request.seed, mean, cap))
            named = {k: body.pop(k) for k in ("temperature", "top_p", "max_tokens", "seed")}
            async with gate:  # top_k, ignore_eos: vLLM's extensions of the OpenAI body
                answer = await client.chat.completions.create(model=model, messages=request.messages,
                                                              extra_body=body, **named)
            return answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.choices[0].finish_reason

        started = time.perf_counter()
        done = await asyncio.gather(*(one(r) for r in requests))
        seconds = time.perf_counter() - started
    return row(len(done), sum(p for p, _, _ in done), sum(c for _, c, _ in done), seconds,
               sum(f not in ("stop", "length") for _, _, f in done))


def serve_phase(state: dict, config, offline: dict, work: Path, start_limit_s: float) -> tuple[list, dict]:
    kwargs, flags = offline["kwargs"], offline["flags"]
    log_path = work / "server.log"
    started = time.perf_counter()
    process, base = start_server(flags, log_path)
    rounds, info = [], {"flags": flags, "log": str(log_path), "pid": process.pid}
    try:
        wait_healthy(base, process, log_path, start_limit_s)
        info["start_s"] = round(time.perf_counter() - started, 1)
        mean, model = state["output_mean"], str(kwargs["model"])
        asyncio.run(serve_pass(base, model, state_requests(state, "warmup"), config, mean, state["concurrency"]))
        for index in range(state["rounds"]):
            try:
                info["prefix_cache_reset"] = call(f"{base}/reset_prefix_cache", "POST", 60) == 200
            except OSError:
                info["prefix_cache_reset"] = False
            rounds.append(asyncio.run(serve_pass(base, model, state_requests(state), config, mean,
                                                 state["concurrency"])))
            print(f"[bench_gpu] round {index} serve: {rounds[-1]['tok_s']:,.0f} tok/s", flush=True)
    finally:
        stop_group(process)
    return rounds, info


# ---- the whole bench ---------------------------------------------------------------------------------------

def as_state(requests: list) -> list[dict]:
    return [{"record_id": r.record_id, "messages": r.messages, "seed": r.seed} for r in requests]


def prepare(args, work: Path):
    from hpcsynth.config import config_from_dict
    from hpcsynth.generate.engines import Request
    from hpcsynth.generate.shard import record_seed
    from hpcsynth.plan import plan_corpus
    from hpcsynth.prompts import load_prompts
    from hpcsynth.rundir import RunDir

    if args.reduced:
        from hpcsynth.tinymodel import build_tiny_model

        model = build_tiny_model(work / "tiny")
    else:
        model = build_smollm2_shape(work / "smollm2-1.7b-shape")
    data = bench_config(args, model, work / "corpus.jsonl")
    data["sampling"]["seed"] = args.seed
    config = config_from_dict(data)
    prompts = load_prompts(config)
    write_corpus(work / "corpus.jsonl", model, prompts, args.docs, args.prompt_tokens, args.seed)
    write_corpus(work / "warmup.jsonl", model, prompts, args.warmup_docs, args.prompt_tokens, args.seed, args.docs)
    run = RunDir(work / "requests")
    plan_corpus(config, run)
    requests = run_requests(run, config)
    warm = [orjson.loads(line) for line in (work / "warmup.jsonl").read_bytes().splitlines()]
    warmup = [Request(f"{d['id']}/{p.name}", p.render(d["text"]), record_seed(args.seed, d["id"], p.name))
              for d in warm for p in prompts]
    state = {"config": data, "work": str(work), "out": str(work / "offline.json"), "rounds": args.rounds,
             "output_mean": args.output_mean, "concurrency": args.concurrency,
             "requests": as_state(requests), "warmup": as_state(warmup)}
    return config, state


def run_offline(state: dict, work: Path, reduced: bool) -> dict:
    path = work / "state.json"
    path.write_text(json.dumps(state))
    env = dict(os.environ)
    if reduced:  # CPU: the engine core in the child's own process starts in ~5 s instead of ~16 s
        env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    process = subprocess.Popen(guarded([sys.executable, __file__, "--phase", "offline", "--state", str(path)]),
                               env=env, start_new_session=True)
    try:
        if process.wait() != 0:
            raise SystemExit(f"bench_gpu: the offline phase ((a) ours, (b) LLM.generate) failed: exit "
                             f"{process.returncode}")
    finally:
        stop_group(process)  # interrupted, or an engine process left behind: the group goes
    return json.loads(Path(state["out"]).read_text())


def median_row(rounds: list[dict], gpus: int) -> dict:
    middle = statistics.median_low(r["tok_s"] for r in rounds)
    chosen = dict(next(r for r in rounds if r["tok_s"] == middle))
    chosen["tok_s_per_gpu"] = round(chosen["tok_s"] / gpus, 1)
    chosen["rounds_tok_s"] = [r["tok_s"] for r in rounds]
    return chosen


def report(args, config, state: dict, offline: dict, serve_rounds: list, serve_info: dict) -> dict:
    gpus = max(1, config.vllm.tensor_parallel_size)
    rows = {"ours": median_row(offline["rounds"]["ours"], gpus),
            "llm_generate": median_row(offline["rounds"]["llm_generate"], gpus),
            "serve": median_row(serve_rounds, gpus)}
    ratios = {"ours_over_llm_generate": round(rows["ours"]["tok_s_per_gpu"] / rows["llm_generate"]["tok_s_per_gpu"], 4),
              "ours_over_serve": round(rows["ours"]["tok_s_per_gpu"] / rows["serve"]["tok_s_per_gpu"], 4)}
    cap = config.sampling.max_tokens
    drawn = sum(drawn_length(r["seed"], args.output_mean, cap) for r in state["requests"])
    device = offline["device"]
    result = {
        "mode": "reduced" if args.reduced else "gpu", "device": device, "gpus": gpus,
        "model": "tiny random Llama (hpcsynth/tinymodel.py)" if args.reduced else
                 "SmolLM2-1.7B-Instruct architecture, random weights (load_format dummy)",
        "documents": args.docs, "prompts": list(config.prompts), "requests": len(state["requests"]),
        "output_mean_target": args.output_mean, "drawn_output_tokens": drawn, "seed": args.seed,
        "speculative": bool(config.vllm.speculative_method), "concurrency": args.concurrency,
        "rounds": args.rounds, "engine_kwargs": offline["kwargs"], "server": serve_info,
        "load_average": os.getloadavg()[0], "rows": rows, "ratios": ratios,
    }
    labels = {"ours": "(a) hpcsynth worker (WorkerSession + VllmEngine)", "llm_generate": "(b) vLLM LLM.generate",
              "serve": f"(c) vllm serve + AsyncOpenAI x{args.concurrency}"}
    where = device.get("name") or device["platform"]
    print(f"\n{result['model']} on {where} (vLLM {device['vllm']}), {len(state['requests'])} requests "
          f"({args.docs} documents x {len(config.prompts)} prompts), outputs drawn: {drawn:,} tokens "
          f"(mean {drawn / len(state['requests']):.1f}, target {args.output_mean}), {args.rounds} round(s), "
          f"speculative decoding {'on' if result['speculative'] else 'off'}")
    print(f"{'path':<52}{'requests':>9}{'prompt tok':>12}{'output tok':>12}{'seconds':>9}{'tok/s per GPU':>15}")
    for name, label in labels.items():
        r = rows[name]
        print(f"{label:<52}{r['requests']:>9,}{r['prompt_tokens']:>12,}{r['output_tokens']:>12,}"
              f"{r['seconds']:>9.1f}{r['tok_s_per_gpu']:>15,.0f}")
    print(f"ours/LLM.generate {ratios['ours_over_llm_generate']:.3f}x, ours/serve {ratios['ours_over_serve']:.3f}x")
    if args.reduced:
        print("reduced mode: a tiny model on CPU; these rates say nothing about GPU speed")
    else:
        goal = GOAL_SPEC if result["speculative"] else GOAL_PLAIN
        met = {True: "met", False: "NOT met"}
        print(f"goals: ours >= {GOAL_RATIO}x LLM.generate: {met[ratios['ours_over_llm_generate'] >= GOAL_RATIO]}; "
              f"ours >= {goal:,} tok/s per GPU (FinePhrase's H100 figure with speculative decoding "
              f"{'on' if result['speculative'] else 'off'}): {met[rows['ours']['tok_s_per_gpu'] >= goal]}")
    return result


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reduced", action="store_true", help="tiny model, a handful of requests, CPU")
    parser.add_argument("--json", help="write the result here")
    parser.add_argument("--docs", type=int, help="documents x 4 prompts = requests (default 256; reduced 3)")
    parser.add_argument("--rounds", type=int, default=1, help="passes per path; the median is reported")
    parser.add_argument("--output-mean", type=float, default=FINEPHRASE_OUTPUT_MEAN)
    parser.add_argument("--prompt-tokens", type=int, default=FINEPHRASE_PROMPT_MEAN, help="mean prompt length")
    parser.add_argument("--concurrency", type=int, default=DATATROVE_CONCURRENCY, help="requests open on (c)")
    parser.add_argument("--speculative", action="store_true", help="FinePhrase's suffix decoding, 32 tokens")
    parser.add_argument("--max-model-len", type=int, help="default 8192 (SmolLM2); reduced 4096")
    parser.add_argument("--warmup-docs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=YAML",
                        help="override a config key on all three paths, e.g. vllm.max_num_seqs=256")
    parser.add_argument("--server-start-s", type=float, default=900, help="limit for vllm serve to be healthy")
    parser.add_argument("--work", help="a new directory to keep the model, runs and server log in "
                                       "(default: a temporary one)")
    parser.add_argument("--phase", choices=["offline"], help=argparse.SUPPRESS)
    parser.add_argument("--state", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.docs = args.docs or (3 if args.reduced else 256)
    args.max_model_len = args.max_model_len or (4096 if args.reduced else SMOLLM2_1_7B["max_position_embeddings"])
    return args


def main() -> None:
    if sys.argv[1:2] == ["--guard"]:  # --guard BENCH_PID -- COMMAND...
        sys.exit(guard(int(sys.argv[2]), sys.argv[4:]))
    args = parse_args()
    # SIGTERM (a job's time limit, a test's timeout) unwinds like Ctrl-C: the finally blocks stop the server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.phase == "offline":
        offline_phase(Path(args.state))
        return
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        work = Path(args.work or tmp)
        if work.exists() and any(work.iterdir()) and args.work:  # a finished run in it would be skipped
            raise SystemExit(f"bench_gpu: --work {work} is not empty; name a new directory")
        work.mkdir(parents=True, exist_ok=True)
        config, state = prepare(args, work)
        offline = run_offline(state, work, args.reduced)
        serve_rounds, serve_info = serve_phase(state, config, offline, work, args.server_start_s)
        result = report(args, config, state, offline, serve_rounds, serve_info)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
