"""Reduce: validate committed outputs, mix in original web text, tokenize into training files.

Last stage of the flow. Reads RUN/done/ and RUN/outputs/ (and RUN/shards/ for the originals), writes
DIR/NAME.bin + DIR/NAME.idx (Megatron indexed dataset), DIR/NAME.docs.jsonl (what each sequence is) and
DIR/report.json. Documents are shuffled with a fixed seed before writing, because flat readers cut
contiguous windows.

This first version holds the texts of the run in memory; it suits runs up to a few million records.
"""

from __future__ import annotations

import random
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from hpcsynth.config import Config
from hpcsynth.errors import RunError
from hpcsynth.files import atomic_write_bytes, atomic_write_json, read_json, read_jsonl_zst, sha256_file
from hpcsynth.reduce.formats.megatron import IndexedDatasetWriter, token_dtype
from hpcsynth.rundir import RunDir, shard_name
from hpcsynth.reduce.tokenize import load_tokenizer

ENCODE_BATCH = 256


@dataclass(frozen=True)
class ReduceReport:
    out_dir: Path
    prefix: Path
    data: dict[str, Any]


def reduce_run(run: RunDir, out_dir: Path | None = None, tokenizer: str | None = None,
               partial: bool = False) -> ReduceReport:
    manifest = run.manifest()
    config = run.config()
    out_dir = Path(out_dir) if out_dir else run.default_reduce_dir
    started = time.monotonic()
    shards, problems = _valid_shards(run, manifest, partial)
    synthetic, rejects = _synthetic_documents(run, shards, config)
    originals = _original_documents(run, shards, config)

    tok = load_tokenizer(tokenizer or config.reduce.tokenizer or config.model.path, config.reduce.eos_token,
                         key="--tokenizer" if tokenizer else "reduce.tokenizer")
    synthetic_tokens = _encode_all(tok, synthetic)
    target = config.reduce.original_ratio * sum(len(ids) for ids in synthetic_tokens)
    original_tokens: list[list[int]] = []
    taken = 0
    for start in range(0, len(originals), ENCODE_BATCH):
        if taken >= target:
            break
        batch = originals[start:start + ENCODE_BATCH]
        for ids in tok.encode([text for _, text in batch]):
            if taken >= target:
                break
            original_tokens.append(ids)
            taken += len(ids)
    originals = originals[:len(original_tokens)]

    entries = [("synthetic", doc_id, ids) for (doc_id, _), ids in zip(synthetic, synthetic_tokens)]
    entries += [("original", doc_id, ids) for (doc_id, _), ids in zip(originals, original_tokens)]
    random.Random(config.reduce.seed).shuffle(entries)

    prefix = out_dir / config.reduce.name
    writer = IndexedDatasetWriter(prefix, token_dtype(tok.vocab_size))
    for _, _, ids in entries:
        writer.add(ids)
    bin_path, idx_path = writer.finish()
    index = b"".join(orjson.dumps({"seq": i, "kind": kind, "id": doc_id, "tokens": len(ids)}) + b"\n"
                     for i, (kind, doc_id, ids) in enumerate(entries))
    atomic_write_bytes(prefix.with_name(prefix.name + ".docs.jsonl"), index)
    if rejects:
        atomic_write_bytes(out_dir / "rejects.jsonl", b"".join(orjson.dumps(r) + b"\n" for r in rejects))

    syn_tokens = sum(len(ids) for ids in synthetic_tokens)
    orig_tokens = sum(len(ids) for ids in original_tokens)
    data = {
        "run": str(run.root), "fingerprint": run.fingerprint(), "format": config.reduce.format,
        "prefix": str(prefix), "bin": bin_path.name, "idx": idx_path.name,
        "tokenizer": str(tok.path), "eos_token": tok.eos_token, "eos_id": tok.eos_id,
        "dtype": token_dtype(tok.vocab_size).__name__,
        "shards_used": len(shards), "shards_skipped": problems,
        "synthetic_documents": len(synthetic), "synthetic_tokens": syn_tokens,
        "original_documents": len(original_tokens), "original_tokens": orig_tokens,
        "original_ratio_target": config.reduce.original_ratio,
        "original_ratio": round(orig_tokens / syn_tokens, 4) if syn_tokens else None,
        # True when every source document was mixed in and the ratio still fell short.
        "original_pool_exhausted": orig_tokens < target,
        "rejected_records": len(rejects),
        "sequences": len(entries), "tokens": syn_tokens + orig_tokens,
        "seconds": round(time.monotonic() - started, 2),
    }
    atomic_write_json(out_dir / "report.json", data)
    return ReduceReport(out_dir, prefix, data)


