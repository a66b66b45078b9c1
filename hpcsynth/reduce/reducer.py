"""Reduce: committed outputs -> validated, mixed, tokenized, shuffled training files (the last stage).

Reads RUN/done/, RUN/outputs/ and RUN/shards/ (the originals); writes into DIR (default RUN/reduce):
NAME.bin/.idx (or .ds, .npy), NAME.docs.jsonl, text/ (Parquet + dataset card), report.json. In three
steps, each resumable from the filesystem:

  prepare_reduce   check shards, load the tokenizer, gate the fast backend, write DIR/parts/spec.json
  reduce_part      per group of shards: tokenize into part files (parts.py); --jobs N runs N at once
  merge_parts      bucket-shuffle the parts into the output files and write the report (merge.py)

Memory is bounded by one part and one shuffle bucket, never the run. A killed reduce, run again,
redoes only the parts without a done marker. On Slurm the parts are a CPU array and the merge a
dependent job (hpcsynth/reduce/slurm.py, through execute/slurm.py); this module does not know where it runs.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from concurrent.futures import as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcsynth.errors import HpcsynthError
from hpcsynth.pool import process_pool
from hpcsynth.files import read_jsonl_zst
from hpcsynth.reduce.fast import choose_backend
from hpcsynth.reduce.lock import reduce_lock
from hpcsynth.reduce.merge import merge_parts
from hpcsynth.reduce.mix.sources import corpus_parts, part_settings, resolve_mix
from hpcsynth.reduce.marker import PartMarker
from hpcsynth.reduce.parts import reduce_part, remember_tokenizer
from hpcsynth.reduce.repaired import repair_state
from hpcsynth.reduce.select import prompt_formats, ready_shards, verified_records
from hpcsynth.reduce.settings import Remix, changes, reduce_sections
from hpcsynth.reduce.spec import (KeepParts, ReduceSpec, bucket_count, group_parts, read_spec, settings_digest,
                                  spec_key, write_spec)
from hpcsynth.reduce.tokenize import load_tokenizer
from hpcsynth.reduce.validate.benchmarks import prepare_table, resolve_benchmarks, table_key
from hpcsynth.reduce.validate.quality import validation_settings
from hpcsynth.reduce.view import apply_view
from hpcsynth.rundir import RunDir

PARITY_SAMPLE = 64  # documents the fast backend must encode exactly as `tokenizers` before it is used
# Of each, the first this many characters (a web page's whole text, mostly): `tokenizers` holds ~400 bytes
# per token of an encoding (its strings, offsets, masks), and one 10 MB page kept whole (plan.long_docs:
# keep) made this check alone cost 1.2 GB and 5 s. Each part checks its own first documents again, as far
# as it tokenizes them (parts.py), so a difference deep in a long text is still found there.
PARITY_CHARS = 16_384


@dataclass(frozen=True)
class ReduceReport:
    out_dir: Path
    prefix: Path
    data: dict[str, Any]


def reduce_run(run: RunDir, out_dir: Path | None = None, tokenizer: str | None = None, partial: bool = False,
               jobs: int = 1, on_part: Callable[[PartMarker], None] | None = None, keep_parts: KeepParts = "all",
               remix: Remix | None = None) -> ReduceReport:
    """keep_parts: "all" keeps every part after the merge (a re-mix of weights tokenizes nothing), "run"
    removes the mix-in corpora's (what `hpcsynth reduce` does unless --keep-parts; reduce/cleanup.py)."""
    out = Path(out_dir) if out_dir else run.default_reduce_dir
    with reduce_lock(out):
        spec = prepare_reduce(run, out, tokenizer, partial, keep_parts=keep_parts, remix=remix)
        run_parts_local(spec, jobs, on_part)
        data = merge_parts(str(spec.out_dir))
    return ReduceReport(spec.out_dir, Path(data["prefix"]), data)


