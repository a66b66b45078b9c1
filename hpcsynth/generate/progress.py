"""A shard's progress log: RUN/work/ID/records.jsonl, appended as records finish.

This file is the resume point. Its first line names the config fingerprint its records were made
under; every finished record is written and flushed to the operating system at once (it survives the
process being killed) and fsynced at least every flush interval (it survives the node going down, less
at most that interval).

On restart (`recover`):
- a log written under another fingerprint is set aside whole (RUN/set-aside/, kept for the user, never
  deleted) and the shard starts afresh, so an output never mixes configs;
- a torn last line (a kill mid-write) is cut off;
- damaged lines anywhere (NUL blocks after a crash, bit rot, a stray edit) are dropped, counted and
  logged; every intact record is kept and only the dropped ones are generated again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from hpcsynth.files import atomic_write_bytes, open_append_nofollow, read_bytes_nofollow

log = logging.getLogger("hpcsynth.generate.progress")

ID_PREFIX = b'{"id":"'
TOKENS_KEY = b'"completion_tokens":'
HEADER_KEY = "hpcsynth_progress"


class DamagedLog(Exception):
    """Lines of a progress log no longer parse; the log was rewritten without them."""


@dataclass
class Recovered:
    finished: set[str]
    tokens: int
    damaged: int = 0      # lines dropped because they did not parse
    torn: bool = False    # a partial last line was cut off
    set_aside: Path | None = None  # where a log of another fingerprint went


def header(fingerprint: str) -> bytes:
    return orjson.dumps({HEADER_KEY: 1, "fingerprint": fingerprint}) + b"\n"


class ProgressLog:
    def __init__(self, path: Path, flush_interval_s: float, fingerprint: str, aside_dir: Path) -> None:
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.flush_interval = flush_interval_s
        self.fingerprint = fingerprint
        self.recovered = recover(path, fingerprint, aside_dir)
        self.finished, self.tokens = self.recovered.finished, self.recovered.tokens
        self.resumed = len(self.finished)
        self.resumed_tokens = self.tokens
        self.expected = 0
        self.handle = open_append_nofollow(path)  # a symlink planted here must not send writes elsewhere
        self.last_sync = time.monotonic()
        self.lock = threading.Lock()

    def add(self, record: dict) -> None:
        line = orjson.dumps(record) + b"\n"
        with self.lock:
            self.handle.write(line)
            self.handle.flush()  # in the OS at once: a kill leaves at most a torn last line
            self.finished.add(record["id"])
            self.tokens += record["completion_tokens"]
            if time.monotonic() - self.last_sync >= self.flush_interval:
                os.fsync(self.handle.fileno())
                self.last_sync = time.monotonic()

    def records(self) -> list[dict]:
        """Every record in the log, fully parsed; DamagedLog (after rewriting it clean) if lines are broken."""
        with self.lock:
            if not self.handle.closed:
                # Flushed to the OS for the read below; no fsync: the commit fsyncs the output it writes
                # from these records, and until then a crash only costs records generated again.
                self.handle.flush()
            try:
                data = read_bytes_nofollow(self.path)
            except FileNotFoundError:
                data = b""
        lines = data.split(b"\n")
        if _header_fingerprint(lines[0]) != self.fingerprint:
            # Removed or replaced under us (it should not be, while we hold the lease): start it afresh.
            self.close()
            raise DamagedLog(f"{self.path} vanished or was replaced during the run; the shard is generated again")
        records, damaged, good = [], 0, [header(self.fingerprint)]
        for line in lines[1:]:
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
                if not isinstance(record, dict) or not isinstance(record.get("id"), str):
                    raise ValueError("not a record")
            except ValueError:
                damaged += 1
                continue
            records.append(record)
            good.append(line + b"\n")
        if damaged:
            self.close()
            atomic_write_bytes(self.path, b"".join(good))
            raise DamagedLog(f"{self.path}: {damaged} damaged line(s) dropped; those records are generated again")
        return records

    def close(self) -> None:
        with self.lock:
            if not self.handle.closed:
                self.handle.close()


def recover(path: Path, fingerprint: str, aside_dir: Path) -> Recovered:
    """Record ids and completion tokens already on disk, after setting aside or mending what is not."""
    try:
        data = read_bytes_nofollow(path)
    except FileNotFoundError:
        # A new log: created and headed without a temp file or fsync (the first flush interval's fsync
        # makes it durable). A crash before that leaves no log, or one whose header is cut, which the
        # next holder sets aside and starts afresh: those few records are generated again.
        with open_append_nofollow(path) as handle:
            handle.write(header(fingerprint))
        return Recovered(set(), 0)
    first, _, body = data.partition(b"\n")
    if _header_fingerprint(first) != fingerprint:
        aside = _set_aside(path, first, aside_dir, fingerprint)
        atomic_write_bytes(path, header(fingerprint))
        return Recovered(set(), 0, set_aside=aside)
    end = body.rfind(b"\n") + 1
    torn = end < len(body)
    finished: set[str] = set()
    tokens = damaged = 0
    keep: list[bytes] = []
    suspicious = b"\x00" in body  # JSON never holds a raw NUL: a block zeroed by a crash
    for line in body[:end].split(b"\n")[:-1]:
        parsed = _id_and_tokens(line, suspicious)
        if parsed is None:
            damaged += 1
            continue
        record_id, count = parsed
        keep.append(line)
        if record_id not in finished:
            finished.add(record_id)
            tokens += count
    if damaged or torn:
        if damaged:
            log.warning("%s: %d damaged line(s) dropped; their records are generated again", path, damaged)
        atomic_write_bytes(path, header(fingerprint) + b"".join(line + b"\n" for line in keep))
    return Recovered(finished, tokens, damaged, torn)


def _header_fingerprint(line: bytes) -> str | None:
    try:
        head = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if isinstance(head, dict) and head.get(HEADER_KEY) == 1:
        return str(head.get("fingerprint"))
    return None


def _set_aside(path: Path, first: bytes, aside_dir: Path, fingerprint: str) -> Path:
    old = (_header_fingerprint(first) or "unknown")[:12]
    shard = path.parent.name
    aside_dir.mkdir(parents=True, exist_ok=True)
    aside = aside_dir / f"{shard}.{old}.{time.strftime('%Y%m%dT%H%M%S')}.{os.getpid()}.records.jsonl"
    os.replace(path, aside)
    log.warning("%s was written under config fingerprint %s, not this run's %s: set aside as %s; the shard "
                "is generated afresh", path, old, fingerprint[:12], aside)
    return aside


def _id_and_tokens(line: bytes, suspicious: bool) -> tuple[str, int] | None:
    # The worker writes "id" first and ids never need escaping, so both fields are found without
    # parsing the (long) text: ~2x faster than orjson on real records. Anything else is parsed.
    if suspicious and b"\x00" in line:
        return None
    if line.startswith(ID_PREFIX) and line.endswith(b"}"):
        close = line.find(b'"', len(ID_PREFIX))
        at = line.rfind(TOKENS_KEY)
        if close > 0 and at > 0 and b"\\" not in line[:close]:
            stop = line.find(b",", at)
            try:
                return line[len(ID_PREFIX):close].decode(), int(line[at + len(TOKENS_KEY):stop])
            except ValueError:
                pass
    try:
        record = orjson.loads(line)
        return record["id"], int(record["completion_tokens"])
    except (ValueError, KeyError, TypeError):
        return None
