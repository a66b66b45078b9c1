"""What the done markers say, kept up to date for the cost of what changed: status, the account and
`estimate RUN` read it once per refresh.

Where it sits: the worker commits a shard (output, then done/ID.json, the truth), then appends the
marker's figures to its index file (generate/index.py). This table holds one row per planned shard
(numpy columns, ~170 bytes a shard: 56 MB at 339,000) and learns of commits from the index files' new
bytes, reading a marker only when the index cannot vouch for it. status/donecache.py keeps the table
between one-shot calls (in RUN/index/, or the user's cache folder when RUN is not writable); `status
--watch` keeps it in memory.

Why the numbers stay those of the markers:
- Additions. Every commit changes done/ and appends a line; the index files are stat-ed each refresh
  (one per worker, never one per shard) and read from where the last refresh stopped.
- Markers without a line (older workers, a lost or cut line, a crash between marker and line) and
  markers replaced after their line was written (another inode than the line's `ino`) are found by a
  full listing of done/ (names and inodes from getdents: no open, no stat) and read one by one.
- Removals. Markers leave done/ only by a rename (launch sets them aside into set-aside/, a forced
  re-plan retires them into replaced/ and writes a new manifest.json) or by hand. A full listing drops
  every row whose marker is gone. One-shot calls list done/ unless it is unchanged (same inode and
  mtime) since a listing taken QUIET_S after its last change (so that a change in the same mtime tick
  cannot hide). `--watch` lists again when set-aside/, replaced/, manifest.json or done/'s inode changed
  since its last listing, when that listing found markers without a line (a run with older workers is
  then listed every refresh), when a damaged index line appeared, and at least every RECONCILE_S (a
  marker deleted by hand).
- Outputs (status's "redo" list). When a refresh finds at most LIST_OUTPUTS_AT new rows (a warm call,
  a --watch refresh), each new row's output is stat-ed once (missing, or a size other than its marker's).
  When it finds more (a cold call: no cache, or a user without one), outputs/ is listed once instead
  (names only, no stat): an output missing then is found at once; the others are counted, and their sizes
  are checked SIZE_CHECKS (20,000) a refresh, in shard order from where the last refresh stopped (the
  cursor is kept in the cache), so every output is size-checked within ceil(shards / SIZE_CHECKS) + 1
  refreshes that keep their cache (18 at 339,000 shards); until then a cut output counts as done. An
  output found missing or cut is looked at again every refresh. An output removed after its check is
  found by the next listing (a cold table). `launch --verify` is the full check (every output, sha256).
- Cost of a cold call: the index is read in 2 MB batches parsed column-wise (lines in index_line's own
  form by numpy, any other by parse_line), done/ and outputs/ are listed once each: ~1.8 CPU s and
  ~200 MB at 339,000 shards (tools/bench_status_index.py).
- Trust. A row, an index line or the cache says what a marker says only while the marker's inode is
  the one it names; anything malformed (a count that is not a whole number in [0, 2**53], a state or
  fingerprint index out of range, a cut line) is ignored, and the marker is read instead. A marker
  rewritten in place (same inode) is not seen until the next fresh table; hpcsynth never does that.
  A forged but well-formed line is as trusted as a forged marker: both need write access to RUN.
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import time
from dataclasses import dataclass, field
from operator import attrgetter, methodcaller
from pathlib import Path

import numpy as np
import orjson

from hpcsynth.files import read_regular
from hpcsynth.generate.index import (COUNTS, INDEX_VERSION, MAX_LINE_BYTES, PROMPT_COUNTS, IndexEntry, index_dir,
                                     parse_line)
from hpcsynth.rundir import RunDir, shard_name

NONE, MARKER, DAMAGED, ODD = 0, 1, 2, 3  # row states: no marker; counted; unreadable; a dict without counts
# output states: not looked at; size checked; missing or cut; named in a listing of outputs/, size not checked
UNCHECKED, OUTPUT_OK, OUTPUT_BAD, OUTPUT_LISTED = 0, 1, 2, 3
LIST_OUTPUTS_AT = 1000  # more new rows than this: list outputs/ once instead of a stat per output
SIZE_CHECKS = 20_000  # listed outputs whose size one refresh checks (~40 ms of stats)
COUNT_COLUMNS = ("documents", "records", "rejected", "completion_tokens", "prompt_tokens", "bytes", "committed")
MARKER_NUMBERS = ("documents", "records", "rejected", "completion_tokens")  # status's DONE_NUMBERS
MAX_MARKER_BYTES = 16 << 20
# One worker process's index file holds a line per shard it committed (~300 bytes; a line per commit, so a
# shard redone by the same process adds one more): far past that, the file is not a worker's.
INDEX_BYTES_PER_SHARD = 16 << 10
PARSE_BATCH = 2 << 20  # index bytes read and parsed at once (~4,000 lines: few numpy calls, data in cache)
QUIET_S = 10.0
RECONCILE_S = 300.0
MAX_COUNT = 2 ** 53


def signature(path: Path) -> tuple[int, int, int] | None:
    """(inode, mtime ns, size) of a path, None when absent: what says a directory or file changed."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_ino, info.st_mtime_ns, info.st_size)


