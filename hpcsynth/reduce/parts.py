"""A reduce part: a group of shards tokenized into part files, grouped by shuffle bucket.

The first half of the bounded-memory reduce (merge.py is the second). A part holds at most
reduce.part_shards shards in memory, whatever the run's size (or one file of a mix-in corpus). It
tokenizes every document a mix source could give (mix/feed.py): the merge chooses among them, once
every part has counted its tokens. It writes, under DIR/parts/:

  part-NNNNNN.bin          tokens of its documents, ordered by shuffle bucket (then as selected)
  part-NNNNNN.bounds.npy   int64 [3, buckets+1]: cumulative documents, tokens, docs.jsonl bytes
  part-NNNNNN.lens.npy     int32 tokens per document, in the same order
  part-NNNNNN.keys.npy     uint64 mix key per document (hpcsynth/reduce/mix/choose.py), same order
  part-NNNNNN.src.npy      uint8 mix source per document (its index in spec.mix["sources"]), same order
  part-NNNNNN.docs.jsonl   what each document is: kind, id, source_id, prompt, tokens
  part-NNNNNN.rejects.jsonl  records refused, with the reason
  part-NNNNNN.parquet      the synthetic text (reduce.text_export)
  part-NNNNNN.done.json    counts and the spec key; written LAST, so a part with one is whole

Entry point `reduce_part(out_dir, index)` takes only plain values, so a process pool or a Slurm array
task can run it; a part already done for this spec is skipped.
"""

from __future__ import annotations

import io
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from hpcsynth.errors import RunError
from hpcsynth.files import atomic_write_bytes, atomic_write_json, read_json
from hpcsynth.reduce.fast import load_fast
from hpcsynth.reduce.formats.datatrove import ds_dtype
from hpcsynth.reduce.marker import MixCounts, PartMarker
from hpcsynth.reduce.mix.choose import document_key
from hpcsynth.reduce.mix.feed import MixFeed
from hpcsynth.reduce.repaired import RepairIndex
from hpcsynth.reduce.select import Document, bucket_of, prompt_formats, synthetic_documents
from hpcsynth.reduce.spec import ReduceSpec, read_spec, settings_digest
from hpcsynth.reduce.tokenize import DocumentTokenizer, load_tokenizer
from hpcsynth.reduce.validate.benchmarks import TABLE, load_table
from hpcsynth.reduce.validate.contamination import Screen
from hpcsynth.reduce.view import apply_view
from hpcsynth.rundir import RunDir

ALL_ORIGINALS = "part-all-originals.json"  # named part-*: cleared with the parts when the spec key changes
PARITY_DOCS = 8  # each part checks its own first documents against `tokenizers`
_TOKENIZERS: dict[str, DocumentTokenizer] = {}


def reduce_part(out_dir: str, index: int) -> PartMarker:
    spec = read_spec(Path(out_dir))
    done = spec.part_done(index)
    if done is not None:
        return done
    started = time.process_time()
    run = RunDir(Path(spec.run))
    config = apply_view(run.config(), spec.run_info.get("view"))  # a grid cell: its prompt, its mix-in
    if spec.run_info.get("settings") not in (None, settings_digest(config)):
        raise RunError(f"{run.root / 'config.yaml'} changed (reduce:, validate: or plan.max_line_bytes) since this "
                       f"reduce started; run `hpcsynth reduce` again: it redoes the parts under the new settings")
    encoder = _PartEncoder(part_tokenizer(spec))
    rejects: list[dict] = []
    screen = part_screen(spec)
    feed = MixFeed(spec.mix, encoder, config.reduce.seed, all_originals=index in all_originals_parts(spec),
                   screen=screen, rejects=rejects)
    exported: list[dict] = []  # every validated record goes to the text export, mixed or not
    tally: dict[str, dict] = {}
    corpus = spec.corpus_part(index)
    if corpus is not None:
        check_corpus_file(spec, *corpus[:2])
        feed.add_corpus(*corpus, config.plan.max_line_bytes, rejects)
        check_corpus_file(spec, *corpus[:2])  # changed while it was read: rows of two versions
    formats = spec.run_info.get("formats") or prompt_formats(run.manifest())
    for shard in spec.part_shards(index):
        repairs = RepairIndex.for_shard(run, shard, spec.repair, config, formats, screen) if spec.repair else None
        synthetic = synthetic_documents(run, shard, config, rejects, formats, tally, screen, repairs)
        exported += [d.record for d in synthetic]
        feed.add_synthetic(synthetic)
    feed.add_originals(run, spec.part_shards(index))  # after the synthetic: their tokens bound the originals
    files = _write_part(spec, index, feed.docs, rejects, exported, config.reduce.seed)
    marker = PartMarker(**files, validation=tally, mix=[MixCounts(**counts) for counts in feed.counts],
                        backend=encoder.backend, backend_note=encoder.note,
                        cpu_seconds=round(time.process_time() - started, 3))
    atomic_write_json(spec.part_path(index, ".done.json"), marker.to_dict())
    return marker


