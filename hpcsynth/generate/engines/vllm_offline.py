"""The vLLM engine (model.engine: vllm): production generation, driven step by step, fed continuously.

The worker's request stream is pulled lazily: the engine keeps up to max_num_seqs + in_flight requests
inside vLLM and adds a new one as soon as one finishes, so the batch never drains while the stream lasts.
Prompts are rendered with the model's own chat template and submitted as token ids, which lets us count
them and reject an over-long prompt ourselves instead of letting vLLM raise mid-stream.

vLLM starts its engine core in a spawned process (unless VLLM_ENABLE_V1_MULTIPROCESSING=0): a script that
builds this engine must do so under `if __name__ == "__main__":`.

Telemetry (KV-cache use, prefix-cache hits, speculative acceptance, queue, preemptions) is what vLLM's
own statistics say, read with `LLM.get_metrics()`: vLLM records them into its Prometheus registry in this
process as it steps, so reading them asks nothing of the engine (see `telemetry`).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from hpcsynth.config import Config
from hpcsynth.generate.engines.protocol import Completion, Request
from hpcsynth.generate.engines.feed import Feeder
from hpcsynth.generate.engines.telemetry import COUNTERS, from_vllm_metrics
from hpcsynth.generate.engines.vllm_args import check_vllm_args, engine_kwargs, sampling_kwargs
from hpcsynth.errors import EngineError
from hpcsynth.optional import require


# vLLM reports usage statistics to its developers by default; nothing of a run leaves the machine. Set
# before vllm is imported (it reads them at import and in its engine process, which inherits them).
NO_TELEMETRY = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


def platform_device() -> str:
    """The device type of the platform vLLM chose ("cuda", "cpu", "rocm"...), or "" if it cannot say."""
    try:
        from vllm.platforms import current_platform

        return str(current_platform.device_type or "")
    except Exception:  # an older or odd vLLM: status falls back to CUDA_VISIBLE_DEVICES
        return ""


def refuse_cpu_speculation(config: Config, device: str) -> None:
    """Speculative decoding on vLLM's CPU build: refused in one line before vLLM starts.

    Every hpcsynth record samples with its own seed (the same record on every rerun). vLLM's CPU runner
    crashes ('CPU Generator does not use offset') as soon as a speculative method drafts tokens for a
    seeded request, which repetitive text makes n-gram speculation do within seconds. Speculation is a
    GPU speed-up; a CPU run is for trying the pipeline, and gives the same records without it.
    """
    asked = config.vllm.speculative_method or config.vllm.engine_args.get("speculative_config")
    if device == "cpu" and asked:
        raise EngineError("speculative decoding on vLLM's CPU build crashes on the per-record seeds hpcsynth "
                          "samples with (vLLM: 'CPU Generator does not use offset'); drop "
                          "vllm.speculative_method and vllm.engine_args.speculative_config for a CPU run "
                          "(speculation is a GPU speed-up; the records are the same without it)")


def cpu_prefill_whole(kwargs: dict[str, Any]) -> dict[str, Any]:
    """vLLM's CPU build crashes ('CPU Generator does not use offset') when a seeded request's prefill is
    split across engine steps (chunked prefill rewinds its generator, which CPU generators cannot do),
    and every hpcsynth record is seeded. So on CPU each prompt is prefilled whole: chunked prefill off, a
    step's token budget at least one whole prompt. An explicit `enable_chunked_prefill: true` is refused."""
    if kwargs.get("enable_chunked_prefill"):
        raise EngineError("vllm.engine_args.enable_chunked_prefill: true crashes vLLM's CPU build on the "
                          "per-record seeds hpcsynth samples with (vLLM: 'CPU Generator does not use offset'); "
                          "drop it for a CPU run (GPUs are not affected)")
    budget = max(int(kwargs.get("max_num_batched_tokens") or 0), int(kwargs.get("max_model_len") or 0))
    return {**kwargs, "enable_chunked_prefill": False, "max_num_batched_tokens": budget}