class _Batch:
    """One buffer, reused, that index lines are read into (no allocation per file or per batch)."""

    def __init__(self) -> None:
        self.buffer = bytearray(PARSE_BATCH + 64)
        self.view = memoryview(self.buffer)
        self.fill = 0


@dataclass
class DoneTable:
    """One row per planned shard (ids 0..shards-1: plan numbers them in input order)."""

    shards: int
    prompts: tuple[str, ...]
    cols: dict[str, np.ndarray] = field(default_factory=dict)
    fingerprints: list[str] = field(default_factory=list)
    offsets: dict[str, tuple[int, int]] = field(default_factory=dict)  # index file -> (inode, bytes read)
    listed: tuple[int, int, int] | None = None  # done/'s signature at the last full listing
    listed_at: float = 0.0  # this host's clock when that listing began
    signals: tuple = ()  # set-aside/, replaced/, manifest.json, done/ at the last full listing
    unindexed: int = 0  # markers the last full listing had to read (no or stale index line)
    damaged_lines: int = 0  # index lines ignored since the last full listing
    marker_reads: int = 0  # markers opened by this table (tests and measurements count them)
    size_cursor: int = 0  # the shard the next refresh's size checks start from (round robin)

    def __post_init__(self) -> None:
        if not self.cols:
            self.cols = empty_columns(self.shards, len(self.prompts))

    # --- keeping up
    def refresh(self, run: RunDir, digest: str, watch: bool = False) -> None:
        """Read what the index gained, list done/ when the rules above ask for it (always for a one-shot
        call, unless done/ is quiet), then stat the outputs of new rows of this fingerprint."""
        self._read_index(run)
        if self._listing_needed(run, watch):
            self._reconcile(run)
        self._check_outputs(run, digest)

    def _listing_needed(self, run: RunDir, watch: bool) -> bool:
        now_done = signature(run.done_dir)
        if (self.listed is not None and now_done == self.listed and not self.damaged_lines
                and self.listed_at - now_done[1] / 1e9 > QUIET_S):
            return False  # nothing entered or left done/ since a listing that could not race a change
        if not watch:
            return True
        return (self.listed is None or self.unindexed > 0 or self.damaged_lines > 0
                or self.signals[:3] != _signals(run)[:3] or (now_done or (0,))[0] != (self.listed or (0,))[0]
                or time.time() - self.listed_at > RECONCILE_S)

    def _read_index(self, run: RunDir) -> None:
        directory = index_dir(run)
        try:
            with os.scandir(directory) as entries:
                names = [e.name for e in entries if e.name.startswith("done-") and e.name.endswith(".jsonl")]
        except OSError:
            names = []
        self.offsets = {n: o for n, o in self.offsets.items() if n in names}
        batch = _Batch()  # whole lines of several files, read into one reused buffer and parsed together
        for name in names:
            self._read_index_file(directory / name, name, batch)
        self._apply_batch(batch)

    def _read_index_file(self, path: Path, name: str, batch: _Batch) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return
        try:
            info = os.fstat(fd)
            if not (info.st_mode & 0o170000 == 0o100000):  # a regular file only (no FIFO, no device)
                return
            if info.st_size > (self.shards + 1) * INDEX_BYTES_PER_SHARD:  # not one worker's commits: planted
                self.damaged_lines += 1  # (a sparse giant read whole took status seconds per GB); list done/
                return
            ino, offset = self.offsets.get(name, (info.st_ino, 0))
            if ino != info.st_ino or offset > info.st_size:
                offset = 0  # another file under the name, or cut short: read it from the start
            while offset < info.st_size:
                if batch.fill > PARSE_BATCH - MAX_LINE_BYTES:
                    self._apply_batch(batch)
                room = min(PARSE_BATCH - batch.fill, info.st_size - offset)
                got = os.preadv(fd, [batch.view[batch.fill:batch.fill + room]], offset)
                if not got:
                    break
                end = batch.buffer.rfind(b"\n", batch.fill, batch.fill + got)
                if end < 0:
                    if batch.fill:  # the buffer's room may be what cut the line: parse what it holds, read again
                        self._apply_batch(batch)
                        continue
                    if got > MAX_LINE_BYTES:  # no line is that long: skip it (counted damaged)
                        self.damaged_lines += 1
                        offset += got
                        continue
                    break  # a cut last line (its writer died, or is writing): wait
                offset += end + 1 - batch.fill
                batch.fill = end + 1
            self.offsets[name] = (info.st_ino, offset)
        except OSError:
            return
        finally:
            os.close(fd)

    def _apply_batch(self, batch: _Batch) -> None:
        if batch.fill:
            batch.buffer[batch.fill:batch.fill + 64] = bytes(64)  # _parse_canonical reads up to 64 bytes past
            self._apply_lines(batch.buffer, batch.fill)
        batch.fill = 0

    def _apply_lines(self, data: bytes | bytearray, size: int) -> None:
        """Apply the whole index lines of data[:size] (64 zero bytes after), as _apply would one by one in this
        order: lines in index_line's own form are parsed and written column-wise (_parse_canonical), any
        other goes through parse_line; a shard with several lines here, or a line parse_line had to read, is
        applied line by line, in order."""
        fast, starts, ends = _parse_canonical(data, size, self.prompts)
        ok = fast["ok"]
        shard = np.where(ok, fast["shard"], -1)
        entries: dict[int, IndexEntry] = {}
        for i in np.flatnonzero(~ok).tolist():
            entry = parse_line(bytes(data[starts[i]:ends[i]])) if ends[i] > starts[i] else None
            if entry is None:
                self.damaged_lines += ends[i] > starts[i]  # an empty line is skipped, as before
            else:
                entries[i], shard[i] = entry, entry.shard
        valid = (shard >= 0) & (shard < self.shards)
        ordered = np.sort(shard[valid])
        twice = ordered[1:][ordered[1:] == ordered[:-1]]  # shards with several lines in this batch
        repeated = valid & np.isin(shard, twice) if len(twice) else np.zeros(len(shard), dtype=bool)
        self._apply_columns(fast, np.flatnonzero(ok & valid & ~repeated))
        for i in np.flatnonzero(valid & (repeated | ~ok)).tolist():
            self._apply(entries[i] if i in entries else _entry_of(fast, i, self.prompts))

    def _apply_columns(self, fast: dict[str, np.ndarray], rows: np.ndarray) -> None:
        """_apply for lines of distinct shards, one assignment per column."""
        cols = self.cols
        s = fast["shard"][rows]
        ino, committed = fast["ino"][rows].astype(np.uint64), fast["committed"][rows]
        older = (cols["state"][s] == MARKER) & (cols["ino"][s] != ino) & (cols["committed"][s] > committed)
        rows, s, ino = rows[~older], s[~older], ino[~older]  # an older commit's line, read after a newer one
        if not len(rows):
            return
        cols["output"][s[(cols["state"][s] != MARKER) | (cols["ino"][s] != ino)]] = UNCHECKED
        cols["state"][s], cols["ino"][s] = MARKER, ino
        known = [self._fingerprint_index(f.decode()) if f else -1 for f in fast["fingerprints"].tolist()]
        cols["fp"][s] = np.array(known, np.int32)[fast["fingerprint"][rows]]
        for key in COUNT_COLUMNS:
            cols[key][s] = fast[key][rows]
        cols["has_by_prompt"][s] = 1
        cols["by_prompt"][s] = fast["by_prompt"][rows]

    def _fingerprint_index(self, fingerprint: str) -> int:
        if fingerprint not in self.fingerprints:
            self.fingerprints.append(fingerprint)
        return self.fingerprints.index(fingerprint)

    def _apply(self, entry: IndexEntry | None) -> None:
        cols = self.cols
        if entry is None or entry.shard >= self.shards:
            self.damaged_lines += entry is None
            return
        s = entry.shard
        if cols["state"][s] == MARKER and cols["ino"][s] != entry.ino and cols["committed"][s] > entry.committed:
            return  # an older commit's line, read after a newer one
        self._set_row(s, entry.ino, entry.fingerprint, {k: getattr(entry, k) for k in COUNT_COLUMNS},
                      entry.by_prompt)

    def _set_row(self, s: int, ino: int, fingerprint: str, counts: dict[str, float],
                 by_prompt: dict[str, tuple[int, int, int]] | None) -> None:
        cols = self.cols
        if cols["state"][s] != MARKER or cols["ino"][s] != ino:
            cols["output"][s] = UNCHECKED
        cols["state"][s], cols["ino"][s] = MARKER, ino
        cols["fp"][s] = self._fingerprint_index(fingerprint)
        for key in COUNT_COLUMNS:
            cols[key][s] = counts[key]
        cols["has_by_prompt"][s] = by_prompt is not None
        cols["by_prompt"][s] = 0.0
        for p, name in enumerate(self.prompts):
            if by_prompt and name in by_prompt:
                cols["by_prompt"][s, p] = by_prompt[name]

    def _reconcile(self, run: RunDir) -> None:
        """List done/ once: drop rows whose marker left, read markers the index cannot vouch for."""
        started, signals = time.time(), _signals(run)
        ids, inos = _list_markers(run.done_dir, self.shards)
        cols = self.cols
        present = np.zeros(self.shards, dtype=bool)
        present[ids] = True
        cols["state"][~present] = NONE
        before, same = cols["state"][ids], cols["ino"][ids] == inos
        trusted = (before == MARKER) & same
        known_bad = ((before == DAMAGED) | (before == ODD)) & same  # read again (few), but not "unindexed"
        for s, ino in zip(ids[~trusted].tolist(), inos[~trusted].tolist()):
            self._read_marker(run, s, ino)
        self.unindexed, self.damaged_lines = int((~trusted & ~known_bad).sum()), 0
        self.listed, self.listed_at, self.signals = signals[-1], started, signals

    def _read_marker(self, run: RunDir, s: int, ino: int) -> None:
        self.marker_reads += 1
        try:
            data = orjson.loads(read_regular(run.done_path(s), MAX_MARKER_BYTES))
        except (ValueError, OSError):
            data = None
        cols = self.cols
        if not isinstance(data, dict):
            cols["state"][s], cols["ino"][s] = DAMAGED, ino
            return
        if not (all(_number(data.get(k)) for k in MARKER_NUMBERS) and isinstance(data.get("fingerprint"), str)):
            cols["state"][s], cols["ino"][s] = ODD, ino  # counts as absent, as it always did
            return
        counts = {k: _count(data.get(k)) for k in COUNT_COLUMNS}
        counts["bytes"] = _count(data["bytes"]) if _number(data.get("bytes")) else -1.0  # -1: not said
        counts["committed"] = float(data["committed"]) if _number(data.get("committed")) else 0.0
        by_prompt = data.get("by_prompt")
        prompts = None
        if isinstance(by_prompt, dict):
            prompts = {str(name): tuple(int(_count(c.get(k))) for k in ("records", "rejected", "completion_tokens"))
                       for name, c in by_prompt.items() if isinstance(c, dict)}
        self._set_row(s, ino, data["fingerprint"], counts, prompts)  # type: ignore[arg-type]

    def _check_outputs(self, run: RunDir, digest: str) -> None:
        """Outputs of rows new to the table: a stat each when few; when more than LIST_OUTPUTS_AT (a cold
        call), one listing of outputs/ (a missing one is found at once; any counted row whose output is not
        listed becomes bad). Then the size of at most SIZE_CHECKS listed, unchecked outputs, round robin from
        size_cursor. Outputs found missing or cut are looked at again every refresh."""
        cols = self.cols
        ours = self.ours(digest)
        output = cols["output"]
        new = ours & (output == UNCHECKED)
        look = ours & (output == OUTPUT_BAD)
        if new.sum() > LIST_OUTPUTS_AT:
            listed = _listed_outputs(run, self.shards)
            output[new & listed] = OUTPUT_LISTED
            output[ours & ~listed & (output != UNCHECKED)] = OUTPUT_BAD  # gone since its check
            output[new & ~listed] = OUTPUT_BAD
        else:
            look |= new
        unsized = np.flatnonzero(ours & (output == OUTPUT_LISTED))
        later = unsized[unsized >= self.size_cursor]
        sized = np.concatenate((later, unsized[:len(unsized) - len(later)]))[:SIZE_CHECKS]
        if len(sized):
            self.size_cursor = int(sized[-1]) + 1
        for s in np.flatnonzero(look).tolist() + sized.tolist():
            output[s] = OUTPUT_BAD if self.output_problem(run, s) else OUTPUT_OK

    def output_problem(self, run: RunDir, s: int) -> str | None:
        folder, suffix = _output_naming(run.root)
        output = f"{folder}{shard_name(s)}{suffix}"  # run.output_path(s), without a Path per shard
        try:
            size = os.stat(output).st_size
        except OSError:
            return f"its output {output} is missing"
        said = int(self.cols["bytes"][s])
        if said >= 0 and said != size:
            return f"its output {output} has {size} bytes, its done marker says {said}"
        return None

    # --- what it says
    def ours(self, digest: str) -> np.ndarray:
        """Rows of markers of this fingerprint (outputs unchecked)."""
        if digest not in self.fingerprints:
            return np.zeros(self.shards, dtype=bool)
        return (self.cols["state"] == MARKER) & (self.cols["fp"] == self.fingerprints.index(digest))


