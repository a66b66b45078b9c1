"""Config: YAML in configs/ -> frozen, typed objects, checked key by key.

Sits before everything else in the flow: `plan` loads a config file, resolves it and writes it into the
run directory with its fingerprint; later stages read the resolved copy from there, never the original.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hpcsynth.errors import ConfigError

ENGINES = ("transformers", "vllm", "endpoint", "fake")
FORMATS = ("megatron", "datatrove", "numpy")
DTYPES = ("bfloat16", "float16", "float32", "auto")


@dataclass(frozen=True)
class PlanConfig:
    # Files, directories or globs: JSONL (plain, .gz or .zst) or Parquet; `hpcsynth plan --input` replaces them.
    inputs: tuple[str, ...] = ()
    # A cap beside plan.shard_tokens: 10,000 documents x 4 prompts keeps a shard of very short documents
    # (tweets, titles) to minutes of GPU work; 339M FineWeb-Edu documents stay a few hundred thousand files.
    shard_docs: int = 10000
    # dolma / datatrove field names for the document text and its id.
    text_key: str = "text"
    id_key: str = "id"
    # Shorter documents carry too little to rephrase; they are counted and skipped.
    min_chars: int = 1
    # zstd level 3: ~250 MB/s to write, ~1.4 GB/s to read; higher levels cost far more than they save.
    zstd_level: int = 3
    # A corpus line longer than this is a counted reject, never read whole: web documents stay far
    # below it (the longest FineWeb pages are a few MB), and it bounds what a decompression bomb costs.
    max_line_bytes: int = 64 << 20
    # ~1,000 FineWeb-Edu documents of ~1k tokens: minutes of GPU work per shard, balanced by tokens so that
    # a shard of long documents does not take ten times longer than one of short ones.
    shard_tokens: int = 1_000_000
    # 0: measure UTF-8 bytes per token on the first MiB of the corpus with model.path's tokenizer when it
    # has one, else 4.0 (English web text under ~50k-vocabulary BPE tokenizers averages 4.2-4.6).
    bytes_per_token: float = 0.0
    # Metadata fields (dotted for nested ones) copied into each document's "meta" and every output record.
    keep_fields: tuple[str, ...] = ()
    # A predicate over metadata, e.g. 'int_score >= 3 and language == "en"'; empty keeps everything.
    filter: str = ""
    # 0 leaves the filter off; a document longer than this is filtered (and listed in the rejects file).
    max_chars: int = 0
    # Plan at most this many documents, in input order (0: all); the study rephrases subsets.
    limit: int = 0
    # Keep this seeded fraction of documents (chosen by a hash of the id, so it does not depend on order).
    sample_fraction: float = 1.0
    # Another seed draws another subset of the same size; 0 is as good a default as any.
    sample_seed: int = 0
    # FinePhrase cut documents at ~18k characters: "truncate" at a paragraph boundary, "split" into parts
    # rephrased separately, or "keep" them whole (the worker still cuts at model.max_input_chars).
    long_docs: str = "truncate"
    # The long-document budget in characters: FinePhrase's ~18k characters fit SmolLM2's 8k context.
    long_doc_chars: int = 18000
    # The same budget in estimated tokens instead (0: use long_doc_chars), for models with other contexts.
    long_doc_tokens: int = 0
    # "keep_first" plans the first document of an id and rejects later ones; "reject" rejects all of them.
    duplicate_ids: str = "keep_first"
    # A few bad lines are normal in a web dump; more than 5% means a wrong text_key, format or file.
    max_reject_rate: float = 0.05
    # Consecutive input files are planned together (one process, no shard across groups) up to this many
    # MB on disk: 8 MB keeps processes busy and lets small files share shards (0: each file alone).
    group_mb: int = 8


@dataclass(frozen=True)
class ModelConfig:
    # transformers: CPU or one GPU, tests and small users; vllm: production; endpoint: an
    # OpenAI-compatible server; fake: no model, for unit tests and fault injection.
    engine: str = "transformers"
    # A local model directory (or a hub id your cluster has cached); hpcsynth downloads nothing.
    path: str = ""
    # A hub revision (commit or tag) recorded in every output; empty for a plain directory.
    revision: str = ""
    # SmolLM2 and most small instruct models are trained and served in bf16.
    dtype: str = "bfloat16"
    # FinePhrase ran SmolLM2 with an 8k context.
    max_model_len: int = 8192
    # FinePhrase cut documents longer than ~18k characters at the last newline; we do too, and record it.
    max_input_chars: int = 18000


@dataclass(frozen=True)
class SamplingConfig:
    # Plain sampling from the model's distribution, as FinePhrase rephrased: varied, not greedy.
    temperature: float = 1.0
    # 1.0 leaves nucleus sampling off.
    top_p: float = 1.0
    # 0 turns top-k off; transformers and vLLM then sample alike.
    top_k: int = 0
    # FinePhrase's cap; outputs average ~360 tokens, so the cap only trims runaways.
    max_tokens: int = 2048
    # Each record's seed is derived from this and the record id, so reruns reproduce a record.
    seed: int = 0
    # Any other vLLM SamplingParams argument (e.g. repetition_penalty, min_p), passed through as given
    # (to an endpoint as request body fields); empty because FinePhrase sampled plainly.
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkerConfig:
    # Requests handed to the engine at once (transformers: one padded batch).
    batch_size: int = 8
    # Completed records reach the disk at least this often: the most work a crash can cost.
    flush_interval_s: float = 60.0
    # How often status sees fresh numbers.
    heartbeat_interval_s: float = 10.0
    # A shard whose lease has not been renewed for this long may be taken over by another worker.
    lease_timeout_s: float = 300.0
    # Fail the shard when the engine holds requests but finishes none for this long (a hung GPU or
    # server); FinePhrase outputs take seconds each, so ten quiet minutes mean something is stuck.
    watchdog_s: float = 600.0
    # Out-of-memory errors answered by halving the engine's concurrency before the shard fails.
    oom_retries: int = 3
    # torch intra-op threads; 0 leaves torch's default. Tests use 1 (shared cores thrash at 2+).
    threads: int = 0
    # "auto" picks cuda when present, else cpu.
    device: str = "auto"


@dataclass(frozen=True)
class VllmConfig:
    # Sequences decoded together. FinePhrase used 2048, but the KV pool of a 1.7B model holds ~215 (H100)
    # to ~400 (H200) sequences, so more only queues inside vLLM.
    max_num_seqs: int = 512
    # 32768 was faster for FinePhrase but ran out of memory; 16384 is their stable setting.
    max_num_batched_tokens: int = 16384
    # 0.95 hit OOM in FinePhrase; 0.90 did not.
    gpu_memory_utilization: float = 0.90
    # The four prompts share their instructions; caching their prefix saves prefill.
    enable_prefix_caching: bool = True
    # CUDA graphs cost minutes at start-up and pay off over a shard; tests turn them off.
    enforce_eager: bool = False
    tensor_parallel_size: int = 1
    # Speculative decoding, passed through to vLLM (FinePhrase: method "suffix", 32 tokens, ~1.75x).
    speculative_method: str = ""
    num_speculative_tokens: int = 0
    kv_cache_dtype: str = "auto"
    # Requests kept queued in the engine beyond max_num_seqs, so a finished slot refills at once.
    in_flight: int = 0
    # Any other vllm.LLM(...) argument our keys do not name (e.g. speculative_config, quantization),
    # checked against vLLM's own signature; empty: the named keys above cover the FinePhrase recipe.
    engine_args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EndpointConfig:
    # An OpenAI-compatible server (vllm serve, SGLang, TGI); loopback unless you say otherwise.
    url: str = "http://127.0.0.1:8000/v1"
    # Requests open at once: enough to fill the server's batch, few enough not to time out in its queue.
    concurrency: int = 64
    # A 2048-token answer from a busy server can take minutes.
    timeout_s: float = 600.0
    # Connection errors, 429 and 5xx: retried this many times, waits doubling from backoff_s.
    retries: int = 5
    backoff_s: float = 1.0
    # Name of the environment variable holding an API key, if the server wants one.
    api_key_env: str = ""
    # An API key sent over plain http to another host can be read on the way; say true only for a
    # network you trust (loopback and https never need it).
    allow_plain_http_key: bool = False


@dataclass(frozen=True)
class SlurmConfig:
    # Array tasks = GPUs kept busy; each starts its engine once and pulls shards until none remain.
    array_tasks: int = 8
    # Several shards per array task instead of pulling: each task gets its own fixed group (0: pull).
    shards_per_task: int = 0
    # Slurm's %N: at most this many array tasks at once (0: no limit).
    array_parallelism: int = 0
    # Empty partition, qos and account leave Slurm's defaults; a site profile sets them.
    partition: str = ""
    qos: str = ""
    account: str = ""
    # One engine per GPU: generators around 1-2B gain nothing from tensor parallelism.
    gpus_per_task: int = 1
    # "gres" asks --gres=gpu:N (works on every Slurm); "gpus" asks --gpus-per-task=N.
    gpu_request: str = "gres"
    # Tokenization, the request stream and zstd need a few cores and host memory beside each GPU.
    cpus_per_task: int = 8
    mem_gb: int = 64
    # Requeue on a time limit is built in, so a short limit mostly buys earlier starts.
    time_min: int = 240
    # USR2 comes this long before the limit: enough to flush the progress logs and requeue.
    signal_delay_s: int = 120
    # 0 reads MaxArraySize from `scontrol show config`; arrays larger than that are split.
    max_array_size: int = 0
    # Extra sbatch options as "key=value" ("exclusive" alone for a flag), e.g. ["constraint=h100"].
    sbatch: tuple[str, ...] = ()
    # Shell lines run before the worker: module load, venv activation.
    setup: tuple[str, ...] = ()
    # The interpreter on the compute nodes; empty: the one running `hpcsynth launch`.
    python: str = ""
    # What squeue and sacct show.
    job_name: str = "hpcsynth"
    # A task that sees several GPUs (whole-node allocations): "per_gpu" starts one worker and engine per
    # GPU, since 1-2B generators gain nothing from splitting; "tensor_parallel" one engine across them all.
    gpu_mode: str = "per_gpu"


@dataclass(frozen=True)
class ReduceConfig:
    # tokenizer.json file or a directory holding one; empty: the generator's own tokenizer.
    tokenizer: str = ""
    # Appended after every document; empty: from tokenizer_config.json, else a well-known EOS token.
    eos_token: str = ""
    # Original web tokens mixed in per synthetic token (FinePhrase: the mix matters; 1.0 is half/half).
    original_ratio: float = 1.0
    # Megatron .bin/.idx: read by Megatron-LM and NeMo, and as a flat array by nanoGPT and OLMo-core;
    # "datatrove" writes .ds/.ds.index/.ds.metadata (nanotron), "numpy" one flat .npy array.
    format: str = "megatron"
    # Flat readers cut contiguous windows, so documents are shuffled (seeded) before writing.
    seed: int = 0
    # Drop records the engine cut at max_tokens instead of keeping a truncated rephrase.
    drop_truncated: bool = False
    # Shorter outputs are rejected (empty or near-empty generations teach nothing).
    min_chars: int = 16
    # Output file prefix: DIR/NAME.bin and DIR/NAME.idx.
    name: str = "mix"
    # "auto" uses gigatoken when it encodes a sample exactly as `tokenizers` does (10-30x faster per
    # core), else `tokenizers`; "tokenizers" never tries the fast backend; "gigatoken" insists on it.
    backend: str = "auto"
    # Run shards per reduce part (the unit a --jobs process or a Slurm array task does, and redoes after
    # a crash); 8 FinePhrase shards are ~20M tokens: a few minutes on one core, ~200 MB of memory.
    part_shards: int = 8
    # Source documents per shuffle bucket; the merge holds one bucket (~2.6k tokens per FinePhrase
    # document with its rephrasings: ~250 MB of uint16), so memory stays flat as the run grows.
    bucket_docs: int = 50000
    # Largest token file, in MB, before the next one starts (NAME-00000, NAME-00001...); 0: one file.
    max_file_mb: float = 0.0
    # Also write the synthetic text as Parquet with a dataset card (what FinePhrase published).
    text_export: bool = True

# The reducer's quality checks by name (hpcsynth/reduce/validate/), for validate.skip; in check order.
VALIDATE_CHECKS = ("preamble", "refusal", "too_short", "repetition", "degenerate",
                   "table_missing", "table_no_separator", "table_few_rows", "table_no_question", "table_no_answer",
                   "faq_no_questions", "faq_few_pairs", "math_no_problem", "math_no_final_answer", "math_no_steps",
                   "tutorial_no_steps")


@dataclass(frozen=True)
class ValidateConfig:
    # "drop" leaves failing records out of the mix; "keep" only counts and reports them (the demo's
    # random-weight model fails every check, and a first look at a new prompt should lose nothing).
    action: str = "drop"
    # Checks to skip by name (e.g. [too_short, table_no_question]): a check that misjudges your prompt's
    # outputs can go without losing the others; a misspelt name is refused with the list.
    skip: tuple[str, ...] = ()
    # "strip" removes a chatty first line ("Here is the FAQ:") and a closing pleasantry; "reject" drops
    # the record; "keep" leaves it. Strip: the rest is usually good, and the line teaches only chatter.
    preamble: str = "strip"
    # Output chars per input char below this is a give-up: a FinePhrase math problem from an 18,000-char
    # document is ~1,000 chars (0.055); one sentence from a long page is under 0.01.
    min_length_ratio: float = 0.03
    # Word n-gram size for the repetition ratio: 4-grams skip the scaffolding real FAQs repeat ("what is").
    repetition_n: int = 4
    # Share of repeated word 4-grams over the whole text: degenerate loops reach 0.8+, our good samples
    # of every format stay under 0.15.
    max_repetition: float = 0.35
    # Words at the end checked alone for a loop (a good start that degenerates before max_tokens).
    tail_words: int = 120
    # Repeated 4-gram share allowed in that tail; higher than the whole-text limit, since it is short.
    max_tail_repetition: float = 0.5
    # Data rows a table needs below its header and separator; one row is a sentence, not a table.
    min_table_rows: int = 2
    # Question/answer pairs an FAQ needs: one pair is a Q&A, and short documents honestly give 2-3.
    min_faq_pairs: int = 2
    # Worked lines (a calculation or a step) a math solution needs: the prompt asks for several steps.
    min_math_steps: int = 2
    # Numbered steps or bullets a tutorial needs: fewer is prose with a list in it.
    min_tutorial_steps: int = 3
    # n for the distinct-n-gram diversity `hpcsynth validate` reports (distinct-2 is the usual measure).
    diversity_n: int = 2


@dataclass(frozen=True)
class Config:
    # FinePhrase's four structured formats; every document is rephrased once per prompt.
    prompts: tuple[str, ...] = ("faq", "math", "table", "tutorial")
    # A directory of your own NAME.md prompts, looked up before the ones that ship with hpcsynth; empty:
    # only the shipped ones (FinePhrase's four formats and the baselines).
    prompts_dir: str = ""
    plan: PlanConfig = field(default_factory=PlanConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    vllm: VllmConfig = field(default_factory=VllmConfig)
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    reduce: ReduceConfig = field(default_factory=ReduceConfig)
    # Per-format checks of the outputs: what reduce drops and `hpcsynth validate` reports.
    validate: ValidateConfig = field(default_factory=ValidateConfig)


# Sections whose values change what is generated; the fingerprint covers these (plus prompt texts).
FINGERPRINTED = ("prompts", "plan", "model", "sampling")
# Real configs are a few KB; the cap keeps a wrong or hostile file from being parsed at all.
MAX_YAML_BYTES = 1 << 20
# A run's resolved config lists every input file: 64 MiB holds ~500,000 paths.
MAX_RUN_YAML_BYTES = 64 << 20
# Configs nest three levels; 32 leaves room for any list of lists a future key may take.
MAX_YAML_DEPTH = 32
# libyaml's safe loader when PyYAML has it: ~6x faster on a run config listing thousands of inputs.
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_config(path: str | Path) -> Config:
    """Read a YAML config file into a checked Config; raise ConfigError naming file, line and key."""
    path = _locate_config(path)
    data, lines = read_yaml(path)
    return config_from_dict(data or {}, source=str(path), lines=lines)


def read_yaml(path: Path, max_bytes: int = MAX_YAML_BYTES) -> tuple[Any, dict[str, int]]:
    """A config, profile or run's config.yaml -> (data, {dotted key: line}); no aliases, bounded size."""
    if path.stat().st_size > max_bytes:
        raise ConfigError(f"{path}: {path.stat().st_size:,} bytes is not a config (the limit is "
                          f"{max_bytes:,}); check that the right file was passed")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); pass a YAML config file") from None
    try:
        _refuse_aliases(text, path)
        return yaml.load(text, Loader=LOADER), _key_lines(yaml.compose(text, Loader=LOADER))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{where}: not valid YAML ({problem})") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config") from None


