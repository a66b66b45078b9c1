"""The config's sections: frozen, typed dataclasses, one per YAML section, each default with its reason."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

# Every setting that takes one of a fixed set: the Literal is the one list (config/checks.py names its
# values in the error; config/build.py takes any string for it and leaves the check to checks.py).
Engine = Literal["transformers", "vllm", "endpoint", "fake"]
TokenFormat = Literal["megatron", "datatrove", "numpy"]
Dtype = Literal["bfloat16", "float16", "float32", "auto"]
LongDocs = Literal["truncate", "split", "keep"]
DuplicateIds = Literal["keep_first", "reject"]
GpuRequest = Literal["gres", "gpus"]
GpuMode = Literal["per_gpu", "tensor_parallel"]
TooFew = Literal["shrink", "repeat", "error"]
Oversize = Literal["cut", "drop"]
TokenizerBackend = Literal["auto", "tokenizers", "gigatoken"]
RejectAction = Literal["drop", "keep"]
Preamble = Literal["strip", "reject", "keep"]

ENGINES: tuple[str, ...] = get_args(Engine)
FORMATS: tuple[str, ...] = get_args(TokenFormat)
DTYPES: tuple[str, ...] = get_args(Dtype)


@dataclass(frozen=True)
class Range:
    """The values a numeric key takes: lo to hi (above lo, when `above`), and 0 as well where `zero` says what
    0 means. Values outside it were accepted and then failed late, silently or in sbatch (a 10^12-task
    array, a nan temperature, a 0 batch); config/checks.py refuses them at load in one line that gives `why`."""

    lo: float
    hi: float
    why: str
    zero: str = ""
    above: bool = False


def ranged(default: Any, lo: float, hi: float, why: str, zero: str = "", above: bool = False) -> Any:
    """A numeric key's default with its Range beside it (tests/test_config_ranges.py fails on a key without one)."""
    return field(default=default, metadata={"range": Range(lo, hi, why, zero, above)})


MAX_TOKENS = 1 << 62  # reduce.mix token counts: past any real corpus, inside JSON's 64-bit integers
WEIGHT_WHY = "a relative share: token counts as weights still fit, and their sum stays finite"
COUNT_WHY = "a count in one output; no answer holds 10,000"