def empty_columns(shards: int, prompts: int) -> dict[str, np.ndarray]:
    cols: dict[str, np.ndarray] = {"state": np.zeros(shards, np.uint8), "output": np.zeros(shards, np.uint8),
            "has_by_prompt": np.zeros(shards, np.uint8), "ino": np.zeros(shards, np.uint64),
            "fp": np.zeros(shards, np.int32), "by_prompt": np.zeros((shards, prompts, 3), np.float64)}
    cols.update({key: np.zeros(shards, np.float64) for key in COUNT_COLUMNS})
    return cols


def _signals(run: RunDir) -> tuple:
    """What changes when markers are moved out of done/ by hpcsynth; done/'s own signature last."""
    return (signature(run.set_aside_dir), signature(run.replaced_dir), signature(run.manifest_path),
            signature(run.done_dir))


@functools.lru_cache(maxsize=16)
def _output_naming(root: Path) -> tuple[str, str]:
    """(folder + separator, suffix) of RunDir.output_path's names: output N is folder + shard_name(N) + suffix."""
    sample = RunDir(root).output_path(0)
    return f"{sample.parent}{os.sep}", sample.name[len(shard_name(0)):]


def _list_markers(done: Path, shards: int) -> tuple[np.ndarray, np.ndarray]:
    """(shard ids, inodes) of done/'s NNNNNN.json names in the plan: one listing, nothing opened."""
    id_parts, ino_parts = [np.zeros(0, np.int64)], [np.zeros(0, np.uint64)]
    try:
        with os.scandir(os.fsencode(done)) as entries:
            while found := list(itertools.islice(entries, 65536)):  # a few MB of entries at a time
                ids = _shard_ids(list(map(attrgetter("name"), found)), b".json", canonical=False)
                inos = np.fromiter(map(methodcaller("inode"), found), dtype=np.uint64, count=len(found))
                inside = (ids >= 0) & (ids < shards)
                id_parts.append(ids[inside])
                ino_parts.append(inos[inside])
    except OSError:
        pass
    return np.concatenate(id_parts), np.concatenate(ino_parts)