def check_corpus_file(spec: ReduceSpec, source: int, file: str) -> None:
    """A mix-in corpus file must be the one prepare_reduce stamped (size, mtime; of an object in a bucket,
    size and ETag) into the spec key: rewritten, appended or deleted since, its row groups and counts no
    longer match the other parts'."""
    from hpcsynth.errors import HpcsynthError
    from hpcsynth.reduce.mix.sources import corpus_stamp

    entry = spec.mix["sources"][source]
    stamp = entry["stamps"][entry["files"].index(file)]
    try:
        now: list | str = corpus_stamp(file)
    except OSError as exc:
        now = f"unreadable ({exc.strerror})"
    except HpcsynthError:  # an object the server no longer gives
        now = "removed from its bucket"
    if now != stamp:
        said = (now if isinstance(now, str) else f"{now[0]:,} bytes now, {stamp[0]:,} then" if now[0] != stamp[0]
                else f"ETag {stamp[1]} is now {now[1]}" if isinstance(now[1], str) else "modified, same size")
        raise RunError(f"{file} (reduce.mix.sources {entry['name']}) changed since this reduce started ({said}); "
                       f"leave it alone while reduce runs, then run `hpcsynth reduce` again: it redoes the parts "
                       f"of a changed corpus")


def part_screen(spec: ReduceSpec) -> Screen | None:
    """reduce.decontaminate's benchmark table, memory-mapped from DIR/parts once per process (prepare_reduce
    built it); None when off."""
    if not spec.decontaminate:
        return None
    table = load_table(spec.parts_dir, spec.decontaminate["table"])
    if table is None:
        raise RunError(f"{spec.parts_dir}/{TABLE}.* (the benchmarks' n-grams, reduce.decontaminate) is missing or "
                       f"damaged; run `hpcsynth reduce {spec.run} --out {spec.out}` again: it builds it anew")
    return Screen(table)


def all_originals_parts(spec: ReduceSpec) -> set[int]:
    """Parts the merge found short of counted originals (mix/feed.py): they tokenize all of them."""
    try:
        return set(read_json(spec.parts_dir / ALL_ORIGINALS))
    except (OSError, ValueError, TypeError):
        return set()


def part_tokenizer(spec: ReduceSpec) -> DocumentTokenizer:
    """The spec's tokenizer, loaded once per process (a pool worker reduces many parts)."""
    if spec.key not in _TOKENIZERS:
        described = spec.tokenizer
        tok = load_tokenizer(described["tokenizer"], described["eos_token"])
        tok = replace(tok, eos_source=described["eos_source"])
        if described["backend"] == "gigatoken":
            fast = load_fast(tok)
            if fast is not None:
                tok = replace(tok, fast=fast, backend="gigatoken")
        _TOKENIZERS[spec.key] = tok
    return _TOKENIZERS[spec.key]


def remember_tokenizer(spec: ReduceSpec, tok: DocumentTokenizer) -> None:
    """Hand the tokenizer prepare_reduce already loaded to the parts of this process (and of forked
    --jobs workers): loading a large vocabulary twice costs ~0.5 s."""
    _TOKENIZERS[spec.key] = tok