@dataclass(frozen=True)
class PlanConfig:
    # Files, directories or globs: JSONL (plain, .gz or .zst) or Parquet; `hpcsynth plan --input` replaces them.
    inputs: tuple[str, ...] = ()
    # A cap beside plan.shard_tokens: 10,000 documents x 4 prompts keeps a shard of very short documents
    # (tweets, titles) to minutes of GPU work; 339M FineWeb-Edu documents stay a few hundred thousand files.
    shard_docs: int = ranged(10000, 1, 10**8, "a shard is what one lease holds and a crash loses; 100M documents "
                             "is weeks of GPU work")
    # dolma / datatrove field names for the document text and its id.
    text_key: str = "text"
    id_key: str = "id"
    # Shorter documents carry too little to rephrase; they are counted and skipped.
    min_chars: int = ranged(1, 0, 1 << 32, "characters; no document is longer than the 4 GiB line "
                            "plan.max_line_bytes lets through")
    # zstd level 3: ~250 MB/s to write, ~1.4 GB/s to read; higher levels cost far more than they save.
    zstd_level: int = ranged(3, 1, 22, "zstd's own levels")
    # A corpus line longer than this is a counted reject, never read whole: web documents stay far
    # below it (the longest FineWeb pages are a few MB), and it bounds what a decompression bomb costs.
    max_line_bytes: int = ranged(64 << 20, 1024, 1 << 32, "a line is held whole by each planning process: 4 GiB at "
                                 "most; under 1 KiB would reject ordinary pages")
    # ~1,000 FineWeb-Edu documents of ~1k tokens: minutes of GPU work per shard, balanced by tokens so that
    # a shard of long documents does not take ten times longer than one of short ones.
    shard_tokens: int = ranged(1_000_000, 1, 10**10, "a shard is what a crash loses: 10B tokens is weeks of one GPU")
    # 0: measure UTF-8 bytes per token on the first MiB of the corpus with model.path's tokenizer when it
    # has one, else 4.0 (English web text under ~50k-vocabulary BPE tokenizers averages 4.2-4.6).
    bytes_per_token: float = ranged(0.0, 1.0, 64.0, "every token is a byte or more of text, and none averages 64",
                                    zero="measure it")
    # Metadata fields (dotted for nested ones) copied into each document's "meta" and every output record.
    keep_fields: tuple[str, ...] = ()
    # A predicate over metadata, e.g. 'int_score >= 3 and language == "en"'; empty keeps everything.
    filter: str = ""
    # 0 leaves the filter off; a document longer than this is filtered (and listed in the rejects file).
    max_chars: int = ranged(0, 0, 1 << 32, "characters, as plan.min_chars", zero="off")
    # Plan at most this many documents, in input order (0: all); the study rephrases subsets.
    limit: int = ranged(0, 0, 10**12, "documents; the largest web corpora hold ~10^11", zero="all")
    # Keep this seeded fraction of documents (chosen by a hash of the id, so it does not depend on order).
    sample_fraction: float = ranged(1.0, 0.0, 1.0, "a share of the documents; 0 would plan none", above=True)
    # Another seed draws another subset of the same size; 0 is as good a default as any.
    sample_seed: int = ranged(0, 0, 2**32 - 1, "a seed; 2^32 of them are plenty, and a longer one is a typo")
    # FinePhrase cut documents at ~18k characters: "truncate" at a paragraph boundary, "split" into parts
    # rephrased separately, or "keep" them whole (the worker still cuts at model.max_input_chars).
    long_docs: LongDocs = "truncate"
    # The long-document budget in characters: FinePhrase's ~18k characters fit SmolLM2's 8k context.
    long_doc_chars: int = ranged(18000, 1, 1 << 32, "characters, as plan.min_chars")
    # The same budget in estimated tokens instead (0: use long_doc_chars), for models with other contexts.
    long_doc_tokens: int = ranged(0, 0, 1 << 28, "tokens; 268M is past any model's context", zero="use long_doc_chars")
    # "keep_first" plans the first document of an id and rejects later ones; "reject" rejects all of them.
    duplicate_ids: DuplicateIds = "keep_first"
    # A few bad lines are normal in a web dump; more than 5% means a wrong text_key, format or file.
    # Under skip_bad_files, the bytes of lost files, as a share of all input bytes, are held to it too.
    max_reject_rate: float = ranged(0.05, 0.0, 1.0, "a share of the documents")
    # A file that cannot be read whole (a cut .gz/.zst, a corrupt Parquet file or one without text_key)
    # fails the plan: its documents would vanish unseen. true plans without it, listed as a lost file
    # (the documents read before the failure are kept) and its bytes counted against max_reject_rate.
    skip_bad_files: bool = False
    # Consecutive input files are planned together (one process, no shard across groups) up to this many
    # MB on disk: 8 MB keeps processes busy and lets small files share shards (0: each file alone). A plan
    # under 16 x this takes 1/16 of its input per group (not under 1 MB), so a pool is busy to the end.
    group_mb: int = ranged(8, 0, 10**6, "MB one process plans; a TB is past any useful group", zero="each file alone")


@dataclass(frozen=True)
class ModelConfig:
    # transformers: CPU or one GPU, tests and small users; vllm: production; endpoint: an
    # OpenAI-compatible server; fake: no model, for unit tests and fault injection.
    engine: Engine = "transformers"
    # A local model directory (or a hub id your cluster has cached); hpcsynth downloads nothing.
    path: str = ""
    # A hub revision (commit or tag) recorded in every output; empty for a plain directory.
    revision: str = ""
    # SmolLM2 and most small instruct models are trained and served in bf16.
    dtype: Dtype = "bfloat16"
    # FinePhrase ran SmolLM2 with an 8k context.
    max_model_len: int = ranged(8192, 1, 1 << 24, "tokens; 16M is past any model's context")
    # FinePhrase cut documents longer than ~18k characters at the last newline; we do too, and record it.
    max_input_chars: int = ranged(18000, 1, 1 << 32, "characters, as plan.min_chars")


