"""Shards: where one ends (estimated tokens), and writing them durably at 10^5 shards a plan.

A shard never spans two input groups, so each group's shards depend on its own documents only: that is
what lets groups be planned by separate processes (or Slurm array tasks) with the same result as one.
Files are written straight to their names inside the plan's temporary directory (the whole plan is
renamed into place at the end), and fsynced in batches: one directory fsync per batch instead of a file
and a directory fsync per shard, which cost ~1.75 ms a shard.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from hpcsynth.files import FRAME_BYTES
from hpcsynth.rundir import shard_name

FSYNC_BATCH = 256  # shards whose files are fsynced together, then their directory once


class ShardCutter:
    """Greedy cut: a shard closes once it holds shard_tokens estimated tokens or shard_docs documents."""

    def __init__(self, shard_tokens: int, shard_docs: int) -> None:
        self.shard_tokens, self.shard_docs = shard_tokens, shard_docs
        self.tokens = self.docs = 0

    def add(self, tokens: int) -> bool:
        """Count one document; True when the shard it joined is now full."""
        self.tokens += tokens
        self.docs += 1
        if self.tokens >= self.shard_tokens or self.docs >= self.shard_docs:
            self.tokens = self.docs = 0
            return True
        return False


@dataclass
class ShardRow:
    """One manifest row, filled while the shard is written."""

    id: int
    documents: int = 0
    est_tokens: int = 0
    chars: int = 0
    bytes: int = 0
    sha256: str = ""
    inputs: list[dict[str, Any]] = field(default_factory=list)

    def note_input(self, path: str, unit: str, position: int) -> None:
        last = self.inputs[-1] if self.inputs else None
        if last is not None and last["path"] == path:
            last["last"] = position
        else:
            self.inputs.append({"path": path, "unit": unit, "first": position, "last": position})

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "path": f"shards/{shard_name(self.id)}.jsonl.zst", "documents": self.documents,
                "est_tokens": self.est_tokens, "chars": self.chars, "bytes": self.bytes, "sha256": self.sha256,
                "inputs": self.inputs}


class ShardSink:
    """Writes shards in id order into DIR/shards; each is a run of independent checksummed zstd frames."""

    def __init__(self, shards_dir: Path, first_id: int, level: int) -> None:
        self.dir = shards_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.compressor = zstandard.ZstdCompressor(level=level, write_checksum=True)
        self.next_id = first_id
        self.rows: list[ShardRow] = []
        self.row: ShardRow | None = None
        self.lines: list[bytes] = []
        self.size = 0
        self.handle: Any = None
        self.digest: Any = None
        self.unsynced: list[int] = []

    def add(self, line: bytes, tokens: int, chars: int, source: str, unit: str, position: int) -> None:
        """Append one document's JSON (without its key, which is given here) to the open shard."""
        row = self.row
        if row is None:
            row = self.row = ShardRow(self.next_id)
            self.next_id += 1
            self.handle = open(self.dir / f"{shard_name(row.id)}.jsonl.zst", "wb")
            self.digest = hashlib.sha256()
        key = b'{"key":"%s-%06d",' % (shard_name(row.id).encode(), row.documents)
        self.lines.append(key + line[1:] + b"\n")
        self.size += len(line) + 24
        row.documents += 1
        row.est_tokens += tokens
        row.chars += chars
        row.note_input(source, unit, position)
        if self.size >= FRAME_BYTES:
            self._frame()

    def end_shard(self) -> None:
        if self.row is None:
            return
        self._frame()
        self.handle.flush()
        self.unsynced.append(os.dup(self.handle.fileno()))
        self.handle.close()
        self.row.sha256 = self.digest.hexdigest()
        self.rows.append(self.row)
        self.row = None
        if len(self.unsynced) >= FSYNC_BATCH:
            self.sync()

    def close(self) -> list[ShardRow]:
        self.end_shard()
        self.sync()
        return self.rows

    def sync(self) -> None:
        """Make the batch durable: each file's data, then the directory entries once."""
        for fd in self.unsynced:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self.unsynced = []
        fsync_dir(self.dir)

    def _frame(self) -> None:
        if not self.lines:
            return
        blob = self.compressor.compress(b"".join(self.lines))
        self.handle.write(blob)
        self.digest.update(blob)
        self.row.bytes += len(blob)
        self.lines, self.size = [], 0


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse a directory fsync; the rename is then as durable as it gets
        pass
    finally:
        os.close(fd)
