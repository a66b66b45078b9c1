"""The merge: done parts -> the training files, shuffled at document level in bounded memory.

Second half of the reduce (parts.py is the first). The shuffle is a two-pass bucket shuffle: each part
put every document in a bucket drawn from the seed and the document's id, and stored its documents
grouped by bucket; the merge takes the buckets in turn, gathers that bucket's slice of every part,
permutes it with a seeded generator and writes it out. Random buckets then a random order within each
bucket is a uniform shuffle of the whole run (the Rao-Sandelius shuffle), yet the merge holds one
bucket (~reduce.bucket_docs source documents with their rephrasings), or a window of small consecutive
buckets read from each part at once (WINDOW_BYTES, below), never the run. The shuffle is
written into the files themselves, not only into an index, because flat readers (nanoGPT, OLMo-core,
datatrove) cut contiguous windows from the file: a window anywhere sees synthetic and original text
of all prompts mixed, not a run of one shard's rephrasings.
"""

from __future__ import annotations

import bisect
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
from hpcsynth.reduce.cleanup import remove, settle_parts
from hpcsynth.reduce.formats.datatrove import DatatroveWriter, ds_dtype
from hpcsynth.reduce.formats.megatron import IndexedDatasetWriter, token_dtype
from hpcsynth.reduce.formats.numpy_flat import NumpyWriter
from hpcsynth.reduce.mix.choose import copies_of
from hpcsynth.reduce.marker import PartMarker
from hpcsynth.reduce.mix.plan import MixPlan, plan_mix
from hpcsynth.reduce.settings import write_reduce_config
from hpcsynth.reduce.spec import ReduceSpec, read_spec

TOKEN_SUFFIXES = (".bin", ".idx", ".ds", ".ds.index", ".ds.metadata", ".npy")

# A window of consecutive buckets is read from each part at once: one open of each of the part's files per
# window, not per bucket. Each open and stat costs ~0.2-0.5 ms whether the part has documents in the bucket or
# not, so per bucket it was parts x buckets of them (49 s at 10,000 parts x 10 buckets, hours at FinePhrase's
# counts). A window holds at most WINDOW_BYTES of the parts' data, or one bucket where a bucket is larger
# (FinePhrase's ~250 MB buckets are still read one at a time): memory stays bounded by the window, not the
# run. One part file is open at a time and closed before the next, read through a plain handle, not a
# memory map: a map keeps a descriptor as long as any view of it lives, and a bucket drawn from 1,000 parts
# failed with EMFILE under `ulimit -n 1024`.
WINDOW_BYTES = 128 << 20
# Python's own objects per document while its bucket is written (an array view, its docs line, a list
# entry): with short documents they outweigh the tokens, so the window counts them too.
DOC_OVERHEAD = 256

Chosen = tuple[np.ndarray, bytes, int, int]  # tokens, docs line, source, copy
Bucket = tuple[list[np.ndarray], list[bytes], np.ndarray, np.ndarray]  # arrays, lines, keys, sources
# A part's slice of a window: where each bucket it has documents in starts and ends in the slice
# (documents, tokens, docs bytes), its tokens, docs lines, lengths, mix keys and sources.
Slice = tuple[dict[int, list[int]], np.ndarray, bytes, np.ndarray, np.ndarray, np.ndarray]


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
        for bucket, chosen in _buckets(spec, mix, markers):
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
    settings = write_reduce_config(spec.out_dir, spec.suffix, spec.run_info)  # the settings that made this mix
    text, rejects = _text_export(spec, markers), _rejects(spec, markers)
    data = build_report(spec, markers, output, files + [docs_path, spec.out_dir / manifest["file"]]
                        + ([settings] if settings else []), text, rejects, manifest["data"],
                        merge_cpu_seconds=time.process_time() - started)
    cards = write_cards(spec, data)  # the dataset cards need the counts; report.json stays the last file written
    # The cards in the report too, so that `hpcsynth verify` finds one damaged or edited since.
    data["files"] += [{"path": str(c.relative_to(spec.out_dir)), "bytes": c.stat().st_size, "sha256": sha256_file(c)}
                      for c in cards]
    # Parts are removed (per spec.keep_parts) only once the report is written: a merge that fails keeps them all.
    data["parts_on_disk"], drop = settle_parts(spec)
    report = save_report(spec, data)
    remove(drop)
    return report


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


def _buckets(spec: ReduceSpec, mix: MixPlan, markers: dict[int, PartMarker]) -> Iterator[tuple[int, list[Chosen]]]:
    """(bucket, what the merge writes for it) for every bucket in turn, read a window of buckets at a time."""
    layout = _Layout(spec)
    tokens = sum(m.tokens for m in markers.values())
    # With repeats the output outgrows what is read; each window is sized by the larger of the two.
    windows = _windows(layout.sizes * max(1.0, mix.total / tokens if tokens else 1.0))
    reader = _Reader(spec, layout, windows)
    for lo, hi in windows:
        yield from zip(range(lo, hi), _gather(spec, mix, reader, lo, hi))