@dataclass(frozen=True)
class SamplingConfig:
    # Plain sampling from the model's distribution, as FinePhrase rephrased: varied, not greedy.
    temperature: float = ranged(1.0, 0.0, 5.0, "0 is greedy; past 5 every model samples noise")
    # 1.0 leaves nucleus sampling off.
    top_p: float = ranged(1.0, 0.0, 1.0, "a share of the probability mass; vLLM refuses 0", above=True)
    # 0 turns top-k off; transformers and vLLM then sample alike.
    top_k: int = ranged(0, 0, 1 << 20, "tokens; past any vocabulary, the largest of which hold ~262k", zero="off")
    # FinePhrase's cap; outputs average ~360 tokens, so the cap only trims runaways.
    max_tokens: int = ranged(2048, 1, 1 << 20, "new tokens; 1M is past any model's context")
    # Each record's seed is derived from this and the record id, so reruns reproduce a record.
    seed: int = ranged(0, 0, 2**32 - 1, "vLLM seeds numpy with it, which takes 0 to 2^32-1")
    # Any other vLLM SamplingParams argument (e.g. repetition_penalty, min_p), passed through as given
    # (to an endpoint as request body fields); empty because FinePhrase sampled plainly.
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkerConfig:
    # Requests handed to the engine at once (transformers: one padded batch).
    batch_size: int = ranged(8, 1, 1 << 16, "requests held at once by one engine; 65,536 is past any device's batch")
    # Completed records reach the disk at least this often: the most work a crash can cost.
    flush_interval_s: float = ranged(60.0, 0.01, 86400.0, "seconds: under 10 ms every record is its own write, "
                                     "and a crash should never cost more than a day")
    # How often status sees fresh numbers.
    heartbeat_interval_s: float = ranged(10.0, 0.01, 3600.0, "seconds: under 10 ms the heartbeat is all the "
                                         "worker writes; past an hour status sees nothing live")
    # A shard whose lease has not been renewed for this long may be taken over by another worker.
    lease_timeout_s: float = ranged(300.0, 1.0, 604800.0, "seconds: under one a live lease is taken over; past "
                                    "a week a dead worker's shard waits a week")
    # Fail the shard when the engine holds requests but finishes none for this long (a hung GPU or
    # server); FinePhrase outputs take seconds each, so ten quiet minutes mean something is stuck.
    watchdog_s: float = ranged(600.0, 0.1, 604800.0, "seconds: under 0.1 no completion arrives in time; past a "
                               "week a hung GPU is held a week")
    # Out-of-memory errors answered by halving the engine's concurrency before the shard fails.
    oom_retries: int = ranged(3, 0, 30, "each halves the concurrency: 30 halvings bring any batch down to one")
    # torch intra-op threads; 0 leaves torch's default. Tests use 1 (shared cores thrash at 2+).
    threads: int = ranged(0, 0, 4096, "no node has more hardware threads", zero="torch's default")
    # "auto" picks cuda when present, else cpu.
    device: str = "auto"