def _refuse_aliases(text: str, path: Path) -> None:
    # An alias (*name) makes the loader repeat what its anchor holds; nested, a few hundred bytes
    # expand into gigabytes before any key is checked. The event stream itself never expands them.
    # Depth is bounded too: PyYAML's scanner slows quadratically with nesting (4,000 levels: 11 s).
    depth = 0
    for event in yaml.parse(text, Loader=LOADER):
        if isinstance(event, yaml.AliasEvent):
            raise ConfigError(f"{path} line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) are "
                              f"not accepted in configs; write the value out in full")
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise ConfigError(f"{path} line {event.start_mark.line + 1}: nested too deeply to be a config "
                                  f"(more than {MAX_YAML_DEPTH} levels)")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _locate_config(path: str | Path) -> Path:
    """A config file by path or by the name of a shipped one; a miss names what exists."""
    from hpcsynth.resources import find_config, shipped_configs

    found = find_config(path)
    if found is None:
        names = ", ".join(shipped_configs()) or "none found in this installation"
        raise ConfigError(f"config file not found: {path}; pass a YAML file, or a shipped config by name "
                          f"({names}); start your own with `hpcsynth config finephrase > mine.yaml`")
    return found


def config_from_dict(data: Any, source: str = "config", lines: dict[str, int] | None = None) -> Config:
    """Build a Config from plain data (a parsed YAML document), checking every key and type."""
    config = _build(Config, data, "", source, lines or {})
    _check_values(config, source, lines or {})
    return config


