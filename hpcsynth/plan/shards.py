"""Shards: where one ends (estimated tokens), and writing them durably at 10^5 shards a plan.

A shard never spans two input groups, so each group's shards depend on its own documents only: that is
what lets groups be planned by separate processes (or Slurm array tasks) with the same result as one.
Files are written straight to their names inside the plan's temporary directory (the whole plan is
renamed into place at the end), and fsynced in batches: one directory fsync per batch instead of a file
and a directory fsync per shard, which cost ~1.75 ms a shard. The files of a batch are fsynced from a
few threads at once: the filesystem then commits them together (ext4 and XFS group-commit their journal),
~0.07 ms a file here instead of ~3 ms one after another.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from hpcsynth.files import FRAME_BYTES
from hpcsynth.rundir import shard_name

FSYNC_BATCH = 256  # shards whose files are fsynced together, then their directory once
FSYNC_THREADS = 32  # concurrent fsyncs: enough to fill a journal commit, few enough to stay cheap


class ShardCutter:
    """Greedy cut: a shard closes once it holds shard_tokens estimated tokens or shard_docs documents.

    Counts the shards of a spilled group before they are written; ShardSink.add applies the same rule
    while writing (tests/plan/test_sharding.py holds the two together)."""

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
    pairs: int = 0  # (document, prompt) pairs routed: the records the shard is to have, when routed
    routed: bool = False  # the prompts are routed: the row carries "pairs" (a row without it: documents x prompts)

    def note_input(self, path: str, unit: str, position: int) -> None:
        last = self.inputs[-1] if self.inputs else None
        if last is not None and last["path"] == path:
            last["last"] = position
        else:
            self.inputs.append({"path": path, "unit": unit, "first": position, "last": position})

    def as_dict(self) -> dict[str, Any]:
        row = {"id": self.id, "path": f"shards/{shard_name(self.id)}.jsonl.zst", "documents": self.documents,
               "est_tokens": self.est_tokens, "chars": self.chars, "bytes": self.bytes, "sha256": self.sha256,
               "inputs": self.inputs}
        if self.routed:
            row["pairs"] = self.pairs
        return row


class ShardSink:
    """Writes shards in id order into DIR/shards; each is a run of independent checksummed zstd frames.

    A shard ends by ShardCutter's rule (the row's own counts are the cutter's: no second counter is kept
    per document, this runs for every document of the corpus).
    Durability runs beside the writing: a full batch of files is handed to a background syncer (fsync of
    each file from a few threads, then one of the directory) while the next batch is written; close()
    waits for all of it, so a plan's manifest is written only after its shards are on disk.
    """

    def __init__(self, shards_dir: Path, first_id: int, level: int, shard_tokens: int, shard_docs: int,
                 routed: bool = False) -> None:
        shards_dir.mkdir(parents=True, exist_ok=True)
        self.dir = str(shards_dir)  # str, not Path: path objects cost ~50 us a shard at 10^5 shards
        self.compressor = zstandard.ZstdCompressor(level=level, write_checksum=True)
        self.shard_tokens, self.shard_docs = shard_tokens, shard_docs
        self.routed = routed
        self.next_id = first_id
        self.rows: list[ShardRow] = []
        self.row: ShardRow | None = None
        self.lines: list[Any] = []
        self.size = 0
        self.fd = -1
        self.digest: Any = None
        self.prefix = b""
        self.unsynced: list[int] = []
        self.syncer: _Syncer | None = None

    def add(self, line: bytes, tokens: int, chars: int, source: str, unit: str, position: int, pairs: int = 0) -> None:
        """Append one document's JSON (without its key, which is given here) to the open shard; `pairs`: the
        prompts it is routed to."""
        row = self.row
        if row is None:
            row = self._open()
        documents = row.documents
        self.lines += (self.prefix, b"%06d\"," % documents, memoryview(line)[1:], b"\n")
        self.size += len(line) + 24
        row.documents = documents = documents + 1
        row.est_tokens += tokens
        row.chars += chars
        row.pairs += pairs
        inputs = row.inputs
        if inputs and inputs[-1]["path"] is source:  # the same str object for every line of a file
            inputs[-1]["last"] = position
        else:
            row.note_input(source, unit, position)
        if self.size >= FRAME_BYTES:
            self._frame()
        if row.est_tokens >= self.shard_tokens or documents >= self.shard_docs:  # ShardCutter.add's rule
            self.end_shard()

    def _open(self) -> ShardRow:
        row = self.row = ShardRow(self.next_id, routed=self.routed)
        self.next_id += 1
        name = shard_name(row.id)
        self.fd = os.open(os.path.join(self.dir, name + ".jsonl.zst"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        self.digest = hashlib.sha256()
        self.prefix = b'{"key":"' + name.encode() + b"-"
        return row

    def end_shard(self) -> None:
        if self.row is None:
            return
        self._frame()
        self.unsynced.append(self.fd)
        self.row.sha256 = self.digest.hexdigest()
        self.rows.append(self.row)
        self.row = None
        if len(self.unsynced) >= FSYNC_BATCH:
            self.syncer = self.syncer or _syncer(self.dir)
            self.syncer.submit(self.unsynced)
            self.unsynced = []

    def close(self, wait: bool = True) -> list[ShardRow]:
        """Hand the last files to the syncer; wait=False leaves the wait to finish_syncs() (the next
        group is read while this one's files reach the disk)."""
        self.end_shard()
        syncer = self.syncer or _syncer(self.dir)
        syncer.submit(self.unsynced)
        self.unsynced = []
        if wait:
            syncer.wait()
        return self.rows

    def _frame(self) -> None:
        if not self.lines:
            return
        blob = self.compressor.compress(b"".join(self.lines))
        view = memoryview(blob)
        while view:
            view = view[os.write(self.fd, view):]
        self.digest.update(blob)
        assert self.row is not None, "lines are added to an open row"  # an invariant, not user input
        self.row.bytes += len(blob)
        self.lines, self.size = [], 0


_SYNCERS: dict[str, "_Syncer"] = {}  # one per shards directory in this process, shared by its groups


def _syncer(directory: str) -> "_Syncer":
    if directory not in _SYNCERS:
        _SYNCERS[directory] = _Syncer(directory)
    return _SYNCERS[directory]


def finish_syncs() -> None:
    """Wait until every shard file this process wrote is on disk; stop the fsync threads."""
    syncers = list(_SYNCERS.values())
    _SYNCERS.clear()
    errors = []
    for syncer in syncers:
        try:
            syncer.close()
        except OSError as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


def forget_syncers() -> None:
    """In a freshly forked process: the parent's fsync threads do not exist here."""
    _SYNCERS.clear()


class _Syncer:
    """fsyncs batches of open shard files in the background, then their directory; closes the files."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.pool = ThreadPoolExecutor(FSYNC_THREADS)
        self.pending: Any = None

    def submit(self, fds: list[int]) -> None:
        self.wait()  # at most one batch in flight: open files stay under 2 x FSYNC_BATCH
        self.pending = self.pool.submit(self._sync, list(fds))

    def wait(self) -> None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.pool.shutdown()

    def _sync(self, fds: list[int]) -> None:
        try:
            # This runs on one pool thread and fans out to the others; group commit does the rest.
            for future in [self.pool.submit(os.fsync, fd) for fd in fds[1:]]:
                future.result()
            if fds:
                os.fsync(fds[0])
        finally:
            for fd in fds:
                os.close(fd)
        fsync_dir(Path(self.directory))


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse a directory fsync; the rename is then as durable as it gets
        pass
    finally:
        os.close(fd)