@dataclass(frozen=True)
class VllmConfig:
    # Sequences decoded together. FinePhrase used 2048, but the KV pool of a 1.7B model holds ~215 (H100)
    # to ~400 (H200) sequences, so more only queues inside vLLM.
    max_num_seqs: int = ranged(512, 1, 1 << 16, "sequences in one GPU's batch; past 2,048 they only queue")
    # 32768 was faster for FinePhrase but ran out of memory; 16384 is their stable setting.
    max_num_batched_tokens: int = ranged(16384, 1, 1 << 24, "tokens per step; 16M is past any GPU's memory")
    # 0.95 hit OOM in FinePhrase; 0.90 did not.
    gpu_memory_utilization: float = ranged(0.90, 0.01, 1.0, "a share of the GPU's memory; under 1% holds no model")
    # The four prompts share their instructions; caching their prefix saves prefill.
    enable_prefix_caching: bool = True
    # CUDA graphs cost minutes at start-up and pay off over a shard; tests turn them off.
    enforce_eager: bool = False
    tensor_parallel_size: int = ranged(1, 1, 256, "GPUs under one engine: 32 nodes of 8 is past any rephraser")
    # Speculative decoding, passed through to vLLM (FinePhrase: method "suffix", 32 tokens, ~1.75x).
    speculative_method: str = ""
    num_speculative_tokens: int = ranged(0, 0, 1024, "tokens guessed per step; FinePhrase used 32", zero="off")
    kv_cache_dtype: str = "auto"
    # Requests kept queued in the engine beyond max_num_seqs, so a finished slot refills at once.
    in_flight: int = ranged(0, 0, 1 << 20, "queued requests each hold a document, ~18k chars: a million is ~20 GB "
                            "of host memory")
    # Any other vllm.LLM(...) argument our keys do not name (e.g. speculative_config, quantization),
    # checked against vLLM's own signature; empty: the named keys above cover the FinePhrase recipe.
    engine_args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EndpointConfig:
    # An OpenAI-compatible server (vllm serve, SGLang, TGI); loopback unless you say otherwise.
    url: str = "http://127.0.0.1:8000/v1"
    # Requests open at once: enough to fill the server's batch, few enough not to time out in its queue.
    concurrency: int = ranged(64, 1, 1 << 16, "open connections; past 65,536 the client runs out of ports")
    # A 2048-token answer from a busy server can take minutes.
    timeout_s: float = ranged(600.0, 0.1, 86400.0, "seconds per request: under 0.1 no server answers; a day is "
                              "past any answer")
    # Connection errors, 429 and 5xx: retried this many times, waits doubling from backoff_s.
    retries: int = ranged(5, 0, 100, "each waits up to a minute: 100 outlasts any outage worth waiting for")
    backoff_s: float = ranged(1.0, 0.0, 60.0, "seconds; the waits stop doubling at 60 anyway")
    # Name of the environment variable holding an API key, if the server wants one.
    api_key_env: str = ""
    # An API key sent over plain http to another host can be read on the way; say true only for a
    # network you trust (loopback and https never need it).
    allow_plain_http_key: bool = False


@dataclass(frozen=True)
class SlurmConfig:
    # Array tasks = GPUs kept busy; each starts its engine once and pulls shards until none remain.
    array_tasks: int = ranged(8, 1, 100_000, "GPUs kept busy, ~1,000 for FinePhrase; no cluster lends 100,000")
    # Several shards per array task instead of pulling: each task gets its own fixed group (0: pull).
    shards_per_task: int = ranged(0, 0, 10**7, "FinePhrase had 339k shards in all", zero="pull")
    # Slurm's %N: at most this many array tasks at once (0: no limit).
    array_parallelism: int = ranged(0, 0, 100_000, "as slurm.array_tasks", zero="no limit")
    # Empty partition, qos and account leave Slurm's defaults; a site profile sets them.
    partition: str = ""
    qos: str = ""
    account: str = ""
    # One engine per GPU: generators around 1-2B gain nothing from tensor parallelism.
    gpus_per_task: int = ranged(1, 0, 64, "a task runs on one node, and none holds 64 GPUs",
                                zero="no GPU, for endpoint or CPU engines")
    # "gres" asks --gres=gpu:N (works on every Slurm); "gpus" asks --gpus-per-task=N.
    gpu_request: GpuRequest = "gres"
    # Tokenization, the request stream and zstd need a few cores and host memory beside each GPU.
    cpus_per_task: int = ranged(8, 1, 4096, "no node has more hardware threads")
    mem_gb: int = ranged(64, 0, 65536, "no node has 64 TB", zero="Slurm's --mem=0, all of the node's memory")
    # Requeue on a time limit is built in, so a short limit mostly buys earlier starts.
    time_min: int = ranged(240, 1, 525600, "minutes: a year is past any partition's limit; 0 asks Slurm for "
                           "no limit, which partitions refuse")
    # USR2 comes this long before the limit: enough to flush the progress logs and requeue.
    signal_delay_s: int = ranged(120, 1, 65535, "Slurm's --signal takes at most 65,535 s; 0 leaves no time to flush")
    # 0 reads MaxArraySize from `scontrol show config`; arrays larger than that are split.
    max_array_size: int = ranged(0, 0, 4_000_001, "Slurm's own ceiling for MaxArraySize", zero="read it from scontrol")
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
    gpu_mode: GpuMode = "per_gpu"