def _listed_outputs(run: RunDir, shards: int) -> np.ndarray:
    """Which shards' outputs (RunDir.output_path's names) their folder lists: one listing, names only."""
    present = np.zeros(shards, dtype=bool)
    folder, suffix = _output_naming(run.root)
    try:
        names = os.listdir(os.fsencode(folder))
    except OSError:
        return present
    ids = _shard_ids(names, os.fsencode(suffix), canonical=True)
    present[ids[(ids >= 0) & (ids < shards)]] = True
    return present


_NAME_BYTES = 32  # longer is no shard's name


def _shard_ids(names: list[bytes], suffix: bytes, canonical: bool) -> np.ndarray:
    """Per name, the shard whose DIGITS + suffix it is, else -1 (numpy, no object per name). canonical: only
    shard_name's own spelling (6 digits, more without a leading zero), as RunDir's paths are named."""
    ids = np.full(len(names), -1, dtype=np.int64)
    if not names:
        return ids
    lengths = np.fromiter(map(len, names), dtype=np.int64, count=len(names))
    table = np.array(names, dtype=f"S{_NAME_BYTES}").view(np.uint8).reshape(len(names), _NAME_BYTES)
    for length in np.unique(lengths).tolist():
        stem = length - len(suffix)
        if not 1 <= stem <= 18 or length > _NAME_BYTES or (canonical and stem < 6):
            continue
        rows = np.flatnonzero(lengths == length)
        block = table[rows]
        digits = block[:, :stem].astype(np.int64) - 48
        good = ((digits >= 0) & (digits <= 9)).all(axis=1)
        good &= (block[:, stem:length] == np.frombuffer(suffix, np.uint8)).all(axis=1)
        if canonical and stem > 6:
            good &= digits[:, 0] != 0
        value = (np.clip(digits, 0, 9) * 10 ** np.arange(stem - 1, -1, -1, dtype=np.int64)).sum(axis=1)
        ids[rows[good]] = value[good]
    return ids