class _PartEncoder:
    """Encodes a part's documents. With the fast backend on, the first few rephrasings and the first few
    originals of the part are checked against `tokenizers` too; any difference switches this part to
    `tokenizers` (slower, never different)."""

    def __init__(self, tok: DocumentTokenizer) -> None:
        self.tok = tok
        self.checked: set[str] = set()
        self.backend = tok.backend
        self.note = ""

    def encode(self, texts: list[str], kind: str = "synthetic") -> list[np.ndarray]:
        if self.tok.fast is not None and kind not in self.checked and texts:
            self.checked.add(kind)
            sample = texts[:PARITY_DOCS]
            if any(list(a) != b for a, b in zip(self.tok.encode_raw(sample), self.tok.encode_reference(sample))):
                self.tok = replace(self.tok, fast=None, backend="tokenizers")
                self.backend = "tokenizers"
                self.note = f"gigatoken differed from tokenizers on this part's first {kind} documents"
        return self.tok.documents(texts) if texts else []


def _write_part(spec: ReduceSpec, index: int, docs: list[tuple[Document, np.ndarray]], rejects: list[dict],
                exported: list[dict], seed: int) -> dict[str, Any]:
    buckets = np.asarray([bucket_of(doc.id, seed, spec.buckets) for doc, _ in docs], dtype=np.int64)
    order = np.argsort(buckets, kind="stable")
    names = [s["name"] for s in spec.mix["sources"]]
    lines = [orjson.dumps({"kind": docs[i][0].kind, "source": names[docs[i][0].source], "id": docs[i][0].id,
                           "source_id": docs[i][0].source_id, "prompt": docs[i][0].prompt,
                           "tokens": len(docs[i][1]), **docs[i][0].repair}) + b"\n" for i in order]
    lens = np.asarray([len(docs[i][1]) for i in order], dtype=np.int32)
    keys = np.asarray([document_key(docs[i][0].id, seed) for i in order], dtype=np.uint64)
    sources = np.asarray([docs[i][0].source for i in order], dtype=np.uint8)
    bounds = np.zeros((3, spec.buckets + 1), dtype=np.int64)
    bounds[0, 1:] = np.cumsum(np.bincount(buckets, minlength=spec.buckets))
    token_ends = np.concatenate(([0], np.cumsum(lens, dtype=np.int64)))
    byte_ends = np.concatenate(([0], np.cumsum([len(line) for line in lines], dtype=np.int64)))
    bounds[1], bounds[2] = token_ends[bounds[0]], byte_ends[bounds[0]]
    dtype = ds_dtype(spec.tokenizer["vocab_size"])
    tokens: np.ndarray = np.concatenate([docs[i][1] for i in order]).astype(dtype) if docs else np.zeros(0, dtype)
    atomic_write_bytes(spec.part_path(index, ".bin"), tokens.tobytes())
    atomic_write_bytes(spec.part_path(index, ".lens.npy"), _npy(lens))
    atomic_write_bytes(spec.part_path(index, ".keys.npy"), _npy(keys))
    atomic_write_bytes(spec.part_path(index, ".src.npy"), _npy(sources))
    atomic_write_bytes(spec.part_path(index, ".bounds.npy"), _npy(bounds))
    atomic_write_bytes(spec.part_path(index, ".docs.jsonl"), b"".join(lines))
    atomic_write_bytes(spec.part_path(index, ".rejects.jsonl"), b"".join(orjson.dumps(r) + b"\n" for r in rejects))
    if spec.text_export:
        from hpcsynth.reduce.formats.parquet import write_text_part

        write_text_part(spec.part_path(index, ".parquet"), exported)
    return {"key": spec.key, "shards": spec.part_shards(index), "documents": len(docs),
            "tokens": int(token_ends[-1]), "text_rows": len(exported), "rejected_records": len(rejects),
            "max_token": int(max((a.max() for _, a in docs if len(a)), default=0))}


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()
