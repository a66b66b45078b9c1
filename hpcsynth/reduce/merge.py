"""The merge: done parts -> the training files, shuffled at document level in bounded memory.

Second half of the reduce (parts.py is the first). The shuffle is a two-pass bucket shuffle: each part
put every document in a bucket drawn from the seed and the document's id, and stored its documents
grouped by bucket; the merge takes the buckets in turn, gathers that bucket's slice of every part,
permutes it with a seeded generator and writes it out. Random buckets then a random order within each
bucket is a uniform shuffle of the whole run (the Rao-Sandelius shuffle), yet the merge holds one
bucket (~reduce.bucket_docs source documents with their rephrasings), never the run. The shuffle is
written into the files themselves, not only into an index, because flat readers (nanoGPT, OLMo-core,
datatrove) cut contiguous windows from the file: a window anywhere sees synthetic and original text
of all prompts mixed, not a run of one shard's rephrasings.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from hpcsynth.errors import RunError
from hpcsynth.files import atomic_write_chunks, atomic_write_json, open_write_nofollow, sha256_file
from hpcsynth.reduce.formats.datatrove import DatatroveWriter, ds_dtype
from hpcsynth.reduce.formats.megatron import IndexedDatasetWriter, token_dtype
from hpcsynth.reduce.formats.numpy_flat import NumpyWriter
from hpcsynth.reduce.mix.choose import copies_of
from hpcsynth.reduce.marker import PartMarker
from hpcsynth.reduce.mix.plan import MixPlan, plan_mix
from hpcsynth.reduce.spec import ReduceSpec, read_spec

TOKEN_SUFFIXES = (".bin", ".idx", ".ds", ".ds.index", ".ds.metadata", ".npy")


def merge_parts(out_dir: str, on_bucket: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Write the training files, the docs index, the text export and the report; return the report.
    on_bucket(tokens written, tokens the mix will write) after each bucket: the merge reads and writes
    every token of the run again, hours at FinePhrase scale, so a user at a terminal sees it move."""
    started = time.process_time()
    spec = read_spec(Path(out_dir))
    markers: dict[int, PartMarker] = {}
    for index in spec.part_indices():
        marker = spec.part_done(index)
        if marker is None:
            raise RunError(f"reduce part {index} of {out_dir} is not done; run `hpcsynth reduce {spec.run} "
                           f"--out {out_dir}` again (done parts are kept)")
        markers[index] = marker
    if not any(m.documents for m in markers.values()):
        raise RunError(f"no record of {spec.run} passed the checks and no original text was mixed in; see "
                       f"{spec.out_dir}/parts/*.rejects.jsonl for the reasons (e.g. reduce.min_chars), or run "
                       f"`hpcsynth validate {shlex.quote(spec.run)}` for counts by check and samples")
    # Raises for too_few: error before any output file is touched.
    mix, markers = plan_mix(spec, markers, lambda parts: _all_originals(spec, parts))
    _check_room(spec, mix, markers)
    output = _Output(spec)
    docs_path = spec.out_dir / f"{spec.name}.docs.jsonl"
    docs_tmp = docs_path.with_name(docs_path.name + ".tmp")
    written = [{"documents": 0, "tokens": 0} for _ in spec.mix["sources"]]
    seq = 0
    with open_write_nofollow(docs_tmp, directory_too=False) as docs:  # a planted link is refused, not followed
        for bucket in range(spec.buckets):
            chosen = _gather(spec, mix, bucket)
            for pick in np.random.default_rng([spec.run_info["seed"], bucket]).permutation(len(chosen)):
                array, line, source, copy = chosen[pick]
                output.add(array)
                docs.write((b'{"seq":%d,"copy":%d,' % (seq, copy) if copy else b'{"seq":%d,' % seq) + line[1:])
                written[source]["documents"] += 1
                written[source]["tokens"] += len(array)
                seq += 1
            if on_bucket:
                on_bucket(output.tokens, round(mix.total))
        docs.flush()
        os.fsync(docs.fileno())
    files = output.finish()
    os.replace(docs_tmp, docs_path)
    _remove_stale(spec, files)
    from hpcsynth.reduce.card import write_cards
    from hpcsynth.reduce.mix.manifest import write_mix_manifest
    from hpcsynth.reduce.report import build_report, save_report

    manifest = write_mix_manifest(spec, markers, mix, written)  # before the cards, which render it
    text, rejects = _text_export(spec, markers), _rejects(spec, markers)
    data = build_report(spec, markers, output, files + [docs_path, spec.out_dir / manifest["file"]], text,
                        rejects, manifest["data"], merge_cpu_seconds=time.process_time() - started)
    cards = write_cards(spec, data)  # the dataset cards need the counts; report.json stays the last file written
    # The cards in the report too, so that `hpcsynth verify` finds one damaged or edited since.
    data["files"] += [{"path": str(c.relative_to(spec.out_dir)), "bytes": c.stat().st_size, "sha256": sha256_file(c)}
                      for c in cards]
    return save_report(spec, data)


