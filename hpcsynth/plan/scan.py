"""Planning one input group: read its files, keep what passes, and write its shards.

A group whose first shard id is known (every earlier group is finished, always so with --jobs 1) writes
its shards directly. Otherwise it spills its documents, without keys, to TMP/spill/G.jsonl and their sizes
to TMP/spill/G.bin (int64s), counting the shards they make as they come (ShardCutter's rule); once the
earlier groups are counted, write_spilled() cuts the same shards from the spill. Both paths write
through a ShardSink, which applies that rule, over the same documents, so --jobs never changes a byte.
Per group, also: TMP/rejects/G.jsonl (bad records, character-bound drops and lost files, in input order)
and TMP/ids/G.bin (a 128-bit hash and position per source document, for duplicate detection). What a group
holds in memory is bounded (FLUSH_BYTES, and hold_bytes of spilled documents), whatever its size.
A file that cannot be read whole (a cut or corrupt stream, a Parquet file without the text column) is a
lost file, not a bad record: the group notes it and goes on, keeping the documents read before the failure
(every --jobs and the Slurm map keep the same ones); the planner then fails the plan, or, under
plan.skip_bad_files, counts the file's bytes against plan.max_reject_rate.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import struct
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from hpcsynth.config import PlanConfig
from hpcsynth.plan.documents import DocumentBuilder, Dropped
from hpcsynth.corpus.filters import predicate_fields
from hpcsynth.corpus.readers import ByteCounter, FileFailure, display_path, read_file, unit
from hpcsynth.plan.shards import ShardCutter, ShardSink
from hpcsynth.storage import is_remote, size_of

# hash (16 bytes), first planned document of the source in its group, its parts, input file, position
ID_RECORD = struct.Struct("<16sQIIQ")
# What a group keeps in memory of its per-document logs (id records, a spill's sizes) before writing them
# out: a group's memory does not grow with its documents.
FLUSH_BYTES = 1 << 20
SIZES = 5  # int64s a spilled document has in TMP/spill/G.bin: tokens, chars, input file, position, routed pairs


@dataclass(frozen=True)
class GroupJob:
    index: int
    files: tuple[tuple[int, str], ...]  # (input index, absolute path), in input order
    tmp: str  # the plan's temporary directory
    plan: PlanConfig
    bytes_per_token: float
    first_shard: int  # -1: not known yet, spill
    limit: int = 0  # source documents this group may still plan (0: no limit)
    hold_bytes: int = 0  # while the first shard id is unknown, documents kept in memory before spilling
    defer_sync: bool = False  # leave waiting for the fsyncs to the caller (shards.finish_syncs)
    # (prompt, condition or "") per prompt when some prompt is routed (documents.routes_of); () otherwise
    routes: tuple[tuple[str, str], ...] = ()


@dataclass
class GroupResult:
    index: int
    rows: list[dict[str, Any]] | None = None  # None: spilled, see write_spilled()
    sources: int = 0  # source documents planned
    documents: int = 0  # shard documents (a split source is several)
    est_tokens: int = 0
    read: int = 0  # records seen (a lost file's failure is not one)
    rejected: int = 0
    reasons: Counter = field(default_factory=Counter)
    filtered: Counter = field(default_factory=Counter)
    per_input: dict[int, int] = field(default_factory=dict)
    # files that could not be read whole: {"file": input index, "source", "bytes", "reason", "documents"}
    lost: list[dict[str, Any]] = field(default_factory=list)
    judged: int = 0  # documents plan.filter judged
    filter_fields: dict[str, list[int]] = field(default_factory=dict)  # DocumentBuilder.filter_fields()
    routing: dict[str, Any] = field(default_factory=dict)  # Router.counts(), when the prompts are routed


def scan_group(job: GroupJob, counter: ByteCounter | None = None, held: list | None = None) -> GroupResult:
    """Plan one group; a spilled group's documents are also appended to `held` (for write_spilled)."""
    tmp = Path(job.tmp)
    scan = _Scan(job, counter, _direct(tmp, job) if job.first_shard >= 0 else _Spill(tmp, job))
    with open(_part(tmp, "rejects", job.index, "jsonl"), "wb") as scan.rejects, \
            open(_part(tmp, "ids", job.index, "bin"), "wb") as scan.ids_file, _no_collector():
        for file_index, real in job.files:
            scan.file(file_index, real)
        scan.ids_file.write(scan.ids)
    sink, result = scan.sink, scan.result
    result.judged, result.filter_fields = scan.builder.judged, scan.builder.filter_fields()
    if scan.builder.router is not None:
        result.routing = scan.builder.router.counts()
    result.rows = _rows(sink, not job.defer_sync) if isinstance(sink, ShardSink) else sink.close()
    if held is not None and isinstance(sink, _Spill):
        held.append(sink)
    return result