class VllmEngine:
    telemetry_source = "vllm"
    telemetry_scope = "engine"  # its counters start at zero with it (TelemetryLog)

    def __init__(self, config: Config) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # hpcsynth never downloads a model
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        os.environ.update(NO_TELEMETRY)
        require("vllm", extra="vllm", for_what="model.engine=vllm; on CPU see docs/engines.md")
        try:  # vLLM is there: a failure now is a vLLM other than the one pinned
            import vllm
            from vllm.exceptions import VLLMClientError
            from vllm.inputs import tokens_input
            from vllm.sampling_params import RequestOutputKind
        except ImportError as exc:
            raise EngineError(f"model.engine=vllm needs the vLLM that pyproject.toml pins; this one lacks what "
                              f"hpcsynth uses ({exc}); see docs/engines.md (tools/setup_vllm_lane.sh for CPU)"
                              ) from None
        check_vllm_args(config)
        self.config = config
        # What vLLM computes on: a CPU build with CUDA_VISIBLE_DEVICES set (launch --workers N sets it)
        # is still CPU time, and a GPU workstation without it is still GPU time (clock.engine_device).
        self.device = platform_device()
        refuse_cpu_speculation(config, self.device)
        self.model_id = config.model.path
        self.revision = config.model.revision
        self.max_model_len = config.model.max_model_len
        # Room inside vLLM: a full batch plus a queue, so a finished slot refills without waiting on us.
        self.capacity = max(1, config.vllm.max_num_seqs + config.vllm.in_flight)
        self._vllm = vllm
        self._client_errors = (VLLMClientError, ValueError)
        self._tokens_input = tokens_input
        self._final_only = RequestOutputKind.FINAL_ONLY
        # vLLM detokenizes every token as it comes (a Rust call and Python around it per token, on the
        # thread that steps the engine); we only want the final text, so we decode each record once when
        # it finishes. Stop strings are matched on text, so with them vLLM keeps detokenizing.
        self._detokenize = "stop" in config.sampling.extra
        self._ids = itertools.count()
        self.max_num_seqs = config.vllm.max_num_seqs
        # Counters of engines this one replaced (step_down restarts vLLM, whose counters start again at
        # zero), and the last reading of a closed engine: telemetry stays one worker's whole story.
        self._carried: dict[str, float] = {}
        self._final: dict[str, float] | None = None
        self._telemetry_lock = threading.Lock()
        self.llm: Any = None
        self._start()

    def _start(self) -> None:
        # vLLM's offline LLM keeps no statistics unless asked; with them on it records, each step, what
        # `vllm serve` records by default (and logs a throughput line every VLLM_LOG_STATS_INTERVAL
        # seconds). vllm.engine_args.disable_log_stats: true turns them off, and telemetry with them.
        kwargs = {"disable_log_stats": False, **engine_kwargs(self.config, self.max_num_seqs)}
        if self.device == "cpu":
            kwargs = cpu_prefill_whole(kwargs)
        try:
            self.llm = self._vllm.LLM(**kwargs)
        # TypeError: a pass-through value of the wrong type; ImportError: a feature needing a package
        # (suffix decoding needs arctic-inference).
        except (OSError, ValueError, TypeError, ImportError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EngineError(f"vLLM cannot start with model.path={self.config.model.path!r} and the "
                              f"vllm.* settings: {first}") from None
        self.engine = self.llm.llm_engine
        self.tokenizer = self.llm.get_tokenizer()

    def step_down(self) -> str:
        """After an out-of-memory error: restart vLLM with half the sequences (it cannot shrink live)."""
        if self.max_num_seqs <= 1:
            return ""
        before = self.max_num_seqs
        self.max_num_seqs //= 2
        self.capacity = max(1, self.max_num_seqs + self.config.vllm.in_flight)
        self.close()
        self._start()
        return f"max_num_seqs {before} -> {self.max_num_seqs} (engine restarted)"

    def generate(self, requests: Iterable[Request]) -> Iterator[Completion]:
        feeder = Feeder(requests, self.capacity)
        inside: dict[str, _Inside] = {}  # our vLLM request id -> what we need to report it
        try:
            while True:
                for request in feeder.refill(len(inside)):
                    rejected = self._submit(request, inside)
                    if rejected is not None:
                        yield rejected
                if not inside:
                    if feeder.exhausted:
                        return
                    continue  # everything taken was rejected: take more
                for output in self.engine.step():
                    if output.finished and output.request_id in inside:
                        yield _completion(inside.pop(output.request_id), output, self._decode)
        finally:
            if inside:  # the consumer stopped early or failed: don't leave vLLM generating for nobody
                self.engine.abort_request(list(inside))

    def telemetry(self) -> dict[str, float] | None:
        """One reading of vLLM's statistics (engines/telemetry.py), or None when they are off.

        `LLM.get_metrics()` copies vLLM's Prometheus registry of this process (~2 ms): it touches
        neither the scheduler nor the engine core, and prometheus_client guards each value with its own
        lock, so the clock's thread reads it while the worker's thread steps the engine. The registry is
        the process's: one engine per worker process (a second LLM in the process takes it over). The
        lock keeps a reading whole across close() and a step-down's restart: never an old engine's
        counters with the carried ones already added."""
        with self._telemetry_lock:
            return self._read_telemetry()

    def _read_telemetry(self) -> dict[str, float] | None:
        llm = self.llm
        if llm is None:
            return self._final
        if not getattr(getattr(llm, "llm_engine", None), "log_stats", False):
            return None  # vllm.engine_args.disable_log_stats: true (get_metrics would assert)
        try:
            reading = from_vllm_metrics(llm.get_metrics())
        except Exception:  # a vLLM whose metrics differ: no telemetry, never a failed worker
            return None
        for key, carried in self._carried.items():
            reading[key] = reading.get(key, 0.0) + carried
        return reading

    def close(self) -> None:
        with self._telemetry_lock:  # the last numbers, kept for the clock's last write and a restart
            final = self._read_telemetry() if self.llm is not None else None
            if final is not None:
                self._final = final
                self._carried = {k: final[k] for k in COUNTERS if k in final}
            self.llm = None
        engine_core = getattr(self.engine, "engine_core", None)
        if engine_core is not None and hasattr(engine_core, "shutdown"):
            engine_core.shutdown()
        self.engine = None

    def render(self, request: Request) -> list[int]:
        """Chat template (with the assistant turn opened) -> token ids, as vLLM's server renders it."""
        text = self.tokenizer.apply_chat_template(request.messages, add_generation_prompt=True,
                                                  tokenize=False)
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _submit(self, request: Request, inside: dict[str, _Inside]) -> Completion | None:
        try:
            ids = self.render(request)
        except Exception as exc:  # a malformed conversation is this request's problem, not the run's
            return _rejected(request, 0, f"cannot render the chat template: {exc}")
        room = self.max_model_len - len(ids)
        if room < 1:
            return _rejected(request, len(ids), f"prompt has {len(ids)} tokens; model.max_model_len is "
                                                f"{self.max_model_len} (no room to generate)")
        params = self._sampling(request, min(self.config.sampling.max_tokens, room))
        request_id = str(next(self._ids))
        try:
            self.engine.add_request(request_id, self._tokens_input(ids), params)
        except self._client_errors as exc:
            return _rejected(request, len(ids), f"vLLM refused the request: {exc}")
        inside[request_id] = _Inside(request, len(ids), time.monotonic())
        return None

    def _sampling(self, request: Request, max_tokens: int) -> Any:
        return self._vllm.SamplingParams(**sampling_kwargs(self.config, request.seed, max_tokens),
                                         output_kind=self._final_only, detokenize=self._detokenize)

    def _decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)


@dataclass(frozen=True)
class _Inside:
    request: Request
    prompt_tokens: int
    started: float


def _completion(inside: _Inside, output: Any, decode) -> Completion:
    result = output.outputs[0]
    seconds = time.monotonic() - inside.started
    if result.finish_reason in ("stop", "length"):
        text = result.text if result.text else decode(result.token_ids)
        return Completion(inside.request.record_id, text, result.finish_reason, inside.prompt_tokens,
                          len(result.token_ids), seconds=seconds)
    # vLLM aborted it (e.g. an engine-side limit): no usable text, so report it like any rejection.
    return _rejected(inside.request, inside.prompt_tokens,
                     f"vLLM finished the request with {result.finish_reason!r}")


def _rejected(request: Request, prompt_tokens: int, reason: str) -> Completion:
    return Completion(request.record_id, "", "rejected", prompt_tokens, 0, reason)
