"""Every numeric config key has a declared range (hpcsynth/config/sections.py), checked at load.

An outside review found extremes accepted and failing late, silently, or in sbatch: a 10^12-task array,
a nan temperature (YAML's .nan is a float), a batch of 10^9, a heartbeat every 1e308 s. Each is now one
line at load naming the file, the line and the key, with the range and why.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path
from typing import Any, Iterator

import pytest

from hpcsynth.config import Config, config_from_dict, load_config
from hpcsynth.errors import ConfigError

from conftest import REPO, run_cli, write_corpus


def numeric_fields(cls: type = Config, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field, Any]]:
    """(dotted key, field, number type) for every int or float key, and every mapping of numbers, of every
    section: nested sections and lists of sections (reduce.mix.sources) included. bool is no number here."""
    hints = typing.get_type_hints(cls)
    for spec in dataclasses.fields(cls):
        hint, key = hints[spec.name], prefix + spec.name
        args = typing.get_args(hint)
        if dataclasses.is_dataclass(hint):
            yield from numeric_fields(hint, f"{key}.")
        elif typing.get_origin(hint) is tuple and args and dataclasses.is_dataclass(args[0]):
            yield from numeric_fields(args[0], f"{key}[0].")
        elif hint in (int, float):
            yield key, spec, hint
        elif typing.get_origin(hint) is dict and args[1] in (int, float):
            yield key, spec, args[1]


def test_every_numeric_key_has_a_range_with_a_reason_and_its_default_inside() -> None:
    from hpcsynth.config.sections import Range

    found = list(numeric_fields())
    assert len(found) >= 69 and {"reduce.mix.sources[0].weight", "reduce.mix.synthetic", "card.gpu_hour_price",
                                 "vllm.gpu_memory_utilization", "endpoint.timeout_s"} <= {k for k, _, _ in found}
    for key, spec, _ in found:
        limits = spec.metadata.get("range")
        assert isinstance(limits, Range), f"{key} has no range: declare one with ranged() in sections.py"
        assert limits.why and math.isfinite(limits.lo) and math.isfinite(limits.hi) and limits.lo < limits.hi, key
        if spec.default is not dataclasses.MISSING:
            inside = limits.lo < spec.default if limits.above else limits.lo <= spec.default
            assert (inside and spec.default <= limits.hi) or (spec.default == 0 and limits.zero), key


def _data(key: str, value: Any) -> dict[str, Any]:
    """{'a': {'b': value}} for 'a.b'; the mix's lists and mappings as a config writes them."""
    if key == "reduce.mix.sources[0].weight":
        return {"reduce": {"mix": {"sources": [{"name": "run_originals", "weight": value}]}}}
    if key == "reduce.mix.synthetic":
        return {"reduce": {"mix": {"synthetic": {"faq": value}}}}
    data: dict[str, Any] = {}
    *sections, name = key.split(".")
    inner = data
    for section in sections:
        inner = inner.setdefault(section, {})
    inner[name] = value
    return data


def _edges(spec: dataclasses.Field, kind: type) -> tuple[list[Any], list[Any]]:
    """Values at a range's edges (accepted) and past them (refused): above and below, -1, inf and nan."""
    limits = spec.metadata["range"]
    lo, hi = kind(limits.lo), kind(limits.hi)
    step = 1 if kind is int else max(limits.hi * 1e-6, 1e-9)
    inside = [hi] + ([] if limits.above else [lo]) + ([0] if limits.zero else [])
    outside = [hi + step, -1, math.inf, math.nan] + ([lo] if limits.above else [lo - step] if lo > 0 else [])
    return inside, outside


@pytest.mark.parametrize("key, spec, kind", list(numeric_fields()), ids=[k for k, _, _ in numeric_fields()])
def test_each_range_admits_its_edges_and_refuses_one_past_them(key: str, spec: dataclasses.Field, kind: type) -> None:
    inside, outside = _edges(spec, kind)
    for value in inside:
        config_from_dict(_data(key, value), "my.yaml")
    named = "reduce.mix.synthetic.faq" if key == "reduce.mix.synthetic" else key
    for value in outside:
        with pytest.raises(ConfigError) as caught:
            config_from_dict(_data(key, value), "my.yaml", {named: 5})
        assert str(caught.value).startswith(f"my.yaml line 5: '{named}' "), str(caught.value)
        assert "\n" not in str(caught.value)