class _Scan:
    """One group's reading: records -> documents -> the sink, the id log and the rejects file."""

    def __init__(self, job: GroupJob, counter: ByteCounter | None, sink: Any) -> None:
        self.job, self.counter, self.sink = job, counter, sink
        self.result = GroupResult(job.index)
        self.builder = DocumentBuilder(job.plan, job.bytes_per_token, job.routes)
        self.columns = [job.plan.text_key, job.plan.id_key] + [f.split(".")[0] for f in job.plan.keep_fields]
        self.columns += predicate_fields(job.plan.filter) if job.plan.filter else []
        self.columns += [field for _, when in job.routes if when for field in predicate_fields(when)]
        self.ids = bytearray()  # ID_RECORD per source document, written to ids_file every FLUSH_BYTES
        self.ids_file: Any = None
        self.rejects: Any = None

    def file(self, file_index: int, real: str) -> None:
        """Plan one input file. This loop runs once per document of the corpus: what it touches is bound
        to locals, and its counters are locals written back to the result once per file."""
        # `path` names the file in every record, reject and manifest row; `real` opens it.
        path, kind = display_path(real), unit(real)
        name, result, rejects, ids = Path(path).name, self.result, self.rejects, self.ids
        build, source_id_of, add = self.builder.build, self.builder.source_id, self.sink.add
        pack, blake2b = ID_RECORD.pack, hashlib.blake2b
        limit, read, sources, documents, est_tokens = self.job.limit, result.read, result.sources, result.documents, 0
        records = read_file(real if is_remote(real) else Path(real), self.columns, self.counter, self.job.plan.max_line_bytes)
        for position, record, reason in records:
            if limit and sources >= limit:
                break
            if record is None:
                if reason.__class__ is FileFailure:  # the file ends here: lost, not a bad record
                    self.lost(file_index, real, path, kind, position, reason, sources - result.sources)
                    continue
                read += 1
                _drop(result, rejects, path, kind, position, Dropped("reject", reason))
                continue
            read += 1
            source_id = source_id_of(record, name, position)
            parts = build(record, source_id, path, kind, position)
            if isinstance(parts, Dropped):
                _drop(result, rejects, path, kind, position, parts)
                continue
            digest = blake2b(source_id.encode("utf-8", "surrogatepass"), digest_size=16).digest()
            ids += pack(digest, documents, len(parts), file_index, position)
            if len(ids) >= FLUSH_BYTES:  # memory flat in the documents, even for one huge file
                self.ids_file.write(ids)
                ids.clear()
            for line, tokens, chars, pairs in parts:
                add(line, tokens, chars, path, kind, position, pairs)
                est_tokens += tokens
            documents += len(parts)
            sources += 1
        result.per_input[file_index] = sources - result.sources
        result.read, result.sources, result.documents = read, sources, documents
        result.est_tokens += est_tokens

    def lost(self, file_index: int, real: str, path: str, kind: str, position: int, reason: str,
             documents: int) -> None:
        """A file that could not be read whole: noted in the result and the rejects file; the documents
        read before the failure stay planned (the planner decides whether the plan goes on)."""
        size = size_of(real)  # 0 when removed meanwhile: check_inputs_unchanged fails the plan, naming it
        self.result.lost.append({"file": file_index, "source": path, "bytes": size, "reason": str(reason),
                                 "documents": documents})
        self.rejects.write(orjson.dumps({"source": path, kind: position, "kind": "lost file", "bytes": size,
                                         "reason": str(reason), "documents_kept": documents}) + b"\n")


def write_spilled(tmp: Path, job: GroupJob, held: "_Spill | None" = None) -> list[dict[str, Any]]:
    """The shards of a spilled group, now that its first shard id is known; removes the spill."""
    files = {index: (display_path(path), unit(path)) for index, path in job.files}
    sink = _direct(tmp, job)
    add = sink.add
    lines = held.held if held is not None else []
    kept, doc = len(lines), 0
    with open(_part(tmp, "spill", job.index, "jsonl"), "rb") as spill:
        readline = spill.readline
        for sizes in _spilled_sizes(tmp, job):
            for i in range(0, len(sizes), SIZES):
                path, kind = files[sizes[i + 2]]
                line = lines[doc] if doc < kept else readline()[:-1]
                add(line, sizes[i], sizes[i + 1], path, kind, sizes[i + 3], sizes[i + 4])
                doc += 1
    rows = _rows(sink, not job.defer_sync)
    for ext in ("bin", "jsonl"):
        _part(tmp, "spill", job.index, ext).unlink()
    return rows