def config_to_dict(config: Config) -> dict[str, Any]:
    data = dataclasses.asdict(config)
    data["prompts"] = list(config.prompts)
    return data


def fingerprint_payload(config: Config, prompt_hashes: dict[str, str]) -> dict[str, Any]:
    """What decides the outputs: the fingerprinted sections and the prompt templates' hashes."""
    data = config_to_dict(config)
    payload = {key: data[key] for key in FINGERPRINTED}
    payload["prompt_templates"] = dict(sorted(prompt_hashes.items()))
    # Pass-through options count only when set, so runs planned without them keep their fingerprint.
    if not config.sampling.extra:
        del payload["sampling"]["extra"]
    if config.vllm.engine_args:
        payload["vllm_engine_args"] = data["vllm"]["engine_args"]
    return payload


def fingerprint(config: Config, prompt_hashes: dict[str, str]) -> str:
    """sha256 over fingerprint_payload's canonical JSON."""
    blob = json.dumps(fingerprint_payload(config, prompt_hashes), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def diff_payloads(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two fingerprint payloads."""
    return sorted(_diff(old, new, ""))


def diff_configs(old: Config, new: Config) -> list[str]:
    """Dotted keys whose values differ, for 'which keys changed' messages."""
    return sorted(_diff(config_to_dict(old), config_to_dict(new), ""))


def _diff(a: Any, b: Any, prefix: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b)):
            out += _diff(a.get(key), b.get(key), f"{prefix}{key}" if not prefix else f"{prefix}.{key}")
        return out
    return [] if a == b else [prefix]


def _key_lines(node: Any, prefix: str = "") -> dict[str, int]:
    """Map dotted key paths to their 1-based line in the YAML text."""
    out: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
            out[key] = key_node.start_mark.line + 1
            out.update(_key_lines(value_node, key))
    return out


def _where(source: str, lines: dict[str, int], key: str) -> str:
    line = lines.get(key)
    return f"{source} line {line}" if line else source


def _build(cls: type, data: Any, prefix: str, source: str, lines: dict[str, int]) -> Any:
    section = prefix or "the top level"
    if not isinstance(data, dict):
        raise ConfigError(f"{_where(source, lines, prefix)}: {section} must be a mapping of keys, "
                          f"got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            raise ConfigError(f"{_where(source, lines, dotted)}: unknown key '{dotted}'; valid keys in "
                              f"{section}: {', '.join(sorted(fields))}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            values[key] = _build(hint, value, dotted, source, lines)
        else:
            values[key] = _coerce(hint, value, dotted, source, lines)
    return cls(**values)


def _coerce(hint: Any, value: Any, key: str, source: str, lines: dict[str, int]) -> Any:
    where = _where(source, lines, key)
    got = f"got {value!r} ({type(value).__name__})"
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: '{key}' must be true or false, {got}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: '{key}' must be an integer, {got}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: '{key}' must be a number, {got}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: '{key}' must be a string, {got}")
    if typing.get_origin(hint) is dict:
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return dict(value)
        raise ConfigError(f"{where}: '{key}' must be a mapping of names to values, {got}")
    if typing.get_origin(hint) is tuple:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f"{where}: '{key}' must be a list of strings, {got}")
    raise TypeError(f"unsupported config type {hint!r} for {key}")  # a bug in this module, not user input


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
    positive = {
        "plan.shard_docs": config.plan.shard_docs,
        "model.max_model_len": config.model.max_model_len,
        "model.max_input_chars": config.model.max_input_chars,
        "sampling.max_tokens": config.sampling.max_tokens,
        "worker.batch_size": config.worker.batch_size,
        "worker.flush_interval_s": config.worker.flush_interval_s,
        "worker.heartbeat_interval_s": config.worker.heartbeat_interval_s,
        "worker.lease_timeout_s": config.worker.lease_timeout_s,
        "worker.watchdog_s": config.worker.watchdog_s,
    }
    for key, value in positive.items():
        if value <= 0:
            raise bad(key, f"must be greater than 0, got {value}")
    if not 1 <= config.plan.zstd_level <= 22:
        raise bad("plan.zstd_level", f"must be between 1 and 22 (3 is the fast default), got {config.plan.zstd_level}")
    if config.model.dtype not in DTYPES:
        raise bad("model.dtype", f"must be one of {', '.join(DTYPES)}, got {config.model.dtype!r}")
    device = config.worker.device
    if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
        raise bad("worker.device", f"must be auto, cpu, cuda or cuda:N, got {device!r}")
    _check_plan(config, bad)
    if config.slurm.gpu_request not in ("gres", "gpus"):
        raise bad("slurm.gpu_request", f"must be gres or gpus, got {config.slurm.gpu_request!r}")
    if config.slurm.array_tasks < 1:
        raise bad("slurm.array_tasks", f"must be 1 or more, got {config.slurm.array_tasks}")
    if config.reduce.backend not in ("auto", "tokenizers", "gigatoken"):
        raise bad("reduce.backend", f"must be auto, tokenizers or gigatoken, got {config.reduce.backend!r}")
    for key in ("part_shards", "bucket_docs"):
        if getattr(config.reduce, key) < 1:
            raise bad(f"reduce.{key}", f"must be 1 or more, got {getattr(config.reduce, key)}")
    if config.reduce.max_file_mb < 0:
        raise bad("reduce.max_file_mb", f"must be 0 (no cap) or more, got {config.reduce.max_file_mb}")
    if config.reduce.original_ratio < 0:
        raise bad("reduce.original_ratio", f"must be 0 or more, got {config.reduce.original_ratio}")
    if not 0 <= config.sampling.top_p <= 1:
        raise bad("sampling.top_p", f"must be between 0 and 1, got {config.sampling.top_p}")
    if config.sampling.temperature < 0:
        raise bad("sampling.temperature", f"must be 0 or more, got {config.sampling.temperature}")
    _check_names(config, bad)
    _check_slurm_strings(config.slurm, bad)
    if config.plan.max_line_bytes < 1024:
        raise bad("plan.max_line_bytes", f"must be at least 1024, got {config.plan.max_line_bytes}")
    _check_pass_through(config, bad)
    _check_validate(config.validate, bad)


# Pass-through names that a typed key already sets: two ways to say one thing would let them disagree.
NAMED_ENGINE_ARGS = {"model": "model.path", "dtype": "model.dtype", "max_model_len": "model.max_model_len",
                     "revision": "model.revision", "seed": "sampling.seed", "max_num_seqs": "vllm.max_num_seqs",
                     "max_num_batched_tokens": "vllm.max_num_batched_tokens",
                     "gpu_memory_utilization": "vllm.gpu_memory_utilization",
                     "enable_prefix_caching": "vllm.enable_prefix_caching", "enforce_eager": "vllm.enforce_eager",
                     "tensor_parallel_size": "vllm.tensor_parallel_size", "kv_cache_dtype": "vllm.kv_cache_dtype"}
NAMED_SAMPLING_ARGS = {"temperature": "sampling.temperature", "top_p": "sampling.top_p", "top_k": "sampling.top_k",
                       "max_tokens": "sampling.max_tokens", "seed": "sampling.seed"}
GPU_MODES = ("per_gpu", "tensor_parallel")


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
    if config.sampling.extra and config.model.engine == "transformers":
        raise bad("sampling.extra", "is passed through to vLLM and endpoints only; transformers' generate() "
                  "spells several of those names differently (use the named sampling keys)")
    if config.slurm.gpu_mode not in GPU_MODES:
        raise bad("slurm.gpu_mode", f"must be one of {', '.join(GPU_MODES)}, got {config.slurm.gpu_mode!r}")


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


LONG_DOCS = ("truncate", "split", "keep")
DUPLICATE_IDS = ("keep_first", "reject")


def _check_plan(config: Config, bad: Any) -> None:
    plan = config.plan
    if plan.long_docs not in LONG_DOCS:
        raise bad("plan.long_docs", f"must be one of {', '.join(LONG_DOCS)}, got {plan.long_docs!r}")
    if plan.duplicate_ids not in DUPLICATE_IDS:
        raise bad("plan.duplicate_ids", f"must be one of {', '.join(DUPLICATE_IDS)}, got {plan.duplicate_ids!r}")
    if not 0 < plan.sample_fraction <= 1:
        raise bad("plan.sample_fraction", f"must be above 0 and at most 1, got {plan.sample_fraction}")
    if not 0 <= plan.max_reject_rate <= 1:
        raise bad("plan.max_reject_rate", f"must be between 0 and 1, got {plan.max_reject_rate}")
    for key in ("shard_tokens", "long_doc_chars"):
        if getattr(plan, key) <= 0:
            raise bad(f"plan.{key}", f"must be greater than 0, got {getattr(plan, key)}")
    for key in ("bytes_per_token", "max_chars", "limit", "long_doc_tokens", "group_mb"):
        if getattr(plan, key) < 0:
            raise bad(f"plan.{key}", f"must be 0 or more, got {getattr(plan, key)}")
    if plan.filter:
        from hpcsynth.plan.filters import compile_predicate

        compile_predicate(plan.filter, bad)


def _check_validate(validate: ValidateConfig, bad: Any) -> None:
    if validate.action not in ("drop", "keep"):
        raise bad("validate.action", f"must be drop or keep, got {validate.action!r}")
    if validate.preamble not in ("strip", "reject", "keep"):
        raise bad("validate.preamble", f"must be strip, reject or keep, got {validate.preamble!r}")
    unknown = [name for name in validate.skip if name not in VALIDATE_CHECKS]
    if unknown:
        raise bad("validate.skip", f"names no check {unknown[0]!r}; checks: {', '.join(VALIDATE_CHECKS)}")
    for key in ("min_length_ratio", "max_repetition", "max_tail_repetition"):
        if not 0 <= getattr(validate, key) <= 1:
            raise bad(f"validate.{key}", f"must be between 0 and 1, got {getattr(validate, key)}")
    for key in ("repetition_n", "tail_words", "min_table_rows", "min_faq_pairs", "min_math_steps",
                "min_tutorial_steps", "diversity_n"):
        if getattr(validate, key) < 1:
            raise bad(f"validate.{key}", f"must be 1 or more, got {getattr(validate, key)}")
