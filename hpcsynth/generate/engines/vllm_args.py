"""What our config hands vLLM: the keyword arguments of vllm.LLM and of SamplingParams.

The typed keys (model.*, vllm.*, sampling.*) cover the FinePhrase recipe; `vllm.engine_args` and
`sampling.extra` pass anything else through as given. vLLM's own signatures decide what is valid, so a
misspelt name is refused before a Slurm job starts (at launch, where vLLM is installed) and again when
the engine starts, with the list of names this vLLM accepts, instead of surfacing minutes into a job.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import inspect
from typing import Any

from hpcsynth.config import Config
from hpcsynth.errors import ConfigError
from hpcsynth.optional import require

# Arguments we set per request or that would break the engine's contract with the worker.
RESERVED_SAMPLING = {"n", "output_kind", "detokenize"}


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def engine_kwargs(config: Config, max_num_seqs: int | None = None) -> dict[str, Any]:
    """config.model + config.vllm -> keyword arguments of vllm.LLM."""
    model, opts = config.model, config.vllm
    kwargs: dict[str, Any] = dict(
        model=model.path, dtype=model.dtype, max_model_len=model.max_model_len,
        max_num_seqs=max_num_seqs or opts.max_num_seqs, max_num_batched_tokens=opts.max_num_batched_tokens,
        gpu_memory_utilization=opts.gpu_memory_utilization, enable_prefix_caching=opts.enable_prefix_caching,
        enforce_eager=opts.enforce_eager, tensor_parallel_size=opts.tensor_parallel_size,
        kv_cache_dtype=opts.kv_cache_dtype, seed=config.sampling.seed,
    )
    if model.revision:
        kwargs["revision"] = model.revision
    if opts.speculative_method:
        kwargs["speculative_config"] = {"method": opts.speculative_method,
                                        "num_speculative_tokens": opts.num_speculative_tokens}
    # Named keys win conflicts by construction: config/checks.py refuses pass-through names that they set.
    kwargs.update(opts.engine_args)
    return kwargs


def sampling_kwargs(config: Config, seed: int, max_tokens: int) -> dict[str, Any]:
    """config.sampling -> keyword arguments of vllm.SamplingParams for one request."""
    sampling = config.sampling
    return {**sampling.extra, "temperature": sampling.temperature, "top_p": sampling.top_p,
            "top_k": sampling.top_k if sampling.top_k > 0 else -1,  # our 0 means off; vLLM's off is -1
            "max_tokens": max_tokens, "seed": seed}


def check_vllm_args(config: Config) -> None:
    """Refuse pass-through names that this vLLM does not accept, listing the ones it does."""
    if not (config.vllm.engine_args or config.sampling.extra):
        return
    engine_names, sampling_names = accepted_names()
    for name in config.vllm.engine_args:
        if name not in engine_names:
            raise ConfigError(f"vllm.engine_args.{name} is not an argument of vllm.LLM in this vLLM"
                              f"{_did_you_mean(name, engine_names)}; valid names: {', '.join(sorted(engine_names))}")
    allowed = sampling_names - RESERVED_SAMPLING
    for name in config.sampling.extra:
        if name not in allowed:
            raise ConfigError(f"sampling.extra.{name} is not a vLLM SamplingParams argument hpcsynth passes "
                              f"through{_did_you_mean(name, allowed)}; valid names: {', '.join(sorted(allowed))}")


def _did_you_mean(name: str, names: set[str]) -> str:
    close = difflib.get_close_matches(name, sorted(names), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def accepted_names() -> tuple[set[str], set[str]]:
    """(vllm.LLM's keyword arguments, SamplingParams' fields) of the installed vLLM."""
    require("vllm", extra="vllm", for_what="checking vllm.engine_args and sampling.extra")
    from vllm import LLM, SamplingParams
    from vllm.engine.arg_utils import EngineArgs

    # LLM takes some arguments itself and hands **kwargs on to EngineArgs.
    named = {p.name for p in inspect.signature(LLM.__init__).parameters.values()
             if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self"}
    engine = named | {f.name for f in dataclasses.fields(EngineArgs)}
    fields = getattr(SamplingParams, "__struct_fields__", None)  # a msgspec Struct in vLLM 0.32
    if fields is None:
        fields = [p for p in inspect.signature(SamplingParams).parameters if p != "self"]
    return engine, {name for name in fields if not name.startswith("_")}  # _private: vLLM-internal state