def count_shards(tokens: Any, job: GroupJob) -> int:
    """How many shards ShardCutter makes of these per-document token estimates."""
    cutter = ShardCutter(job.plan.shard_tokens, job.plan.shard_docs)
    closed = sum(cutter.add(t) for t in tokens)
    return closed + (1 if cutter.docs else 0)


def count_spilled_shards(tmp: Path, job: GroupJob) -> int:
    cutter = ShardCutter(job.plan.shard_tokens, job.plan.shard_docs)
    closed = sum(cutter.add(t) for sizes in _spilled_sizes(tmp, job) for t in sizes[0::SIZES])
    return closed + (1 if cutter.docs else 0)


def _spilled_sizes(tmp: Path, job: GroupJob) -> Iterator[list[int]]:
    """tokens, chars, input file, position, routed pairs of each spilled document, FLUSH_BYTES at a time (no
    numpy: a pool worker would import it at start-up, ~0.1 s of CPU, to read one flat array)."""
    with open(_part(tmp, "spill", job.index, "bin"), "rb") as handle:
        while chunk := handle.read(FLUSH_BYTES - FLUSH_BYTES % (SIZES * 8)):  # whole documents a read
            sizes = array("q")
            sizes.frombytes(chunk)
            yield sizes.tolist()


def _direct(tmp: Path, job: GroupJob) -> ShardSink:
    return ShardSink(tmp / "shards", job.first_shard, job.plan.zstd_level, job.plan.shard_tokens, job.plan.shard_docs,
                     routed=bool(job.routes))


def _rows(sink: ShardSink, wait: bool) -> list[dict[str, Any]]:
    return [row.as_dict() for row in sink.close(wait)]


class _Spill:
    """Documents of a group whose first shard id is unknown: in memory up to hold_bytes, then on disk; their
    sizes go to disk as they come, and the shards they make are counted as they come (ShardCutter)."""

    def __init__(self, tmp: Path, job: GroupJob) -> None:
        self.tmp, self.index = tmp, job.index
        self.handle = open(_part(tmp, "spill", job.index, "jsonl"), "wb", buffering=1 << 20)
        self.sizes_file = open(_part(tmp, "spill", job.index, "bin"), "wb")
        self.sizes = array("q")  # SIZES int64s a document, not yet written to sizes_file
        self.cutter = ShardCutter(job.plan.shard_tokens, job.plan.shard_docs)
        self.closed = 0  # shards the cutter has closed
        self.files = {display_path(path): index for index, path in job.files}
        self.held: list[bytes] = []
        self.room = job.hold_bytes

    def add(self, line: bytes, tokens: int, chars: int, path: str, kind: str, position: int, pairs: int = 0) -> None:
        if self.room > 0 and not self.handle.tell():  # in order: memory first, the rest on disk
            self.held.append(line)
            self.room -= len(line)
        else:
            self.handle.write(line + b"\n")
        sizes = self.sizes
        sizes.extend((tokens, chars, self.files[path], position, pairs))
        if len(sizes) >= FLUSH_BYTES // 8:
            self._flush()

    def shards(self) -> int:
        """The shards these documents make (count_shards' answer)."""
        return self.closed + (1 if self.cutter.docs else 0)

    def _flush(self) -> None:
        add = self.cutter.add
        self.closed += sum(add(t) for t in self.sizes[0::SIZES])
        self.sizes_file.write(self.sizes.tobytes())
        self.sizes = array("q")

    def close(self) -> None:
        self._flush()
        self.handle.close()
        self.sizes_file.close()
        return None


@contextlib.contextmanager
def _no_collector() -> Iterator[None]:
    """The cycle collector off while a group is read: each document makes a few dicts, none in a cycle,
    and a collection every ~150 documents would walk them for nothing."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _drop(result: GroupResult, rejects: Any, path: str, kind: str, position: int, drop: Dropped) -> None:
    if drop.kind == "reject":
        result.rejected += 1
        result.reasons[_category(drop.reason)] += 1
    else:
        result.filtered[drop.rule] += 1
    if drop.listed:
        rejects.write(orjson.dumps({"source": path, kind: position, "kind": drop.kind, "reason": drop.reason})
                      + b"\n")


def _category(reason: str) -> str:
    """'not valid JSON (unexpected character: line 1 column 9 (char 8))' -> 'not valid JSON'."""
    return reason.split(" (")[0].split(" at byte")[0]


def _part(tmp: Path, kind: str, index: int, ext: str) -> Path:
    directory = tmp / kind
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"{index:06d}.{ext}"