@dataclass(frozen=True)
class MixSource:
    # "run_originals" (the run's own source documents) or a name of your choosing for another corpus;
    # it names the source in mix.json, the report and every error.
    name: str = ""
    # A corpus's files, directory or glob (JSONL plain/.gz/.zst or Parquet, read like plan.inputs);
    # empty for run_originals, whose documents are the run's shards.
    path: str = ""
    # The corpus's field names for the text and its id, as plan.text_key and plan.id_key.
    text_key: str = "text"
    id_key: str = "id"
    # Relative share of the written tokens, against every other source's and synthetic prompt's weight.
    weight: float = ranged(1.0, 0.0, 1e12, WEIGHT_WHY, above=True)


@dataclass(frozen=True)
class MixConfig:
    # Prompt -> weight; "*" pools every prompt as one source in its natural proportions. Empty: {"*": 1.0}.
    # A prompt left out is validated and exported as text, but not written to the token files.
    synthetic: dict[str, float] = field(default_factory=dict,
                                        metadata={"range": Range(0.0, 1e12, WEIGHT_WHY, above=True)})
    # Mix-in sources; empty: run_originals at weight reduce.original_ratio x the synthetic weights
    # (so the simple form keeps working), none when original_ratio is 0.
    sources: tuple[MixSource, ...] = ()
    # A source with fewer tokens than its share needs: "shrink" the total until it fits (every share
    # stays exact and nothing repeats; the command says by how much), "repeat" its documents up to
    # max_repeat times, or "error". Shrink is the default: it is never off target and never invents data.
    too_few: TooFew = "shrink"
    # Most times a source may be used under too_few: repeat; repeated text beyond ~4 epochs stops helping
    # (Muennighoff et al., data-constrained scaling).
    max_repeat: float = ranged(4.0, 1.0, 1e18, "1: no repeat; the written total and the free-disk check bound what "
                               "repeats cost, so the cap only has to stay a number")
    # Tokens written in all; 0: as many as the scarcest synthetic prompt allows without repeating it
    # (all of the synthetic text when its prompts are pooled), generation being the costly part.
    total_tokens: int = ranged(0, 0, MAX_TOKENS, "JSON readers stop at 64-bit integers",
                               zero="as many as the synthetic text allows")
    # Largest document in tokens (with BOS and EOS); 0: no cap. A FinePhrase document is cut at 18,000
    # chars (~4.5k tokens) and a rephrasing is at most 2,048: 65,536 leaves those whole, while one 10 MB
    # page (~2.5M tokens) could otherwise be most of a small mix.
    max_doc_tokens: int = ranged(65536, 16, MAX_TOKENS, "16 is BOS, EOS and a few words; JSON readers stop at "
                                 "64-bit integers", zero="no cap")
    # What happens to a larger document: "cut" keeps its first max_doc_tokens (the start of a page is its
    # most coherent part), "drop" leaves it out; either way it is counted in mix.json.
    oversize: Oversize = "cut"


@dataclass(frozen=True)
class DecontaminateConfig:
    """Benchmark text kept out of the training files (hpcsynth/reduce/validate/benchmarks.py, docs/reduce.md)."""

    # Your own copies of the benchmarks (GSM8K, MMLU...): JSONL (plain, .gz, .zst) or Parquet files,
    # directories or globs, read like plan.inputs; nothing is downloaded. Empty: no decontamination.
    benchmarks: tuple[str, ...] = ()
    # A record or document sharing n consecutive words (lowercased \w+ words) with a benchmark item is
    # refused: 13, as GPT-3's and later decontaminations, is long enough that no everyday phrase matches.
    ngram: int = ranged(13, 4, 256, "words: under 4 everyday phrases match, and a 256-word n-gram is a page")
    # The fields of a benchmark record whose text is checked, joined by line breaks (question and answer:
    # [question, answer]; a list of strings, e.g. MMLU's choices, counts as its lines).
    text_keys: tuple[str, ...] = ("text",)


