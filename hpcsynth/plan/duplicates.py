"""Duplicate source ids across the whole plan, found in bounded memory, and the shards they are removed from.

Every group logged a 128-bit hash of each source id with its position (scan.py). The hashes are split
into buckets by their first byte, each bucket small enough to sort in memory (BUCKET_BYTES), so memory
stays flat whatever the corpus size. Duplicates are rare, so instead of holding shards back until the
whole corpus is read, the few shards that hold a removed document are rewritten before the manifest.
A plan of up to SMALL_IDS sources sorts them in plain Python instead: numpy's import (~0.1-0.3 s) would
cost more than the sort, and in a `--jobs N` plan it runs on the cores the workers need.
"""

from __future__ import annotations

import hashlib
import os
import struct
from bisect import bisect_right
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import zstandard

from hpcsynth.files import FRAME_BYTES
from hpcsynth.plan.documents import estimate_tokens
from hpcsynth.rundir import shard_name

if TYPE_CHECKING:
    import numpy as np

# The records of scan.ID_RECORD: hash (16 bytes, read as two little-endian u64), first planned document of
# the source in its group, its parts, input file, position.
ID_FIELDS = [("h0", "<u8"), ("h1", "<u8"), ("doc", "<u8"), ("parts", "<u4"), ("file", "<u4"), ("pos", "<u8")]
ID_RECORD = struct.Struct("<QQQIIQ")
BUCKET_BYTES = 64 << 20  # id records sorted in memory at once (sorting takes ~3x that)
SMALL_IDS = 100_000  # up to this many sources, sorted as Python tuples (~0.1 s) without importing numpy


@dataclass(frozen=True)
class Removed:
    doc: int  # global index of the first shard document of the source
    parts: int
    file: int
    pos: int
    first_file: int
    first_pos: int


