"""Duplicate source ids across the whole plan, found in bounded memory, and the shards they are removed from.

Every group logged a 128-bit hash of each source id with its position (scan.py). The hashes are split
into buckets by their first byte, each bucket small enough to sort in memory (BUCKET_BYTES), so memory
stays flat whatever the corpus size. Duplicates are rare, so instead of holding shards back until the
whole corpus is read, the few shards that hold a removed document are rewritten before the manifest.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import zstandard

from hpcsynth.files import FRAME_BYTES
from hpcsynth.plan.documents import estimate_tokens
from hpcsynth.rundir import shard_name

# The records of scan.ID_RECORD: hash (16 bytes), first planned document of the source in its group, its
# parts, input file, position.
ID_DTYPE = np.dtype([("h0", "<u8"), ("h1", "<u8"), ("doc", "<u8"), ("parts", "<u4"), ("file", "<u4"), ("pos", "<u8")])
BUCKET_BYTES = 64 << 20  # id records sorted in memory at once (sorting takes ~3x that)


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
    starts = np.cumsum([0] + group_docs[:-1]).astype(np.int64)
    files = [tmp / "ids" / f"{g:06d}.bin" for g in range(groups)]
    total = sum(f.stat().st_size for f in files)
    buckets = max(1, min(256, -(-total // BUCKET_BYTES)))
    removed: list[Removed] = []
    for bucket in _buckets(tmp, files, starts, buckets):
        removed += _duplicates_in(bucket, policy)
    return sorted(removed, key=lambda r: r.doc)


def _load(path: Path, start: int) -> np.ndarray:
    records = np.fromfile(path, dtype=ID_DTYPE)
    records["doc"] += start  # now a global document index: plan order
    return records


def _buckets(tmp: Path, files: list[Path], starts: np.ndarray, buckets: int):
    if buckets == 1:
        yield np.concatenate([_load(f, int(s)) for f, s in zip(files, starts)] or [np.empty(0, ID_DTYPE)])
        return
    out = tmp / "dups"
    out.mkdir(exist_ok=True)
    handles = [open(out / f"{b:03d}.bin", "wb") for b in range(buckets)]
    for path, start in zip(files, starts):
        records = _load(path, int(start))
        which = (records["h0"] >> np.uint64(56)).astype(np.int64) * buckets // 256
        for b in np.unique(which):
            handles[b].write(records[which == b].tobytes())
    for handle in handles:
        handle.close()
    for b in range(buckets):
        yield np.fromfile(out / f"{b:03d}.bin", dtype=ID_DTYPE)
        (out / f"{b:03d}.bin").unlink()


def _duplicates_in(records: np.ndarray, policy: str) -> list[Removed]:
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
    starts = np.cumsum([0] + [row["documents"] for row in rows[:-1]])
    by_shard: dict[int, set[int]] = {}
    for r in removed:
        for doc in range(r.doc, r.doc + r.parts):
            shard = int(np.searchsorted(starts, doc, side="right")) - 1
            by_shard.setdefault(shard, set()).add(doc - int(starts[shard]))
    dropped: dict[int, dict] = {}
    for shard, indexes in by_shard.items():
        row = rows[shard]
        path = shards_dir / f"{shard_name(row['id'])}.jsonl.zst"
        lines = _lines(path)
        kept = []
        for index, line in enumerate(lines):
            if index in indexes:
                doc = orjson.loads(line)
                dropped[int(starts[shard]) + index] = doc
                row["documents"] -= 1
                row["chars"] -= len(doc["text"])
                row["est_tokens"] -= estimate_tokens(doc["text"], bytes_per_token)
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