@dataclass(frozen=True)
class ReduceConfig:
    # tokenizer.json file or a directory holding one; empty: the generator's own tokenizer.
    tokenizer: str = ""
    # Appended after every document; empty: from tokenizer_config.json, else a well-known EOS token.
    eos_token: str = ""
    # Original web tokens mixed in per synthetic token (FinePhrase: the mix matters; 1.0 is half/half).
    original_ratio: float = ranged(1.0, 0.0, 1000.0, "past 1,000 the synthetic text is a rounding error; "
                                   "reduce.mix says other mixes exactly")
    # Megatron .bin/.idx: read by Megatron-LM and NeMo, and as a flat array by nanoGPT and OLMo-core;
    # "datatrove" writes .ds/.ds.index/.ds.metadata (nanotron), "numpy" one flat .npy array.
    format: TokenFormat = "megatron"
    # Flat readers cut contiguous windows, so documents are shuffled (seeded) before writing.
    seed: int = ranged(0, 0, 2**32 - 1, "as plan.sample_seed")
    # Drop records the engine cut at max_tokens instead of keeping a truncated rephrase.
    drop_truncated: bool = False
    # Shorter outputs are rejected (empty or near-empty generations teach nothing).
    min_chars: int = ranged(16, 0, 1 << 32, "characters, as plan.min_chars")
    # Output file prefix: DIR/NAME.bin and DIR/NAME.idx.
    name: str = "mix"
    # "auto" uses gigatoken when it encodes a sample exactly as `tokenizers` does (10-30x faster per
    # core), else `tokenizers`; "tokenizers" never tries the fast backend; "gigatoken" insists on it.
    backend: TokenizerBackend = "auto"
    # Run shards per reduce part (the unit a --jobs process or a Slurm array task does, and redoes after
    # a crash); 8 FinePhrase shards are ~20M tokens: a few minutes on one core, ~200 MB of memory.
    part_shards: int = ranged(8, 1, 10_000, "a part holds its shards in memory, ~25 MB each: 10,000 is ~250 GB")
    # Source documents per shuffle bucket; the merge holds one bucket (~2.6k tokens per FinePhrase
    # document with its rephrasings: ~250 MB of uint16), so memory stays flat as the run grows.
    bucket_docs: int = ranged(50000, 1, 10**7, "the merge holds one bucket, ~5 KB a document: 10M is ~50 GB")
    # Largest token file, in MB, before the next one starts (NAME-00000, NAME-00001...); 0: one file.
    max_file_mb: float = ranged(0.0, 0.0, 1e7, "MB; 10 TB is past any file a trainer reads", zero="no cap")
    # Also write the synthetic text as Parquet with a dataset card (what FinePhrase published).
    text_export: bool = True
    # Exact token shares of synthetic prompts and mix-in sources (hpcsynth/reduce/mix/); empty: the
    # simple form above, all prompts pooled plus run_originals at original_ratio.
    mix: MixConfig = field(default_factory=MixConfig)
    # Benchmarks whose text no synthetic record and no mixed-in document may hold; empty by default, as
    # only you know which benchmarks your model will be measured on.
    decontaminate: DecontaminateConfig = field(default_factory=DecontaminateConfig)

# The reducer's quality checks by name (hpcsynth/reduce/validate/), for validate.skip; in check order.
VALIDATE_CHECKS = ("preamble", "refusal", "too_short", "repetition", "degenerate",
                   "table_missing", "table_no_separator", "table_few_rows", "table_no_question", "table_no_answer",
                   "faq_no_questions", "faq_few_pairs", "math_no_problem", "math_no_final_answer", "math_no_steps",
                   "tutorial_no_steps")