def _check_room(spec: ReduceSpec, mix: MixPlan, markers: dict[int, PartMarker]) -> None:
    """Refuse, before the first byte, a mix larger than the free space of DIR: an absurd total_tokens
    with too_few: repeat and a large max_repeat would otherwise write (and loop) until the disk is full."""
    tokens = sum(m.tokens for m in markers.values())
    index_bytes = sum(spec.part_path(i, ".docs.jsonl").stat().st_size for i in markers)
    per_token = np.dtype(ds_dtype(spec.tokenizer["vocab_size"])).itemsize + (index_bytes / tokens if tokens else 0)
    need, free = mix.total * per_token, shutil.disk_usage(spec.out_dir).free
    if need > free:
        raise RunError(f"reduce.mix: this mix would write {mix.total:,.0f} tokens, ~{need / 1e9:,.1f} GB with its "
                       f"docs index, more than the {free / 1e9:,.1f} GB free in {spec.out_dir}; lower "
                       f"reduce.mix.total_tokens (or max_repeat, with too_few: repeat), or free space there")


def _gather(spec: ReduceSpec, mix: MixPlan, bucket: int) -> list[tuple[np.ndarray, bytes, int, int]]:
    """What the merge writes for one bucket: (tokens, docs line, source, copy) of its own documents the
    mix chose, and the later copies of repeated documents from other buckets. Copy c of a document of
    bucket h goes to bucket (h + c x buckets / copies) mod buckets, so the copies of a repeated document
    are spread over the file, not side by side where a trainer would read them in the same steps.
    Each home bucket is read once, in turn, and its copies found per document (a tiny source repeated
    10^5 times costs its copies, not 10^5 passes over every bucket); what is taken from another bucket
    is copied out, so the merge holds one home bucket and this bucket's output, whatever max_repeat."""
    most = max(1, max((c + (limit > 0) for c, limit in zip(mix.copies, mix.limits)), default=1))
    stride = max(1, spec.buckets // most)
    picked = []  # (copy, position in its home, entry): sorted below into copy order, as written before
    for offset in range(min(most, spec.buckets)):
        home = (bucket - offset * stride) % spec.buckets
        arrays, lines, keys, sources = _load_bucket(spec, home)
        times = copies_of(keys, sources, mix.copies, mix.limits)
        for j in np.flatnonzero(times > offset):
            array = arrays[j] if home == bucket else arrays[j].copy()
            # Copies offset, offset + buckets, ...: with more copies than buckets a home comes round again.
            picked += [(copy, j, (array, lines[j], int(sources[j]), copy))
                       for copy in range(offset, int(times[j]), spec.buckets)]
    picked.sort(key=lambda entry: (entry[0], entry[1]))
    return [entry for _, _, entry in picked]


def _all_originals(spec: ReduceSpec, parts: list[int]) -> dict[int, PartMarker]:
    """Redo these parts with every original tokenized (the mix plan needs more than they counted); in
    this process, Slurm's merge task included: it is rare, and each part is bounded."""
    from hpcsynth.reduce.parts import ALL_ORIGINALS, all_originals_parts, reduce_part

    atomic_write_json(spec.parts_dir / ALL_ORIGINALS, sorted(all_originals_parts(spec) | set(parts)))
    for index in parts:
        spec.part_path(index, ".done.json").unlink(missing_ok=True)
        reduce_part(str(spec.out_dir), index)
    markers = {index: spec.part_done(index) for index in spec.part_indices()}
    lost = [index for index, marker in markers.items() if marker is None]
    if lost:  # damaged or removed while the merge ran: not a traceback later
        raise RunError(f"reduce part {lost[0]} of {spec.out_dir} is no longer done; run `hpcsynth reduce "
                       f"{spec.run} --out {spec.out_dir}` again (done parts are kept)")
    return {index: marker for index, marker in markers.items() if marker is not None}


def _load_bucket(spec: ReduceSpec, bucket: int) -> tuple[list[np.ndarray], list[bytes], np.ndarray, np.ndarray]:
    """Every part's documents of one bucket, in part order, with their mix keys and sources."""
    arrays: list[np.ndarray] = []
    lines: list[bytes] = []
    keys: list[np.ndarray] = [np.zeros(0, np.uint64)]
    sources: list[np.ndarray] = [np.zeros(0, np.uint8)]
    dtype = ds_dtype(spec.tokenizer["vocab_size"])
    for index in spec.part_indices():
        bounds = np.load(spec.part_path(index, ".bounds.npy"), mmap_mode="r")
        d0, d1 = int(bounds[0, bucket]), int(bounds[0, bucket + 1])
        if d0 == d1:
            continue
        t0, t1 = int(bounds[1, bucket]), int(bounds[1, bucket + 1])
        b0, b1 = int(bounds[2, bucket]), int(bounds[2, bucket + 1])
        lens = np.asarray(np.load(spec.part_path(index, ".lens.npy"), mmap_mode="r")[d0:d1])
        tokens: np.ndarray = np.fromfile(spec.part_path(index, ".bin"), dtype=dtype, count=t1 - t0,
                             offset=t0 * np.dtype(dtype).itemsize)
        if len(tokens) != t1 - t0 or int(lens.sum()) != t1 - t0:
            raise RunError(f"{spec.part_path(index, '.bin')} is shorter than its index says; delete "
                           f"{spec.part_path(index, '.done.json').name} and run reduce again")
        arrays += np.split(tokens, np.cumsum(lens)[:-1])
        keys.append(np.asarray(np.load(spec.part_path(index, ".keys.npy"), mmap_mode="r")[d0:d1]))
        sources.append(np.asarray(np.load(spec.part_path(index, ".src.npy"), mmap_mode="r")[d0:d1]))
        with open(spec.part_path(index, ".docs.jsonl"), "rb") as handle:
            handle.seek(b0)
            lines += handle.read(b1 - b0).splitlines(keepends=True)
    return arrays, lines, np.concatenate(keys), np.concatenate(sources)


class _Output:
    """The token files of the chosen format, starting a new file past reduce.max_file_mb."""

    def __init__(self, spec: ReduceSpec) -> None:
        self.spec = spec
        self.cap = int(spec.max_file_mb * (1 << 20))
        self.writer: Any = None
        self.prefixes: list[dict[str, Any]] = []
        self.sequences = 0
        self.tokens = 0

    def add(self, tokens: np.ndarray) -> None:
        if self.writer is None:
            self.writer = self._open()
        elif self.cap and self.writer.sequences and self.writer.bytes_written + tokens.nbytes > self.cap:
            self._close()
            self.writer = self._open()
        self.writer.add(tokens)
        self.sequences += 1
        self.tokens += len(tokens)

    def finish(self) -> list[Path]:
        if self.writer is None:
            self.writer = self._open()
        self._close()
        return [self.spec.out_dir / f for p in self.prefixes for f in p["files"]]

    def _open(self):
        spec, vocab = self.spec, self.spec.tokenizer["vocab_size"]
        name = f"{spec.name}-{len(self.prefixes):05d}" if self.cap else spec.name
        prefix = spec.out_dir / name
        if spec.format == "datatrove":
            return DatatroveWriter(prefix, vocab, spec.tokenizer["tokenizer"])
        if spec.format == "numpy":
            return NumpyWriter(prefix, ds_dtype(vocab))
        return IndexedDatasetWriter(prefix, token_dtype(vocab))

    def _close(self) -> None:
        writer = self.writer
        files = writer.finish()
        self.prefixes.append({"prefix": writer.prefix.name, "files": [f.name for f in files],
                              "sequences": writer.sequences, "tokens": writer.tokens,
                              "dtype": np.dtype(writer.dtype).name})
        self.writer = None


def _remove_stale(spec: ReduceSpec, files: list[Path]) -> None:
    """Token files of an earlier reduce under this name (another format, more capped files) would be
    mistaken for this one's."""
    keep = {f.name for f in files}
    for path in spec.out_dir.glob(f"{spec.name}*"):
        rest = path.name[len(spec.name):]
        numbered = rest[:1] == "-" and rest[1:6].isdigit()
        if path.name not in keep and (numbered or rest in TOKEN_SUFFIXES) and path.name.endswith(TOKEN_SUFFIXES):
            path.unlink()


def _text_export(spec: ReduceSpec, markers: dict[int, PartMarker]) -> dict[str, Any] | None:
    folder = spec.out_dir / f"text{spec.suffix}"
    if not spec.text_export:
        # An earlier reduce's export (its Parquet and its card) would pass for this output's text.
        for old in [*folder.glob("train-*.parquet"), folder / "README.md"]:
            old.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            folder.rmdir()  # kept when it holds files of the user's own
        return None
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("train-*.parquet"):
        old.unlink()
    indices = spec.part_indices()
    files = []
    for number, index in enumerate(indices):
        target = folder / f"train-{number:05d}-of-{len(indices):05d}.parquet"
        try:
            os.link(spec.part_path(index, ".parquet"), target)
        except OSError:  # another filesystem, or no hard links: copy
            with open_write_nofollow(target, directory_too=False) as handle:
                handle.write(spec.part_path(index, ".parquet").read_bytes())
        files.append({"path": target.name, "rows": markers[index].text_rows,
                      "sha256": sha256_file(target)})
    # Its README.md, the dataset card, is written with the output's own (card.py), once the counts are known.
    return {"dir": folder.name, "files": files, "rows": sum(f["rows"] for f in files)}


# The parts' rejects are copied into one file a block at a time, never joined in memory: a check that
# refuses most records of a FinePhrase-scale run leaves gigabytes of them, and the merge holds one bucket.
REJECTS_BLOCK = 1 << 20


def _rejects(spec: ReduceSpec, markers: dict[int, PartMarker]) -> Path | None:
    parts = [spec.part_path(i, ".rejects.jsonl") for i in spec.part_indices() if markers[i].rejected_records]
    path = spec.out_dir / f"rejects{spec.suffix}.jsonl"
    if not parts:
        path.unlink(missing_ok=True)
        return None
    atomic_write_chunks(path, _blocks(parts))
    return path


def _blocks(paths: list[Path]) -> Iterator[bytes]:
    """The files' bytes, one file after the other, REJECTS_BLOCK at a time."""
    for part in paths:
        with open(part, "rb") as handle:
            while block := handle.read(REJECTS_BLOCK):
                yield block
