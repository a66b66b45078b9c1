"""Checks of config values beyond their types: names, Slurm strings, pass-through engine arguments, and every
numeric key against the Range declared beside it in sections.py."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, get_args

from hpcsynth.config.sections import (DTYPES, ENGINES, FORMATS, VALIDATE_CHECKS, Config, DuplicateIds, GpuMode,
                                      GpuRequest, LongDocs, Oversize, Preamble, Range, RejectAction, SlurmConfig,
                                      TokenizerBackend, TooFew, ValidateConfig)
from hpcsynth.errors import ConfigError

def _check_values(config: Config, source: str, lines: dict[str, int]) -> None:
    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"{_where(source, lines, key)}: '{key}' {why}")

    if config.model.engine not in ENGINES:
        raise bad("model.engine", f"must be one of {', '.join(ENGINES)}, got {config.model.engine!r}")
    if config.reduce.format not in FORMATS:
        raise bad("reduce.format", f"must be one of {', '.join(FORMATS)}, got {config.reduce.format!r}")
    if not config.prompts:
        raise bad("prompts", "must name at least one prompt, e.g. [faq, math, table, tutorial]")
    if len(set(config.prompts)) != len(config.prompts):
        raise bad("prompts", "names a prompt twice")
    _check_routes(config, bad)
    # A few numbers (this one, reduce.original_ratio, the mix's weights and max_repeat) are checked first in
    # the words and with the advice they had before ranges; _check_ranges, last, holds every numeric key
    # to the Range declared beside it in sections.py.
    if config.plan.shard_docs <= 0:
        raise bad("plan.shard_docs", f"must be greater than 0, got {config.plan.shard_docs}")
    if config.model.dtype not in DTYPES:
        raise bad("model.dtype", f"must be one of {', '.join(DTYPES)}, got {config.model.dtype!r}")
    device = config.worker.device
    if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
        raise bad("worker.device", f"must be auto, cpu, cuda or cuda:N, got {device!r}")
    _check_plan(config, bad)
    _check_card(config, bad)
    if config.slurm.gpu_request not in get_args(GpuRequest):
        raise bad("slurm.gpu_request", f"must be {_or(get_args(GpuRequest))}, got {config.slurm.gpu_request!r}")
    if config.reduce.backend not in get_args(TokenizerBackend):
        raise bad("reduce.backend", f"must be {_or(get_args(TokenizerBackend))}, got {config.reduce.backend!r}")
    if not 0 <= config.reduce.original_ratio < math.inf:
        raise bad("reduce.original_ratio", f"must be 0 or more, and finite, got {config.reduce.original_ratio}")
    _check_names(config, bad)
    _check_slurm_strings(config.slurm, bad)
    _check_pass_through(config, bad)
    _check_validate(config.validate, bad)
    _check_mix(config, bad)
    _check_decontaminate(config, bad)
    _check_repair(config, bad)
    _check_ranges(config, "", bad)


def _check_ranges(section: Any, prefix: str, bad: Any) -> None:
    """Every numeric key of a section (and of the sections and lists of sections in it) against its Range;
    a mapping of numbers (reduce.mix.synthetic) has each of its values checked."""
    for spec in dataclasses.fields(section):
        key, value = prefix + spec.name, getattr(section, spec.name)
        if dataclasses.is_dataclass(value):
            _check_ranges(value, f"{key}.", bad)
        elif isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
            for i, item in enumerate(value):
                _check_ranges(item, f"{key}[{i}].", bad)
        elif "range" in spec.metadata:
            default = spec.default if spec.default is not dataclasses.MISSING else None
            for name, number in (value.items() if isinstance(value, dict) else [("", value)]):
                _check_range(f"{key}.{name}" if name else key, number, spec.metadata["range"], default, bad)


def _check_range(key: str, value: Any, limits: Range, default: Any, bad: Any) -> None:
    """Refuse a number outside its Range, nan and inf (every comparison with nan is false), and a bool."""
    if not isinstance(value, bool) and isinstance(value, (int, float)):
        low_ok = limits.lo < value if limits.above else limits.lo <= value
        if (low_ok and value <= limits.hi) or (value == 0 and limits.zero):
            return
    fix = f"e.g. the default, {_number(default)}" if default is not None else "a value in that range"
    got = f"{value} ({type(value).__name__})" if isinstance(value, bool) else f"{value}"
    raise bad(key, f"must be {_span(limits, value)} ({limits.why}), got {got}; fix: {fix}")


def _span(limits: Range, value: Any) -> str:
    """The range in words; a number below it hears its lower bound first ('1 or more, at most 65,536')."""
    lo, hi = _number(limits.lo), _number(limits.hi)
    if limits.zero:
        low = f"0 ({limits.zero}) or more" if limits.lo == 0 else f"0 ({limits.zero}) or at least {lo}"
        return f"{low}, at most {hi}"
    if limits.above:
        return f"above {lo} and at most {hi}"
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value < limits.lo:
        return f"{lo} or more, at most {hi}" if limits.lo <= 1 else f"at least {lo}, at most {hi}"
    return f"between {lo} and {hi}"


def _number(value: float) -> str:
    """1, 0.01, 1e-06, 8192, 65,536: whole numbers of five digits or more with thousands separators."""
    if isinstance(value, float) and not value.is_integer():
        return f"{value:g}"
    whole = int(value)
    return f"{whole:,}" if abs(whole) >= 10_000 else str(whole)


# Pass-through names that a typed key already sets: two ways to say one thing would let them disagree.
NAMED_ENGINE_ARGS = {"model": "model.path", "dtype": "model.dtype", "max_model_len": "model.max_model_len",
                     "revision": "model.revision", "seed": "sampling.seed", "max_num_seqs": "vllm.max_num_seqs",
                     "max_num_batched_tokens": "vllm.max_num_batched_tokens",
                     "gpu_memory_utilization": "vllm.gpu_memory_utilization",
                     "enable_prefix_caching": "vllm.enable_prefix_caching", "enforce_eager": "vllm.enforce_eager",
                     "tensor_parallel_size": "vllm.tensor_parallel_size", "kv_cache_dtype": "vllm.kv_cache_dtype"}
NAMED_SAMPLING_ARGS = {"temperature": "sampling.temperature", "top_p": "sampling.top_p", "top_k": "sampling.top_k",
                       "max_tokens": "sampling.max_tokens", "seed": "sampling.seed"}
GPU_MODES: tuple[str, ...] = get_args(GpuMode)


def _check_pass_through(config: Config, bad) -> None:
    for name in config.vllm.engine_args:
        if name in NAMED_ENGINE_ARGS:
            raise bad(f"vllm.engine_args.{name}", f"is set by {NAMED_ENGINE_ARGS[name]}; use that key instead")
    if "speculative_config" in config.vllm.engine_args and config.vllm.speculative_method:
        raise bad("vllm.engine_args.speculative_config", "and vllm.speculative_method both ask for speculative "
                  "decoding; keep one of them")
    for name in config.sampling.extra:
        if name in NAMED_SAMPLING_ARGS:
            raise bad(f"sampling.extra.{name}", f"is set by {NAMED_SAMPLING_ARGS[name]}; use that key instead")
    for key, value in _floats({"sampling.extra": config.sampling.extra, "vllm.engine_args": config.vllm.engine_args}):
        if not math.isfinite(value):
            raise bad(key, f"is {value}; a value passed through must be finite (vLLM's own checks compare it and "
                           f"pass nan, and JSON cannot carry it to an endpoint); fix: write the number")
    if config.sampling.extra and config.model.engine == "transformers":
        raise bad("sampling.extra", "is passed through to vLLM and endpoints only; transformers' generate() "
                  "spells several of those names differently (use the named sampling keys)")
    if config.slurm.gpu_mode not in GPU_MODES:
        raise bad("slurm.gpu_mode", f"must be one of {', '.join(GPU_MODES)}, got {config.slurm.gpu_mode!r}")


def _floats(tree: Any, prefix: str = "") -> Any:
    """(dotted key, value) for every float in nested mappings and lists, as _key_lines names their lines."""
    if isinstance(tree, dict):
        for name, value in tree.items():
            yield from _floats(value, f"{prefix}.{name}" if prefix else str(name))
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            yield from _floats(value, f"{prefix}[{i}]")
    elif isinstance(tree, float):
        yield prefix, tree


# A name becomes part of a path (prompts_dir/NAME.md, DIR/NAME.bin) and of record ids (KEY/PROMPT).
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
# What Slurm accepts in partition, QoS and account names (comma-separated lists allowed).
SLURM_NAMES = re.compile(r"[A-Za-z0-9_.,:+@-]*")
SLURM_JOB_NAME = re.compile(r"[A-Za-z0-9_.:+@-]{1,200}")
SBATCH_KEY = re.compile(r"[a-z][a-z0-9-]*")
# Options our requeue and log paths rely on (USR2 before the limit, logs under RUN/slurm/, the array).
SBATCH_OURS = ("signal", "output", "error", "array", "open-mode", "wrap")


def _check_names(config: Config, bad: Any) -> None:
    for name in config.prompts:
        if not NAME.fullmatch(name):
            raise bad("prompts", f"entry {name!r} is not a plain name (letters, digits, '.', '_', '-'; no "
                                 f"path); put the template in prompts_dir as NAME.md and list NAME")
    if not NAME.fullmatch(config.reduce.name):
        raise bad("reduce.name", f"{config.reduce.name!r} is not a plain name (letters, digits, '.', '_', "
                                 f"'-'; no path); choose the directory with `reduce --out`")


def _check_slurm_strings(slurm: SlurmConfig, bad: Any) -> None:
    """Every string that becomes an #SBATCH line: one line each, in the characters Slurm allows.

    A newline would end the directive and start a shell command, and sbatch stops reading directives
    at the first command: --time and --signal (our requeue path) would be silently dropped.
    """
    for key in ("partition", "qos", "account"):
        value = getattr(slurm, key)
        if not SLURM_NAMES.fullmatch(value):
            raise bad(f"slurm.{key}", f"{value!r} is not a Slurm name (letters, digits, '_', '.', '-', commas)")
    if not SLURM_JOB_NAME.fullmatch(slurm.job_name):
        raise bad("slurm.job_name", f"{slurm.job_name!r} must be 1-200 letters, digits, '_', '.', '-'")
    for option in slurm.sbatch:
        key, _, value = option.partition("=")
        if not SBATCH_KEY.fullmatch(key.strip().lstrip("-")) or not value.isprintable():
            raise bad("slurm.sbatch", f"entry {option!r} is not one sbatch option: write \"key=value\" or "
                                      f"\"flag\" (key: lowercase letters, digits, '-'; value: one line)")
        if key.strip().lstrip("-") in SBATCH_OURS:
            raise bad("slurm.sbatch", f"entry {option!r} would replace an option hpcsynth relies on "
                                      f"({', '.join(SBATCH_OURS)}); use slurm.signal_delay_s or leave it out")
    if not slurm.python.isprintable():
        raise bad("slurm.python", f"{slurm.python!r} must be one line: the interpreter's path")


LONG_DOCS: tuple[str, ...] = get_args(LongDocs)
DUPLICATE_IDS: tuple[str, ...] = get_args(DuplicateIds)


def _check_plan(config: Config, bad: Any) -> None:
    plan = config.plan
    if plan.long_docs not in LONG_DOCS:
        raise bad("plan.long_docs", f"must be one of {', '.join(LONG_DOCS)}, got {plan.long_docs!r}")
    if plan.duplicate_ids not in DUPLICATE_IDS:
        raise bad("plan.duplicate_ids", f"must be one of {', '.join(DUPLICATE_IDS)}, got {plan.duplicate_ids!r}")
    if plan.filter:
        from hpcsynth.corpus.filters import compile_predicate

        compile_predicate(plan.filter, bad)


def _check_routes(config: Config, bad: Any) -> None:
    """Each prompt's condition (`prompts[i].when`) in plan.filter's language: a syntax error or an unknown
    operator is one line naming the entry, at load, not at plan time."""
    from hpcsynth.corpus.filters import compile_predicate

    for i, name in enumerate(config.prompts):
        if name in config.prompt_when:
            compile_predicate(config.prompt_when[name], bad, key=f"prompts[{i}].when")


def _check_validate(validate: ValidateConfig, bad: Any) -> None:
    if validate.action not in get_args(RejectAction):
        raise bad("validate.action", f"must be {_or(get_args(RejectAction))}, got {validate.action!r}")
    if validate.preamble not in get_args(Preamble):
        raise bad("validate.preamble", f"must be {_or(get_args(Preamble))}, got {validate.preamble!r}")
    unknown = [name for name in validate.skip if name not in VALIDATE_CHECKS]
    if unknown:
        raise bad("validate.skip", f"names no check {unknown[0]!r}; checks: {', '.join(VALIDATE_CHECKS)}")


def _check_repair(config: Config, bad: Any) -> None:
    """repair.checks by name, and repair.sampling.extra as sampling.extra (a typed key is said there)."""
    from hpcsynth.config.sections import REPAIR_CHECKS

    unknown = [name for name in config.repair.checks if name not in REPAIR_CHECKS]
    if unknown:
        raise bad("repair.checks", f"names no check {unknown[0]!r}; checks: {', '.join(REPAIR_CHECKS)} (format: "
                                   f"every check of the prompt's format)")
    for name in config.repair.sampling.extra:
        if name in NAMED_SAMPLING_ARGS:
            key = "repair.sampling.seed is derived per attempt" if name == "seed" else f"repair.sampling.{name}"
            raise bad(f"repair.sampling.extra.{name}", f"is set by {key}; use that instead")


def _where(source: str, lines: dict[str, int], key: str) -> str:
    line = lines.get(key)
    return f"{source} line {line}" if line else source


def _check_card(config: Config, bad) -> None:
    """The card's front matter is YAML the Hub parses: a licence id is one plain token, never a newline
    or a YAML document of its own."""
    card = config.card
    named = {"card.license": card.license, **{f"card.language[{i}]": v for i, v in enumerate(card.language)},
             **{f"card.source_licenses.{k}": v for k, v in card.source_licenses.items()}}
    for key, value in named.items():
        if not isinstance(value, str) or (value and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}", value)):
            raise bad(key, f"must be an id such as odc-by, cc-by-4.0 or en (letters, digits, . _ + -), got {value!r}")


MIX_POLICIES: tuple[str, ...] = get_args(TooFew)
RUN_ORIGINALS = "run_originals"
MAX_MIX_SOURCES = 255  # a part stores each document's source as one byte


def _check_mix(config: Config, bad: Any) -> None:
    mix = config.reduce.mix
    for prompt, weight in mix.synthetic.items():
        key = f"reduce.mix.synthetic.{prompt}"
        if prompt != "*" and prompt not in config.prompts:
            raise bad(key, f"is not a prompt of this config ({', '.join(config.prompts)}); name one of them, or "
                           f"\"*\" for all of them pooled")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight < math.inf:
            raise bad(key, f"must be a finite weight above 0, got {weight!r}; leave the prompt out to mix none of it")
    if "*" in mix.synthetic and len(mix.synthetic) > 1:
        raise bad("reduce.mix.synthetic", "names \"*\" (every prompt pooled) and single prompts; use one or the other")
    names: set[str] = set()
    for i, source in enumerate(mix.sources):
        key = f"reduce.mix.sources[{i}]"
        if not NAME.fullmatch(source.name) or source.name.startswith("synthetic"):
            raise bad(f"{key}.name", f"{source.name!r} must be a plain name (letters, digits, '.', '_', '-'), "
                                     f"not starting with 'synthetic': {RUN_ORIGINALS} or your corpus's name")
        if source.name in names:
            raise bad(f"{key}.name", f"{source.name!r} names two sources; give each its own name")
        names.add(source.name)
        if (source.name == RUN_ORIGINALS) == bool(source.path):
            raise bad(f"{key}.path", f"is for a corpus of your own: {RUN_ORIGINALS} takes no path, and any other "
                                     f"source needs one (a JSONL or Parquet file, directory or glob)")
        if not 0 < source.weight < math.inf:
            raise bad(f"{key}.weight", f"must be a number above 0, got {source.weight}; leave the source out to "
                                       f"mix none")
        if not source.text_key:
            raise bad(f"{key}.text_key", "must name the field that holds the text, e.g. text")
    if len(mix.sources) + max(len(mix.synthetic), len(config.prompts)) > MAX_MIX_SOURCES:
        raise bad("reduce.mix.sources", f"a mix holds at most {MAX_MIX_SOURCES} sources and prompts")
    if mix.too_few not in MIX_POLICIES:
        raise bad("reduce.mix.too_few", f"must be one of {', '.join(MIX_POLICIES)}, got {mix.too_few!r}")
    if mix.oversize not in get_args(Oversize):
        raise bad("reduce.mix.oversize", f"must be {_or(get_args(Oversize))}, got {mix.oversize!r}")
    if not 1 <= mix.max_repeat < math.inf:
        raise bad("reduce.mix.max_repeat", f"must be 1 (no repeat) or more, and finite, got {mix.max_repeat}")


def _check_decontaminate(config: Config, bad: Any) -> None:
    """Names only: the files are found and read by the reduce and `validate` (reduce/validate/benchmarks.py),
    so a config naming a benchmark this host lacks still loads for `status` or `launch`."""
    settings = config.reduce.decontaminate
    for i, pattern in enumerate(settings.benchmarks):
        if not pattern.strip():
            raise bad(f"reduce.decontaminate.benchmarks[{i}]", "is empty; name a JSONL or Parquet file, a directory "
                                                               "or a glob of your benchmark's texts")
    if not settings.text_keys or not all(key.strip() for key in settings.text_keys):
        raise bad("reduce.decontaminate.text_keys", f"must name the fields that hold a benchmark item's text, e.g. "
                                                    f"[question, answer], got {list(settings.text_keys)!r}")


def _or(choices: tuple[str, ...]) -> str:
    """'a, b or c': a Literal's values as an error names them."""
    return f"{', '.join(choices[:-1])} or {choices[-1]}" if len(choices) > 1 else choices[0]