@dataclass(frozen=True)
class ValidateConfig:
    # "drop" leaves failing records out of the mix; "keep" only counts and reports them (the demo's
    # random-weight model fails every check, and a first look at a new prompt should lose nothing).
    action: RejectAction = "drop"
    # Checks to skip by name (e.g. [too_short, table_no_question]): a check that misjudges your prompt's
    # outputs can go without losing the others; a misspelt name is refused with the list.
    skip: tuple[str, ...] = ()
    # "strip" removes a chatty first line ("Here is the FAQ:") and a closing pleasantry; "reject" drops
    # the record; "keep" leaves it. Strip: the rest is usually good, and the line teaches only chatter.
    preamble: Preamble = "strip"
    # Output chars per input char below this is a give-up: a FinePhrase math problem from an 18,000-char
    # document is ~1,000 chars (0.055); one sentence from a long page is under 0.01.
    min_length_ratio: float = ranged(0.03, 0.0, 1.0, "a ratio over 1 would refuse every output shorter than its input")
    # Word n-gram size for the repetition ratio: 4-grams skip the scaffolding real FAQs repeat ("what is").
    repetition_n: int = ranged(4, 1, 64, "words; a 64-word n-gram is a paragraph")
    # Share of repeated word 4-grams over the whole text: degenerate loops reach 0.8+, our good samples
    # of every format stay under 0.15.
    max_repetition: float = ranged(0.35, 0.0, 1.0, "a share of the n-grams")
    # Words at the end checked alone for a loop (a good start that degenerates before max_tokens).
    tail_words: int = ranged(120, 1, 1_000_000, "words; a million is the whole of any output")
    # Repeated 4-gram share allowed in that tail; higher than the whole-text limit, since it is short.
    max_tail_repetition: float = ranged(0.5, 0.0, 1.0, "a share of the n-grams")
    # Data rows a table needs below its header and separator; one row is a sentence, not a table.
    min_table_rows: int = ranged(2, 1, 10_000, COUNT_WHY)
    # Question/answer pairs an FAQ needs: one pair is a Q&A, and short documents honestly give 2-3.
    min_faq_pairs: int = ranged(2, 1, 10_000, COUNT_WHY)
    # Worked lines (a calculation or a step) a math solution needs: the prompt asks for several steps.
    min_math_steps: int = ranged(2, 1, 10_000, COUNT_WHY)
    # Numbered steps or bullets a tutorial needs: fewer is prose with a list in it.
    min_tutorial_steps: int = ranged(3, 1, 10_000, COUNT_WHY)
    # n for the distinct-n-gram diversity `hpcsynth validate` reports (distinct-2 is the usual measure).
    diversity_n: int = ranged(2, 1, 64, "words, as validate.repetition_n")


@dataclass(frozen=True)
class GridConfig:
    # Generators to compare, each {name, model: {...}, sampling: {...}} (also vllm, endpoint, worker, slurm):
    # its sections override the top-level ones key by key. Empty: no grid, one run of the top-level model.
    generators: tuple[dict[str, Any], ...] = ()
    # Mix-ins to reduce every (generator, prompt) cell with, each {name, KEY: VALUE} of reduce: keys
    # (e.g. {name: web, original_ratio: 0.5}); empty: one mix-in, "default", the reduce: section as it is.
    mixins: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class CardConfig:
    """What the dataset card of each reduce output says that the run cannot know. Not fingerprinted and not
    in the reduce's key: a licence string changes no generated record and no token."""

    # The corpus's licence as its publisher states it, an id the Hub knows (FineWeb-Edu: odc-by); the
    # rephrasings derive from it. Empty: the card's front matter says "other" and the text "not stated".
    license: str = ""
    # The corpus's languages (ISO 639-1) for the card's front matter; FineWeb-Edu is English.
    language: tuple[str, ...] = ("en",)
    # Licences of other sources of the mix (mix-ins), by the source name the mix gives them; a source
    # not listed here is taken to be under card.license.
    source_licenses: dict[str, str] = field(default_factory=dict)
    # Dollars per GPU-hour, to price the card's GPU-hours; 0 leaves the cost in hours (prices differ by site).
    gpu_hour_price: float = ranged(0.0, 0.0, 1000.0, "dollars; no GPU rents for $1,000 an hour", zero="no price")