# Each was accepted before ranges, and failed late (the worker, vLLM, sbatch), silently, or never.
EXTREMES = [
    ("slurm:\n  array_tasks: 1000000000000\n", "slurm.array_tasks", "between 1 and 100,000"),
    ("slurm:\n  time_min: 100000000\n", "slurm.time_min", "between 1 and 525,600"),
    ("slurm:\n  cpus_per_task: 0\n", "slurm.cpus_per_task", "1 or more, at most 4096"),
    ("slurm:\n  partition: gpu\n  mem_gb: -5\n", "slurm.mem_gb", "must be 0 (Slurm's --mem=0"),
    ("slurm:\n  signal_delay_s: 0\n", "slurm.signal_delay_s", "1 or more, at most 65,535"),
    ("worker:\n  batch_size: 1000000000\n", "worker.batch_size", "between 1 and 65,536"),
    ("worker:\n  heartbeat_interval_s: .inf\n", "worker.heartbeat_interval_s", "got inf"),
    ("worker:\n  flush_interval_s: 1.0e+308\n", "worker.flush_interval_s", "between 0.01 and 86,400"),
    ("sampling:\n  max_tokens: 1000000000000\n", "sampling.max_tokens", "between 1 and 1,048,576"),
    ("sampling:\n  temperature: .nan\n", "sampling.temperature", "got nan"),
    ("sampling:\n  top_p: 0\n", "sampling.top_p", "above 0 and at most 1"),
    ("plan:\n  max_line_bytes: 1000000000000000\n", "plan.max_line_bytes", "between 1024 and 4,294,967,296"),
    ("plan:\n  bytes_per_token: 0.01\n", "plan.bytes_per_token", "0 (measure it) or at least 1, at most 64"),
    ("vllm:\n  gpu_memory_utilization: 1.5\n", "vllm.gpu_memory_utilization", "between 0.01 and 1"),
    ("endpoint:\n  timeout_s: .inf\n", "endpoint.timeout_s", "got inf"),
    ("reduce:\n  max_file_mb: .inf\n", "reduce.max_file_mb", "must be 0 (no cap) or more"),
    ("reduce:\n  mix:\n    sources:\n      - {name: run_originals, weight: 1.0e+300}\n",
     "reduce.mix.sources[0].weight", "above 0 and at most 1,000,000,000,000"),
    ("card:\n  gpu_hour_price: .inf\n", "card.gpu_hour_price", "must be 0 (no price) or more"),
    ("sampling:\n  extra:\n    repetition_penalty: .nan\n", "sampling.extra.repetition_penalty", "must be finite"),
]


def _plan(tmp_path: Path, text: str) -> tuple[Path, Any]:
    config = tmp_path / "extreme.yaml"
    config.write_text("model: {engine: fake, path: fake-model}\n" + text)
    corpus = write_corpus(tmp_path / "corpus.jsonl", 3)
    return config, run_cli("plan", config, "--run", tmp_path / "run", "--input", corpus)


def _line(text: str, key: str) -> int:
    """The line of the key's last name in the config _plan writes (its first line is the model's)."""
    name = key.rsplit(".", 1)[-1]
    return 1 + next(i for i, line in enumerate(text.splitlines(), 1) if f"{name}:" in line)


@pytest.mark.parametrize("text, key, says", EXTREMES, ids=[e[1] for e in EXTREMES])
def test_an_extreme_value_is_one_line_naming_file_line_and_key(tmp_path: Path, text: str, key: str, says: str) -> None:
    config, proc = _plan(tmp_path, text)
    line = _line(text, key)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"{config} line {line}: '{key}' " in proc.stderr and says in proc.stderr, proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text, key, says", [
    ("worker:\n  batch_size: true\n", "worker.batch_size", "must be an integer, got True (bool)"),
    ("sampling:\n  max_tokens: .inf\n", "sampling.max_tokens", "must be an integer, got inf (float)"),
    ("reduce:\n  mix:\n    synthetic: {faq: true}\n", "reduce.mix.synthetic.faq", "must be a finite weight above 0"),
    ("sampling:\n  temperature: 1e308\n", "sampling.temperature", "must be a number, got '1e308' (str)"),
])
def test_a_bool_or_a_string_where_a_number_goes_is_one_line(tmp_path: Path, text: str, key: str, says: str) -> None:
    """True is an int to Python, and YAML 1.1 reads 1e308 (no dot) as a string: neither reaches a range."""
    config, proc = _plan(tmp_path, text)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"{config} line {_line(text, key)}: '{key}' {says}" in proc.stderr, proc.stderr


def test_finephrase_scale_fits() -> None:
    """339k shards on 1,000 GPUs, 486B tokens mixed, 131,072 new tokens, a hot sampler: all accepted."""
    config_from_dict({"slurm": {"array_tasks": 1000, "array_parallelism": 1000, "shards_per_task": 339},
                      "sampling": {"max_tokens": 131072, "temperature": 2.0},
                      "model": {"max_model_len": 1 << 20}, "vllm": {"max_num_seqs": 2048, "in_flight": 2952},
                      "reduce": {"mix": {"total_tokens": 486 * 10**9}}})
    for path in sorted((REPO / "configs").glob("*.yaml")):
        load_config(path)