_INT_DIGITS = 15  # a count in a canonical line: 1 to 15 digits (below 2**53); longer goes through parse_line
_POW10 = 10 ** np.arange(_INT_DIGITS + 1, dtype=np.uint64)
_LOW_BYTES = np.array([(1 << (8 * n)) - 1 for n in range(8)] + [2 ** 64 - 1], dtype=np.uint64)  # n low bytes
_ONES = 0x0101010101010101


def _u64(value: int) -> np.uint64:
    return np.uint64(value)


_HIGH_NIBBLES, _THREES, _SEVEN_FS = _u64(0xF0 * _ONES), _u64(0x30 * _ONES), _u64(0x7F * _ONES)
_LOW_NIBBLES, _SIXES, _SIXTEENS, _BIT_7S = _u64(0x0F * _ONES), _u64(0x06 * _ONES), _u64(0x10 * _ONES), _u64(0x80 * _ONES)
_U1, _U3, _U8, _U16, _U32 = _u64(1), _u64(3), _u64(8), _u64(16), _u64(32)
_PAIRS, _QUADS = _u64(0x00FF00FF00FF00FF), _u64(0x0000FFFF0000FFFF)
_TEN_1, _TEN_2, _TEN_4 = _u64(2561), _u64(6553601), _u64(42949672960001)
_U7, _U56, _BYTE_INDEX = _u64(7), _u64(56), _u64(0x0001020304050607)
_SHIFTS = np.array([56] + [8 * (8 - n) for n in range(1, 9)], dtype=np.uint64)  # count digits to the top bytes