# Checks a record can fail before any quality check (validate/generic.py basic): always dropped by reduce.
BASIC_CHECKS = ("no_text", "error", "empty", "truncated")
# What repair.checks may name: every check, and "format" for all the checks of a prompt's declared format.
REPAIR_CHECKS = BASIC_CHECKS + VALIDATE_CHECKS + ("format",)
# Checks that judge what the model chose to say rather than how the text came out; regenerating a refusal
# asks the model to change its mind, so they are left out of repair.checks' default (name one to repair it).
CONTENT_REFUSALS = ("refusal",)


@dataclass(frozen=True)
class RepairSamplingConfig:
    """sampling: keys that `hpcsynth repair`'s sub-runs use instead of the run's own (0: the run's value).
    The seed is never set here: each attempt derives its own from sampling.seed (hpcsynth/repair/subrun.py)."""

    # Every key 0 by default: a repair samples as the run did, with another seed, so what it adds is what the
    # run would have made. A little cooler (0.7) makes loops and cut-offs rarer; greedy cannot be asked for
    # (0 is the run's): with the seed not counting it would give each attempt the same text.
    temperature: float = ranged(0.0, 0.0, 5.0, "as sampling.temperature", zero="the run's sampling.temperature")
    top_p: float = ranged(0.0, 0.01, 1.0, "a share of the probability mass, as sampling.top_p",
                          zero="the run's sampling.top_p")
    top_k: int = ranged(0, 0, 1 << 20, "tokens, as sampling.top_k", zero="the run's sampling.top_k")
    # A record cut at max_tokens (check truncated) is only repaired by a larger cap or by luck.
    max_tokens: int = ranged(0, 0, 1 << 20, "new tokens, as sampling.max_tokens", zero="the run's sampling.max_tokens")
    # Laid over the run's sampling.extra, key by key (e.g. {repetition_penalty: 1.1} against loops).
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RepairConfig:
    """`hpcsynth repair RUN`: generate again the records validation refused. Not fingerprinted: the repair
    runs in sub-runs of their own (RUN/repair/attempt-K/PROMPT/), each with its own fingerprint."""

    # Which refusals are repaired: check names, "format" for every check of the prompt's format. Cut, short and
    # malformed outputs are often the sampler's luck; a content refusal (refusal) is the model's choice.
    checks: tuple[str, ...] = ("format", "truncated", "too_short", "empty")
    # Attempts `hpcsynth repair` runs when --attempts is not given; each samples the still refused records
    # again with a seed of its own. One: what the sampler's luck lost is mostly back after it (docs/benchmarks.md);
    # a record refused again and again points at the prompt or the document, which a seed does not fix.
    attempts: int = ranged(1, 1, 16, "each attempt samples what is still refused once more; 16 is past the "
                           "point where a seed still helps")
    sampling: RepairSamplingConfig = field(default_factory=RepairSamplingConfig)


@dataclass(frozen=True)
class Config:
    # FinePhrase's four structured formats; every document is rephrased once per prompt. An entry may be
    # {name: NAME, when: CONDITION} instead: that prompt then runs only on the documents the condition
    # selects (plan.filter's language over their metadata, judged once per document at plan time).
    prompts: tuple[str, ...] = ("faq", "math", "table", "tutorial")
    # Not a key of its own: the `when` of each routed entry of `prompts`, by prompt name (config/build.py
    # reads and writes them as part of `prompts`); empty: every prompt runs on every document.
    prompt_when: dict[str, str] = field(default_factory=dict, metadata={"part_of": "prompts"})
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
    # An experiment grid: prompts x generators x mix-ins from one plan (hpcsynth/study/grid.py).
    grid: GridConfig = field(default_factory=GridConfig)
    # The dataset card's licence, languages and price (hpcsynth/reduce/card.py).
    card: CardConfig = field(default_factory=CardConfig)
    # `hpcsynth repair`: which refused records are generated again, how often, and how (hpcsynth/repair/).
    repair: RepairConfig = field(default_factory=RepairConfig)


# Sections whose values change what is generated; the fingerprint covers these (plus prompt texts).