def find_duplicates(tmp: Path, groups: int, group_docs: list[int], policy: str) -> list[Removed]:
    """Sources to remove under `policy` (keep_first: all but the first; reject: every one), in plan order."""
    starts = list(accumulate(group_docs[:-1], initial=0))
    files = [tmp / "ids" / f"{g:06d}.bin" for g in range(groups)]
    total = sum(f.stat().st_size for f in files)
    if total <= SMALL_IDS * ID_RECORD.size:
        return _small(files, starts, policy)
    import numpy as np

    buckets = max(1, min(256, -(-total // BUCKET_BYTES)))
    removed: list[Removed] = []
    for bucket in _buckets(tmp, files, np.array(starts, dtype=np.int64), buckets):
        removed += _duplicates_in(bucket, policy)
    return sorted(removed, key=lambda r: r.doc)


def _small(files: list[Path], starts: list[int], policy: str) -> list[Removed]:
    """find_duplicates' answer in plain Python: the same order (hash, then document) and the same rule."""
    blobs = [path.read_bytes() for path in files]
    size = ID_RECORD.size
    hashes = {blob[i:i + 16] for blob in blobs for i in range(0, len(blob), size)}
    if len(hashes) == sum(len(blob) for blob in blobs) // size:
        return []  # the usual plan, every id once: a set finds that ~7x faster than the sort below
    records = []
    for blob, start in zip(blobs, starts):
        records += [(h0, h1, doc + start, parts, file, pos)
                    for h0, h1, doc, parts, file, pos in ID_RECORD.iter_unpack(blob)]
    records.sort()
    removed = []
    run_head = 0  # the first record of the current run of equal hashes
    for i in range(1, len(records)):
        before, record = records[i - 1], records[i]
        if record[0] != before[0] or record[1] != before[1]:
            run_head = i
            continue
        head = records[run_head]
        victims = [record] if policy == "keep_first" else [record] + ([head] if run_head == i - 1 else [])
        removed += [Removed(r[2], r[3], r[4], r[5], head[4], head[5]) for r in victims]
    return sorted(removed, key=lambda r: r.doc)


def _dtype() -> "np.dtype":
    import numpy as np

    return np.dtype(ID_FIELDS)


def _load(path: Path, start: int) -> "np.ndarray":
    import numpy as np

    records = np.fromfile(path, dtype=_dtype())
    records["doc"] += start  # now a global document index: plan order
    return records


def _load_chunks(path: Path, start: int, count: int):
    """A group's records `count` at a time: one group of a huge input file is never in memory at once."""
    import numpy as np

    with open(path, "rb") as handle:
        while len(records := np.fromfile(handle, dtype=_dtype(), count=count)):
            records["doc"] += start
            yield records


def _buckets(tmp: Path, files: list[Path], starts: "np.ndarray", buckets: int):
    import numpy as np

    if buckets == 1:
        yield np.concatenate([_load(f, int(s)) for f, s in zip(files, starts)] or [np.empty(0, _dtype())])
        return
    out = tmp / "dups"
    out.mkdir(exist_ok=True)
    handles = [open(out / f"{b:03d}.bin", "wb") for b in range(buckets)]
    for path, start in zip(files, starts):
        for records in _load_chunks(path, int(start), BUCKET_BYTES // ID_RECORD.size):
            which = (records["h0"] >> np.uint64(56)).astype(np.int64) * buckets // 256
            for b in np.unique(which):
                handles[b].write(records[which == b].tobytes())
    for handle in handles:
        handle.close()
    for b in range(buckets):
        yield np.fromfile(out / f"{b:03d}.bin", dtype=_dtype())
        (out / f"{b:03d}.bin").unlink()


def _duplicates_in(records: "np.ndarray", policy: str) -> list[Removed]:
    import numpy as np

    if len(records) < 2:
        return []
    records = records[np.lexsort((records["doc"], records["h1"], records["h0"]))]
    h0, h1 = records["h0"], records["h1"]
    same = (h0[1:] == h0[:-1]) & (h1[1:] == h1[:-1])
    removed = []
    for i in np.flatnonzero(same):
        first = i
        while first > 0 and same[first - 1]:
            first -= 1
        head = records[first]
        victims = [records[i + 1]] if policy == "keep_first" else [records[i + 1]] + ([head] if first == i else [])
        for r in victims:
            removed.append(Removed(int(r["doc"]), int(r["parts"]), int(r["file"]), int(r["pos"]),
                                   int(head["file"]), int(head["pos"])))
    return removed


def remove_documents(shards_dir: Path, rows: list[dict[str, Any]], removed: list[Removed], level: int,
                     bytes_per_token: float) -> dict[int, dict]:
    """Rewrite the shards holding removed documents; return {global doc: its shard document} for the report."""
    starts = list(accumulate((row["documents"] for row in rows[:-1]), initial=0))
    by_shard: dict[int, set[int]] = {}
    for r in removed:
        for doc in range(r.doc, r.doc + r.parts):
            shard = bisect_right(starts, doc) - 1
            by_shard.setdefault(shard, set()).add(doc - starts[shard])
    dropped: dict[int, dict] = {}
    for shard, indexes in by_shard.items():
        row = rows[shard]
        path = shards_dir / f"{shard_name(row['id'])}.jsonl.zst"
        lines = _lines(path)
        kept = []
        for index, line in enumerate(lines):
            if index in indexes:
                doc = orjson.loads(line)
                dropped[starts[shard] + index] = doc
                row["documents"] -= 1
                row["chars"] -= len(doc["text"])
                row["est_tokens"] -= estimate_tokens(doc["text"], bytes_per_token)
                if "pairs" in row:  # routed prompts: the pairs the document was routed to go with it
                    row["pairs"] -= len(doc.get("prompts", ()))
            else:
                kept.append(line)
        row["bytes"], row["sha256"] = _rewrite(path, kept, level)
    return dropped


def _lines(path: Path) -> list[bytes]:
    with open(path, "rb") as handle:
        reader = zstandard.ZstdDecompressor().stream_reader(handle, read_across_frames=True)
        return reader.read().splitlines(keepends=True)


def _rewrite(path: Path, lines: list[bytes], level: int) -> tuple[int, str]:
    compressor = zstandard.ZstdCompressor(level=level, write_checksum=True)
    digest, size, frame, written = hashlib.sha256(), 0, [], 0
    with open(path, "wb") as handle:
        for line in lines + [None]:
            if line is not None:
                frame.append(line)
                size += len(line)
            if (frame and size >= FRAME_BYTES) or (line is None and (frame or not written)):
                blob = compressor.compress(b"".join(frame))
                handle.write(blob)
                digest.update(blob)
                written += len(blob)
                frame, size = [], 0
        handle.flush()
        os.fsync(handle.fileno())
    return written, digest.hexdigest()
