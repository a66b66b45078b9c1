"""A model-free engine: deterministic text from the prompt, with faults on demand.

For fast unit tests and fault injection; every path it covers is also tested with a real model.
Faults come from the HPCSYNTH_FAKE_FAULTS environment variable (JSON), so that a worker started in
another process (a subprocess, a Slurm job) misbehaves the same way:
  delay_s      seconds per completion (so tests can kill a worker mid-shard)
  reject_on    prompts containing this text are rejected, as an over-long document would be
  hang_on      the engine stops producing once it is given a prompt containing this text
  oom_above    raises a CUDA-style out-of-memory error while its concurrency is above this
  crash_on     raises a plain error on a prompt containing this text
  count_to     a file to which every generated record id is appended (tests count generations across
               processes: a record generated twice shows twice)
  fail_start   raises a plain error with this message when the engine is built (a broken install)
  no_telemetry the engine reports no telemetry (as a server without /metrics)
  preempt_every one preemption counted every this many completions
  step_s       seconds per engine step of `concurrency` completions: throughput grows with the batch, as a
               GPU's does until its memory is full (tests of `hpcsynth tune` pick a winner by it)
  segv_at      the process dies of SIGSEGV when its concurrency is this (a crashing CUDA kernel)
  hang_at      the engine hangs when its concurrency is this (a trial that never finishes)

Its telemetry is synthetic and follows from what it generated, so status's telemetry path is tested
without a model: per completion of P prompt and C completion tokens, 4P prefix-cache queries of which
3P hit (a 0.75 hit rate), C drafts of 2C tokens of which C are accepted (a 0.5 acceptance rate);
KV-cache use 0.25 with one request running while it generates, 0 and none after; nothing waits.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from collections.abc import Iterable, Iterator

from hpcsynth.config import Config
from hpcsynth.generate.engines.protocol import Completion, Request
from hpcsynth.generate.engines.telemetry import COUNTERS


class FakeEngine:
    revision = ""
    telemetry_source = "fake"
    telemetry_scope = "engine"

    def __init__(self, config: Config, **faults) -> None:
        self.model_id = config.model.path or "fake"
        self.max_tokens = config.sampling.max_tokens
        self.concurrency = config.worker.batch_size
        env = os.environ.get("HPCSYNTH_FAKE_FAULTS", "")
        self.faults = {**(json.loads(env) if env else {}), **faults}
        if self.faults.get("fail_start"):
            raise RuntimeError(self.faults["fail_start"])
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.completions = 0
        self.generating = False

    def generate(self, requests: Iterable[Request]) -> Iterator[Completion]:
        self.generating = True
        try:
            yield from self._generate(requests)
        finally:
            self.generating = False

    def telemetry(self) -> dict[str, float] | None:
        if self.faults.get("no_telemetry"):
            return None
        busy = 1.0 if self.generating else 0.0
        return {"kv_cache_usage": 0.25 * busy, "requests_running": busy, "requests_waiting": 0.0,
                **{k: float(v) for k, v in self.counters.items()}}

    def _count(self, completion: Completion) -> Completion:
        prompt, made = completion.prompt_tokens, completion.completion_tokens
        self.completions += 1
        every = int(self.faults.get("preempt_every") or 0)
        for key, added in (("prefix_cache_queries", 4 * prompt), ("prefix_cache_hits", 3 * prompt),
                           ("spec_drafts", made), ("spec_draft_tokens", 2 * made), ("spec_accepted_tokens", made),
                           ("preemptions", 1 if every > 0 and self.completions % every == 0 else 0)):
            self.counters[key] += added
        return completion

    def _generate(self, requests: Iterable[Request]) -> Iterator[Completion]:
        faults = self.faults
        if faults.get("segv_at") is not None and self.concurrency == faults["segv_at"]:
            os.kill(os.getpid(), signal.SIGSEGV)
        if faults.get("hang_at") is not None and self.concurrency == faults["hang_at"]:
            while True:
                time.sleep(0.05)
        for index, request in enumerate(requests):
            if faults.get("step_s") and index % max(1, self.concurrency) == 0:
                time.sleep(faults["step_s"])
            prompt = request.messages[-1]["content"]
            if faults.get("oom_above") is not None and self.concurrency > faults["oom_above"]:
                raise RuntimeError(f"CUDA out of memory (injected at concurrency {self.concurrency})")
            if faults.get("crash_on") and faults["crash_on"] in prompt:
                raise RuntimeError("engine crashed (injected)")
            if faults.get("hang_on") and faults["hang_on"] in prompt:
                while True:
                    time.sleep(0.05)
            if faults.get("delay_s"):
                time.sleep(faults["delay_s"])
            prompt_tokens = len(prompt.split())
            if faults.get("reject_on") and faults["reject_on"] in prompt:
                yield self._count(Completion(request.record_id, "", "rejected", prompt_tokens, 0,
                                             "fake: rejected on marker"))
                continue
            if faults.get("count_to"):
                with open(faults["count_to"], "a") as handle:
                    handle.write(request.record_id + "\n")
            words = _words(request, self.max_tokens)
            finish = "length" if len(words) == self.max_tokens else "stop"
            yield self._count(Completion(request.record_id, " ".join(words), finish, prompt_tokens, len(words)))

    def step_down(self) -> str:
        if self.concurrency <= 1:
            return ""
        before, self.concurrency = self.concurrency, self.concurrency // 2
        return f"concurrency {before} -> {self.concurrency}"

    def close(self) -> None:
        pass


def _words(request: Request, limit: int) -> list[str]:
    digest = hashlib.sha256(f"{request.record_id}:{request.seed}".encode()).hexdigest()
    source = request.messages[-1]["content"].split()
    count = min(limit, 8 + int(digest[:4], 16) % 40)
    return [source[(int(digest[i % 60:i % 60 + 4], 16) + i) % len(source)] for i in range(count)]