def _non_digits(word: np.ndarray) -> np.ndarray:
    """Per byte of each little-endian word, 0x80 where it is not an ASCII digit (SWAR, no carry between bytes)."""
    high = (word & _HIGH_NIBBLES) ^ _THREES  # zero where the high nibble is 3
    high_is_3 = ~(((high & _SEVEN_FS) + _SEVEN_FS) | high | _SEVEN_FS)
    low_le_9 = (~((word & _LOW_NIBBLES) + _SIXES) & _SIXTEENS) << _U3
    return ~(high_is_3 & low_le_9) & _BIT_7S


def _digits_before(word: np.ndarray) -> np.ndarray:
    """How many of each word's bytes, from its first, are ASCII digits (0 to 8)."""
    flags = _non_digits(word)
    lowest = (flags & (~flags + _U1)) >> _U7  # 256 ** k, k the first non-digit byte (0 when none)
    index = (lowest * _BYTE_INDEX) >> _U56  # k: the top byte of 0x0001020304050607 << 8k
    return np.where(flags == 0, _U8, index).view(np.int64)


def _digit_value(word: np.ndarray, count: np.ndarray) -> np.ndarray:
    """The number the first `count` (0 to 8) bytes of each word spell (Lemire's eight-digit parse)."""
    value = (word & _LOW_BYTES[count]) << _SHIFTS[count]
    value = ((value & _LOW_NIBBLES) * _TEN_1) >> _U8
    value = ((value & _PAIRS) * _TEN_2) >> _U16
    value = ((value & _QUADS) * _TEN_4) >> _U32
    return np.where(count == 0, _u64(0), value)