def _gather(spec: ReduceSpec, mix: MixPlan, reader: _Reader, lo: int, hi: int) -> list[list[Chosen]]:
    """What the merge writes for buckets lo..hi-1: (tokens, docs line, source, copy) of their own documents
    the mix chose, and the later copies of repeated documents from other buckets. Copy c of a document of
    bucket h goes to bucket (h + c x buckets / copies) mod buckets, so the copies of a repeated document
    are spread over the file, not side by side where a trainer would read them in the same steps.
    Each home bucket is read once per offset, and its copies found per document (a tiny source repeated
    10^5 times costs its copies, not 10^5 passes over every bucket); what is taken from another bucket
    is copied out, so the merge holds its window, one other, and the window's output, whatever max_repeat."""
    most = max(1, max((c + (limit > 0) for c, limit in zip(mix.copies, mix.limits)), default=1))
    stride = max(1, spec.buckets // most)
    # Per bucket (copy, position in its home, entry): sorted below into copy order, as written before.
    picked: list[list[tuple[int, int, Chosen]]] = [[] for _ in range(lo, hi)]
    for offset in range(min(most, spec.buckets)):
        for bucket in range(lo, hi):
            home = (bucket - offset * stride) % spec.buckets
            arrays, lines, keys, sources = reader.bucket(home)
            times = copies_of(keys, sources, mix.copies, mix.limits)
            for j in np.flatnonzero(times > offset).tolist():
                array = arrays[j] if home == bucket else arrays[j].copy()
                # Copies offset, offset + buckets, ...: with more copies than buckets a home comes round again.
                picked[bucket - lo] += [(copy, j, (array, lines[j], int(sources[j]), copy))
                                        for copy in range(offset, int(times[j]), spec.buckets)]
    for entries in picked:
        entries.sort(key=lambda entry: (entry[0], entry[1]))
    return [[entry for _, _, entry in entries] for entries in picked]


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


class _Layout:
    """Which parts hold documents of which bucket, and each bucket's size, from one read of every part's
    .bounds.npy: a bit per part and bucket (FinePhrase's 42,375 parts x 6,780 buckets: 36 MB), so that a
    bucket's empty parts cost nothing, not an open each."""

    def __init__(self, spec: ReduceSpec) -> None:
        self.indices = spec.part_indices()
        self.held = np.zeros((spec.buckets, (len(self.indices) + 7) // 8), np.uint8)
        self.sizes = np.zeros(spec.buckets, np.float64)
        itemsize = np.dtype(ds_dtype(spec.tokenizer["vocab_size"])).itemsize
        edges = spec.buckets + 1
        for p, index in enumerate(self.indices):
            bounds = _npy_slices(spec.part_path(index, ".bounds.npy"), np.int64, [(0, 3 * edges)]).reshape(3, edges)
            documents = np.diff(bounds[0])
            self.held[np.flatnonzero(documents), p >> 3] |= np.uint8(0x80 >> (p & 7))
            self.sizes += np.diff(bounds[1]) * itemsize + np.diff(bounds[2]) + documents * DOC_OVERHEAD

    def parts(self, lo: int, hi: int) -> np.ndarray:
        """Positions (in part order) of the parts with documents in buckets lo..hi-1."""
        bits = np.bitwise_or.reduce(self.held[lo:hi], axis=0) if hi - lo > 1 else self.held[lo]
        return np.flatnonzero(np.unpackbits(bits, count=len(self.indices)))


def _windows(sizes: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive buckets, WINDOW_BYTES of them at a time (a larger bucket is a window of its own)."""
    windows, lo, held = [], 0, 0.0
    for bucket, size in enumerate(sizes.tolist()):
        if bucket > lo and held + size > WINDOW_BYTES:
            windows.append((lo, bucket))
            lo, held = bucket, 0.0
        held += size
    windows.append((lo, len(sizes)))
    return windows


class _Reader:
    """Buckets served from windows read whole: the window a bucket is in is read when first asked for, and
    at most two are kept (the one being written, whose documents it hands out as views, and the one the
    copies of repeated documents come from)."""

    def __init__(self, spec: ReduceSpec, layout: _Layout, windows: list[tuple[int, int]]) -> None:
        self.spec, self.layout, self.windows = spec, layout, windows
        self.starts = [lo for lo, _ in windows]
        self.loaded: dict[int, _Window] = {}  # by window start, least recently used first

    def bucket(self, bucket: int) -> Bucket:
        lo, hi = self.windows[bisect.bisect_right(self.starts, bucket) - 1]
        window = self.loaded.pop(lo, None)
        if window is None:
            if len(self.loaded) >= 2:
                del self.loaded[next(iter(self.loaded))]
            window = _Window(self.spec, self.layout, lo, hi)
        self.loaded[lo] = window
        return window.bucket(bucket)


class _Window:
    """Every part's documents of buckets lo..hi-1: one contiguous slice of each file of each part that has
    some, read in part order with one file open at a time."""

    def __init__(self, spec: ReduceSpec, layout: _Layout, lo: int, hi: int) -> None:
        self.layout = layout
        self.parts = {int(p): _read_part(spec, layout.indices[p], lo, hi) for p in layout.parts(lo, hi)}

    def bucket(self, bucket: int) -> Bucket:
        """The bucket's documents, in part order, with their mix keys and sources (as a bucket was read)."""
        arrays: list[np.ndarray] = []
        lines: list[bytes] = []
        keys: list[np.ndarray] = [np.zeros(0, np.uint64)]
        sources: list[np.ndarray] = [np.zeros(0, np.uint8)]
        for p in self.layout.parts(bucket, bucket + 1):
            where, tokens, blob, lens, part_keys, part_sources = self.parts[int(p)]
            d0, d1, t0, t1, b0, b1 = where[bucket]
            arrays += np.split(tokens[t0:t1], np.cumsum(lens[d0:d1])[:-1])
            lines += blob[b0:b1].splitlines(keepends=True)
            keys.append(part_keys[d0:d1])
            sources.append(part_sources[d0:d1])
        return arrays, lines, np.concatenate(keys), np.concatenate(sources)


def _read_part(spec: ReduceSpec, index: int, lo: int, hi: int) -> Slice:
    """A part's documents of buckets lo..hi-1: where each bucket lies in them (from the window's first
    document, token and byte), tokens, docs lines, lengths, mix keys and sources."""
    edges = spec.buckets + 1
    bounds = _npy_slices(spec.part_path(index, ".bounds.npy"), np.int64,
                         [(row * edges + lo, row * edges + hi + 1) for row in range(3)]).reshape(3, -1)
    (d0, d1), (t0, t1), (b0, b1) = bounds[:, [0, -1]].tolist()
    dtype = ds_dtype(spec.tokenizer["vocab_size"])
    tokens: np.ndarray = np.fromfile(spec.part_path(index, ".bin"), dtype=dtype, count=t1 - t0,
                                     offset=t0 * np.dtype(dtype).itemsize)
    with open(spec.part_path(index, ".docs.jsonl"), "rb") as handle:
        handle.seek(b0)
        blob = handle.read(b1 - b0)
    lens = _npy_slices(spec.part_path(index, ".lens.npy"), np.int32, [(d0, d1)])
    if len(tokens) != t1 - t0 or int(lens.sum(dtype=np.int64)) != t1 - t0 or len(blob) != b1 - b0:
        raise RunError(f"{spec.part_path(index, '.bin')} is shorter than its index says; delete "
                       f"{spec.part_path(index, '.done.json').name} and run reduce again")
    # Only the buckets it has documents in: a window of every bucket of a run of small parts would hold
    # parts x buckets bounds (384 MB at 10,000 x 1,600), not a few numbers per document.
    local, held = bounds - bounds[:, :1], np.flatnonzero(np.diff(bounds[0]))
    where = {lo + k: [start[0], end[0], start[1], end[1], start[2], end[2]]
             for k, start, end in zip(held.tolist(), local[:, held].T.tolist(), local[:, held + 1].T.tolist())}
    return (where, tokens, blob, lens, _npy_slices(spec.part_path(index, ".keys.npy"), np.uint64, [(d0, d1)]),
            _npy_slices(spec.part_path(index, ".src.npy"), np.uint8, [(d0, d1)]))


def _npy_slices(path: Path, dtype: type, ranges: list[tuple[int, int]]) -> np.ndarray:
    """Items start..stop-1 of a flat .npy file for each range, joined, read through one handle closed on
    return. The dtype is the one parts.py writes and partcheck.py checked when the merge took the part;
    the header is skipped by its length, not parsed (numpy's parser costs ~0.1 ms a file, 10^4 files)."""
    with open(path, "rb") as handle:
        head = handle.read(12)
        if head[:6] != b"\x93NUMPY" or len(head) < 12:
            raise RunError(f"{path} is not a .npy file; delete its part's .done.json and run reduce again")
        data = 10 + int.from_bytes(head[8:10], "little") if head[6] == 1 else 12 + int.from_bytes(head[8:12], "little")
        pieces = []
        for start, stop in ranges:
            handle.seek(data + start * np.dtype(dtype).itemsize)
            piece: np.ndarray = np.frombuffer(handle.read((stop - start) * np.dtype(dtype).itemsize), dtype=dtype)
            if len(piece) != stop - start:
                raise RunError(f"{path} is shorter than its part's index says; delete its part's .done.json "
                               f"and run reduce again")
            pieces.append(piece)
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


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