def prepare_reduce(run: RunDir, out_dir: Path | None, tokenizer: str | None, partial: bool,
                   view: dict[str, Any] | None = None, keep_parts: KeepParts = "all",
                   remix: Remix | None = None) -> ReduceSpec:
    """view: reduce only some prompts, with some reduce: keys changed (reduce/view.py; a grid's cell).
    remix: the reduce-side sections of `reduce --config FILE` (reduce/settings.py), sent to the parts as a view."""
    manifest = run.manifest()
    if remix is not None:
        view = remix.view
    base = run.config()
    config = apply_view(base, view)
    # Where the reduce settings came from: the run's config, a --config FILE over it, or a grid's mix-in.
    made = ({"config": remix.source, "changed": remix.changes} if remix else
            {"config": "", "grid": True, "changed": changes(base, config)} if view else
            {"config": "", "changed": []})
    out = Path(out_dir) if out_dir else run.default_reduce_dir
    ready, problems = ready_shards(run, partial)
    planned = run.shard_count()
    tok = load_tokenizer(tokenizer or config.reduce.tokenizer or config.model.path, config.reduce.eos_token,
                         key="--tokenizer" if tokenizer else "reduce.tokenizer")
    if config.reduce.text_export:
        from hpcsynth.reduce.formats.parquet import require_pyarrow

        require_pyarrow()
    tok, note = choose_backend(tok, config.reduce.backend, _parity_sample(run, ready[0]))
    buckets = bucket_count(manifest, config.reduce.bucket_docs)
    described = tok.describe()
    name = config.reduce.name + ("-partial" if problems else "")
    run_info = {"fingerprint": run.fingerprint(), "model": config.model.path, "prompts": list(config.prompts),
                "seed": config.reduce.seed, "original_ratio": config.reduce.original_ratio,
                "formats": prompt_formats(manifest), "validate_action": config.validate.action,
                "settings": settings_digest(config),
                # Which validate report the card may quote (reduce/card.py): one made under these settings.
                "validate_settings": validation_settings(config),
                # What DIR/reduce-config.yaml records (reduce/settings.py): the sections and where they came from.
                "reduce_config": reduce_sections(config),
                "settings_from": made,
                **_card_context(manifest, config)}
    mix = resolve_mix(config, run)
    # Weights, too_few and total_tokens decide only the merge's choice: changing them reuses every part.
    settings = {k: v for k, v in dataclasses.asdict(config.reduce).items() if k not in ("mix", "original_ratio")}
    # The benchmarks by content (sha256), not by name: a benchmark file changed redoes the parts. None set:
    # no key at all, so the parts of a reduce made before decontamination existed keep their key.
    benchmarks = resolve_benchmarks(config.reduce.decontaminate)
    settings.pop("decontaminate")
    if benchmarks:
        settings["decontaminate"] = benchmarks
    repair = repair_state(run)  # `hpcsynth repair`'s sub-runs: in the key, so a repair since redoes the parts
    if repair:
        settings["repair"] = repair["digest"]
    if view:
        run_info["view"] = view
    if view and view.get("prompts"):  # a re-mix over all prompts keeps a plain reduce's key: its parts serve
        settings["prompts"] = list(config.prompts)
    spec = ReduceSpec(
        run=str(run.root), out=str(out), name=name, partial=bool(problems), shards_skipped=problems,
        parts=group_parts(planned, ready, config.reduce.part_shards), buckets=buckets,
        format=config.reduce.format, max_file_mb=config.reduce.max_file_mb,
        text_export=config.reduce.text_export, tokenizer=described, backend_note=note, run_info=run_info,
        key=spec_key(run.fingerprint(), {**settings, "mix": part_settings(mix),
                                         "validate": dataclasses.asdict(config.validate)}, described, buckets),
        mix=mix, corpus_parts=corpus_parts(mix, math.ceil(planned / config.reduce.part_shards),
                                           config.reduce.part_shards * config.plan.shard_docs),
        keep_parts=keep_parts, decontaminate={**benchmarks, "table": table_key(benchmarks)} if benchmarks else {},
        repair=repair)
    _drop_stale_parts(out, spec.key)
    if benchmarks:  # once per reduce, before any part: every part memory-maps it (validate/benchmarks.py)
        prepare_table(benchmarks, spec.parts_dir, config.plan.max_line_bytes)
    write_spec(spec)
    remember_tokenizer(spec, tok)
    return spec