def _valid_shards(run: RunDir, manifest: dict, partial: bool) -> tuple[list[int], list[dict]]:
    """Shards whose done marker matches the run and whose output has the recorded checksum."""
    digest = run.fingerprint()
    valid, problems = [], []
    for shard in (s["id"] for s in manifest["shards"]):
        marker_path = run.done_path(shard)
        if not marker_path.is_file():
            problems.append({"shard": shard, "reason": "not done"})
            continue
        marker = read_json(marker_path)
        output = run.output_path(shard)
        if marker.get("fingerprint") != digest:
            problems.append({"shard": shard, "reason": "done under another config fingerprint"})
        elif not output.is_file() or sha256_file(output) != marker.get("sha256"):
            problems.append({"shard": shard, "reason": f"{output.name} is missing or its checksum differs"})
        else:
            valid.append(shard)
    if problems and not partial:
        _refuse_while_running(run, len(problems), len(valid))
        first = problems[0]
        raise RunError(f"{len(problems)} of {len(manifest['shards'])} shards are not ready (shard "
                       f"{shard_name(first['shard'])}: {first['reason']}); run `hpcsynth launch {run.root}` "
                       f"to finish them, or pass --partial to reduce what is done")
    if not valid:
        raise RunError(f"no shard of {run.root} is done; run `hpcsynth launch {run.root}` first")
    return valid, problems


def _refuse_while_running(run: RunDir, missing: int, ready: int) -> None:
    """Shards that live workers generate right now: say so, rather than asking for a launch."""
    from hpcsynth.status import collect_status

    running = collect_status(run, slurm=False)["running_shards"]
    if not running:
        return
    workers = sorted({r["worker"] for r in running})
    shown = ", ".join(shard_name(r["shard"]) for r in running[:5]) + (", ..." if len(running) > 5 else "")
    raise RunError(f"{len(running)} of the {missing} shards not yet done are being generated now ({shown}; by "
                   f"{len(workers)} worker(s): {', '.join(workers[:3])}{', ...' if len(workers) > 3 else ''}); "
                   f"reduce once they are done (`hpcsynth status {shlex.quote(str(run.root))} --watch` ends when they are), or "
                   f"pass --partial to reduce the {ready} done now")


def _synthetic_documents(run: RunDir, shards: list[int], config: Config) -> tuple[list[tuple[str, str]], list[dict]]:
    keep, rejects = [], []
    for shard in shards:
        for record in read_jsonl_zst(run.output_path(shard)):
            reason = _check_record(record, config)
            if reason:
                rejects.append({"id": record.get("id"), "shard": shard, "reason": reason})
            else:
                keep.append((record["id"], record["text"]))
    return keep, rejects


def _check_record(record: dict, config: Config) -> str:
    text = record.get("text")
    if not isinstance(text, str):
        return "text is not a string"
    if len(text.strip()) < config.reduce.min_chars:
        return f"shorter than reduce.min_chars={config.reduce.min_chars}"
    finish = record.get("finish_reason")
    if finish not in ("stop", "length"):
        return f"finish_reason {finish!r}"
    if finish == "length" and config.reduce.drop_truncated:
        return "cut at max_tokens (reduce.drop_truncated)"
    return ""


def _original_documents(run: RunDir, shards: list[int], config: Config) -> list[tuple[str, str]]:
    """The run's own source documents, in a seeded random order, as the mix-in pool."""
    if config.reduce.original_ratio <= 0:
        return []
    docs = [(f"{d['key']}", d["text"]) for shard in shards for d in read_jsonl_zst(run.shard_path(shard))]
    random.Random(config.reduce.seed + 1).shuffle(docs)
    return docs


def _encode_all(tok, docs: list[tuple[str, str]]) -> list[list[int]]:
    out: list[list[int]] = []
    for start in range(0, len(docs), ENCODE_BATCH):
        out += tok.encode([text for _, text in docs[start:start + ENCODE_BATCH]])
    return out