def _parse_canonical(data: bytes | bytearray, size: int,
                     prompts: tuple[str, ...]) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Parse whole index lines written in index_line's own form, all at once (numpy, no object per field).

    A line is parsed here only when it is exactly what index_line writes for a marker whose by_prompt names
    some of the plan's prompts in the plan's order: the same keys in the same order, no space, each count
    1 to 15 digits without a leading zero, `committed` 1 to 11 digits and an optional fraction (< 1e11), a
    fingerprint of 64 lowercase hex digits. Every such line is one parse_line accepts, with the same values
    (committed is parsed by the same correctly rounded conversion). Any other line has ok False and is left
    to parse_line (which may still accept it): this only ever saves time.

    The lines are data[:size], each ending in a newline, and 64 zero bytes follow them. Returns (fields,
    starts, ends): per line `ok` and its values, and where each line starts and ends (its newline)."""
    buf = np.frombuffer(data, dtype=np.uint8, count=size + 64)
    ends = np.flatnonzero(buf[:size] == 10)
    starts = np.concatenate(([0], ends[:-1] + 1)).astype(np.int64)
    lines = len(ends)
    # every 8 bytes from every offset (overlapping, unaligned): what a line holds is read 8 bytes a gather
    words = np.ndarray((len(buf) - 7,), dtype="<u8", buffer=buf, strides=(1,))
    top = len(words) - 1
    cur = starts.copy()
    ok = (ends > starts) & (ends - starts <= MAX_LINE_BYTES)
    out: dict[str, np.ndarray] = {}

    def word(at: int = 0, base: np.ndarray | None = None) -> np.ndarray:
        return words[np.minimum((cur if base is None else base) + at, top)]

    def literal(piece: bytes, where: np.ndarray | None = None) -> np.ndarray:
        same = np.ones(lines, dtype=bool)
        for at in range(0, len(piece), 8):
            part = piece[at:at + 8]
            same &= (word(at) & _LOW_BYTES[len(part)]) == _u64(int.from_bytes(part, "little"))
        return same if where is None else same | ~where

    def run(most: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(length, value, good) of the digit run at cur: 1 to `most` (<= 15) digits, no leading zero."""
        first = word()
        head = _digits_before(first)
        length, value = head, _digit_value(first, head)
        if (head == 8).any():  # 8 digits or more: the next 8 bytes too
            second = word(8)
            tail = _digits_before(second)
            length = np.where(head < 8, head, 8 + tail)
            value = np.where(head < 8, value, value * _POW10[tail] + _digit_value(second, tail))
        good = (length >= 1) & (length <= most) & ((length == 1) | ((first & _u64(0xFF)) != _u64(48)))
        return length, value, good

    def count(name: str, where: np.ndarray | None = None) -> None:
        nonlocal ok, cur
        length, value, good = run(_INT_DIGITS)
        if where is None or where.all():
            ok &= good
            out[name], cur = value, cur + length
        else:
            ok &= good | ~where
            out[name], cur = np.where(where, value, _u64(0)), cur + np.where(where, length, 0)

    def expect(piece: bytes) -> None:
        nonlocal ok, cur
        ok &= literal(piece)
        cur = cur + len(piece)

    expect(b'{"v":%d,"shard":' % INDEX_VERSION)
    count("shard")
    expect(b',"fingerprint":"')
    parts = np.stack([word(at) for at in range(0, 64, 8)], axis=1)
    fingerprint = np.zeros(lines, dtype=np.int64) - 1  # which of `seen` each line names (a run has a few)
    seen: list[bytes] = []
    while len(seen) < 8 and (fingerprint < 0).any():
        one = parts[np.argmax(fingerprint < 0)]
        fingerprint[(parts == one).all(axis=1)] = len(seen)
        seen.append(one.astype("<u8").tobytes())
    ok &= fingerprint >= 0  # a ninth fingerprint in one batch: parse_line reads those lines
    ok &= np.array([re.fullmatch(rb"[0-9a-f]{64}", f) is not None for f in seen] + [False], dtype=bool)[fingerprint]
    out["fingerprint"], out["fingerprints"] = fingerprint, np.array(seen + [b""], dtype="S64")
    cur = cur + 64
    expect(b'","ino":')
    count("ino")
    expect(b',"committed":')
    began = cur
    whole, _, good = run(11)
    ok &= good
    cur = cur + whole
    dot = (word() & _u64(0xFF)) == _u64(46)
    cur = cur + dot
    fraction = np.zeros(lines, dtype=np.int64)
    running = dot.copy()
    for at in range(0, 24, 8):  # a fraction: 1 to 17 digits (zeros first too)
        digits = _digits_before(word(at))
        fraction += np.where(running, digits, 0)
        running &= digits == 8
    ok &= ~dot | ((fraction >= 1) & (fraction <= 17))
    cur = cur + np.where(dot, fraction, 0)
    width = np.where(ok, cur - began, 1)
    text = np.stack([word(at, began) & _LOW_BYTES[np.clip(width - at, 0, 8)]
                     for at in range(0, 32, 8)], axis=1).astype("<u8").view("S32").ravel()
    text[~ok] = b"0"
    out["committed"] = text.astype(np.float64)
    ok &= out["committed"] < 1e11
    for key in COUNTS:
        expect(b',"%s":' % key.encode())
        count(key)
    expect(b',"by_prompt":{')
    first = np.ones(lines, dtype=bool)
    by_prompt = np.zeros((lines, len(prompts), 3), np.float64)
    for p, name in enumerate(prompts):
        head = orjson.dumps(name) + b':{"%s":' % PROMPT_COUNTS[0].encode()
        here = np.zeros(lines, dtype=bool)
        if first.any():  # the first entry of by_prompt has no comma before it
            here |= first & literal(head)
        if not first.all():
            here |= ~first & literal(b"," + head)
        cur = cur + np.where(here, len(head) + ~first, 0)
        for k, key in enumerate(PROMPT_COUNTS):
            if k:
                piece = b',"%s":' % key.encode()
                ok &= literal(piece, here)
                cur = cur + np.where(here, len(piece), 0)
            elif not here.any():
                break
            count("_", here)
            by_prompt[:, p, k] = out.pop("_")
        ok &= literal(b"}", here)
        cur = cur + here
        first &= ~here
    out["by_prompt"] = by_prompt
    expect(b"}}")
    ok &= cur == ends
    for key in COUNT_COLUMNS:
        out[key] = out[key].astype(np.float64)
    out["ino"] = out["ino"].astype(np.uint64)
    out["shard"] = out["shard"].astype(np.int64)
    out["ok"] = ok
    return out, starts, ends


def _entry_of(fast: dict[str, np.ndarray], i: int, prompts: tuple[str, ...]) -> IndexEntry:
    """The IndexEntry of a line _parse_canonical parsed (for the few applied line by line)."""
    by_prompt = {name: (int(r), int(j), int(t)) for name, (r, j, t) in zip(prompts, fast["by_prompt"][i].tolist())}
    counts = {key: int(fast[key][i]) for key in COUNTS}
    return IndexEntry(int(fast["shard"][i]), fast["fingerprints"][fast["fingerprint"][i]].decode(), int(fast["ino"][i]),
                      float(fast["committed"][i]), **counts, by_prompt=by_prompt)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _count(value: object) -> float:
    """A marker's count as status adds it: 0 for a negative, non-finite or past-2**53 (forged) one."""
    number = float(value) if _number(value) else 0.0  # type: ignore[arg-type]
    return number if 0 <= number <= MAX_COUNT else 0.0