def _card_context(manifest: dict[str, Any], config) -> dict[str, Any]:
    """What the dataset card says of the run (reduce/card.py), kept in the spec so that the merge, maybe a
    Slurm job elsewhere, needs nothing else of the run. Input files by name only (no site paths), at most 20."""
    inputs = manifest.get("inputs") or []
    return {"revision": config.model.revision, "engine": config.model.engine,
            "sampling": {"temperature": config.sampling.temperature, "top_p": config.sampling.top_p,
                         "top_k": config.sampling.top_k, "max_tokens": config.sampling.max_tokens,
                         "seed": config.sampling.seed, **({"extra": config.sampling.extra} if config.sampling.extra
                                                          else {})},
            "max_input_chars": config.model.max_input_chars,
            # The prompts of this output only: a grid cell's dataset holds one prompt of the run's.
            "prompt_table": [p for p in manifest.get("prompts", []) if p.get("name") in config.prompts],
            "run_prompts": [p.get("name") for p in manifest.get("prompts", [])],
            "documents": manifest.get("documents", 0), "input_files": len(inputs),
            "inputs": [{"name": Path(str(i.get("path", ""))).name, "documents": i.get("documents")}
                       for i in inputs[:20]],
            "card": dataclasses.asdict(config.card)}


def run_parts_local(spec: ReduceSpec, jobs: int, on_part: Callable[[PartMarker], None] | None = None) -> None:
    """Reduce every part not yet done, in this process or in `jobs` worker processes."""
    pending = [i for i in spec.part_indices() if spec.part_done(i) is None]
    if jobs <= 1 or len(pending) <= 1:
        for index in pending:
            marker = reduce_part(str(spec.out_dir), index)
            if on_part:
                on_part(marker)
        return
    import multiprocessing

    # One thread per process: N processes on N cores, not N x cores threads fighting.
    os.environ["RAYON_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    # spawn, not fork: the caller may run threads (a progress bar's refresher, a heartbeat) whose locks
    # a forked child would inherit held. Each process loads the tokenizer once (~0.5 s).
    context = multiprocessing.get_context("spawn")
    lost = HpcsynthError(f"a reduce worker process ended without a word (killed, or out of memory?); the parts "
                         f"it finished are kept: run the reduce again, with fewer --jobs than {jobs} if memory "
                         f"is short")
    with process_pool(min(jobs, len(pending)), context, lost) as pool:
        for done in as_completed([pool.submit(reduce_part, str(spec.out_dir), index) for index in pending]):
            marker = done.result()
            if on_part:
                on_part(marker)


def _parity_sample(run: RunDir, shard: int) -> list[str]:
    """Rephrasings and originals of the first ready shard: the texts the reduce will encode."""
    texts: list[str] = []
    # The output's checksum is checked as it is read (this one shard's; each part checks its own).
    for records, limit in ((verified_records(run, shard), PARITY_SAMPLE * 3 // 4),
                           (read_jsonl_zst(run.shard_path(shard)), PARITY_SAMPLE)):
        for record in records:
            if len(texts) >= limit:
                break
            if isinstance(record.get("text"), str):
                texts.append(record["text"][:PARITY_CHARS])
    return texts


def _drop_stale_parts(out: Path, key: str) -> None:
    """Parts made under other settings can never be reused; their markers would only mislead."""
    parts = out / "parts"
    for leftover in parts.glob(".part-*.tmp"):  # a killed part's half-written files
        leftover.unlink(missing_ok=True)
    try:
        old = read_spec(out)
    except Exception:  # no spec yet, or a damaged one: nothing to trust in parts/ either way
        old = None
    if old is not None and old.key == key:
        return
    if parts.is_dir():
        for path in parts.glob("part-*"):
            path.unlink()


def merge_only(out_dir: Path, on_bucket: Callable[[int, int], None] | None = None) -> ReduceReport:
    """The merge alone (the Slurm merge task, or a rerun after every part is done)."""
    data = merge_parts(str(out_dir), on_bucket)
    return ReduceReport(Path(out_dir), Path(data["prefix"]), data)
