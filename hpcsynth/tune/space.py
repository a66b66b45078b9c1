"""What `hpcsynth tune` tries: per engine, the settings that decide throughput, in the order it walks them.

Each knob is a list of candidates, a candidate a small dict of dotted config keys ({"vllm.max_num_seqs": 256};
speculation sets its method and draft length together). The search (tune/search.py) walks the knobs one at a
time from the best setting found so far, as FinePhrase's autotune and datatrove's tiered sweep do: the knobs
interact little next to what each does alone, and a full grid of six knobs is hundreds of model loads.

Defaults follow what moved FinePhrase's throughput on an H100 (shared/notes/performance-anchors.md): the batch
(max_num_seqs: the KV pool of a 1.7B model holds ~215 sequences on an H100), the step's token budget (32768
was faster but ran out of memory, 16384 was stable), memory utilisation (0.95 ran out of memory, 0.90 did
not), speculation (suffix with 32 tokens: ~1.75x), chunked prefill, and tensor parallelism where a node has
several GPUs. `--try KEY=V1,V2` replaces them with the user's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from hpcsynth.config import Config, config_from_dict
from hpcsynth.config.build import config_to_dict
from hpcsynth.errors import ConfigError

Settings = dict[str, Any]  # dotted config key -> value


@dataclass(frozen=True)
class Knob:
    name: str  # what the table calls it
    candidates: tuple[Settings, ...]
    # Larger candidates hold more memory: once one runs out of memory, the larger ones after it are skipped.
    grows_memory: bool = False


def _one(key: str, values: tuple[Any, ...], grows_memory: bool = False) -> Knob:
    return Knob(key, tuple({key: v} for v in values), grows_memory)


def default_knobs(config: Config, gpus: int) -> list[Knob]:
    """The knobs worth a trial for this config's engine on a machine with `gpus` GPUs (0: CPU only)."""
    engine = config.model.engine
    if engine == "vllm":
        knobs = [_one("vllm.max_num_seqs", (64, 128, 256, 512, 1024), grows_memory=True),
                 _one("vllm.max_num_batched_tokens", (8192, 16384, 32768), grows_memory=True)]
        if gpus:  # on vLLM's CPU build memory is VLLM_CPU_KVCACHE_SPACE; speculation and chunked prefill are
            # refused there (vllm_offline.refuse_cpu_speculation, cpu_prefill_whole)
            knobs += [_one("vllm.gpu_memory_utilization", (0.85, 0.90, 0.95), grows_memory=True),
                      Knob("speculation", ({"vllm.speculative_method": "", "vllm.num_speculative_tokens": 0},
                                           {"vllm.speculative_method": "ngram", "vllm.num_speculative_tokens": 4},
                                           {"vllm.speculative_method": "suffix", "vllm.num_speculative_tokens": 32})),
                      _one("vllm.engine_args.enable_chunked_prefill", (True, False))]
        if gpus > 1:
            knobs.append(_one("vllm.tensor_parallel_size", tuple(t for t in (1, 2, 4, 8) if t <= gpus)))
        return knobs
    if engine == "endpoint":  # the server's settings are the server's: here, only how many requests it is sent
        return [_one("endpoint.concurrency", (16, 32, 64, 128, 256, 512), grows_memory=True)]
    return [_one("worker.batch_size", (1, 2, 4, 8, 16, 32, 64), grows_memory=True)]


def parse_try(entries: list[str]) -> list[Knob]:
    """`--try vllm.max_num_seqs=128,256` -> knobs, in the order given; values as YAML reads them."""
    knobs = []
    for entry in entries:
        key, sep, values = entry.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise ConfigError(f"--try {entry!r}: write KEY=VALUE[,VALUE...], e.g. --try vllm.max_num_seqs=128,256")
        try:
            parsed = tuple(yaml.safe_load(v) for v in values.split(","))
        except yaml.YAMLError:
            raise ConfigError(f"--try {entry!r}: a value is not a plain number, word or true/false") from None
        knobs.append(_one(key, parsed, grows_memory=_numeric_ascending(parsed)))
    return knobs


def _numeric_ascending(values: tuple[Any, ...]) -> bool:
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return len(numbers) == len(values) and numbers == sorted(numbers)


def apply(config: Config, settings: Settings, source: str = "hpcsynth tune") -> Config:
    """The config with these dotted keys set, checked as a config file is (types and ranges): a key that is
    not a config key, or a value out of its range, is one line naming it."""
    data = config_to_dict(config)
    for key, value in settings.items():
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            if part not in node or not isinstance(node[part], dict):
                raise ConfigError(f"{source}: {key!r} is not a config key (see `hpcsynth config finephrase`)")
            node = node[part]
        if parts[-1] not in node and parts[-2:-1] != ["engine_args"]:
            raise ConfigError(f"{source}: {key!r} is not a config key (see `hpcsynth config finephrase`)")
        node[parts[-1]] = value
    return config_from_dict(data, source)


def settings_of(config: Config, keys: list[str]) -> Settings:
    """The values `config` has for these dotted keys (engine_args keys it lacks: None)."""
    data = config_to_dict(config)
    found = {}
    for key in keys:
        node: Any = data
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        found[key] = node
    return found


def nested(settings: Settings) -> dict[str, Any]:
    """{"vllm.max_num_seqs": 256} -> {"vllm": {"max_num_seqs": 256}}: a fragment a config file can take."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        node = out
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def per_gpu(config: Config) -> int:
    """GPUs one engine of this config holds: its throughput is shared by that many."""
    return config.vllm.tensor_parallel_size if config.model.engine == "vllm" else 1


__all__ = ["Knob", "Settings", "apply", "default_knobs", "nested", "parse_try", "per_gpu", "settings_of"]
