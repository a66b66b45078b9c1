"""A shard's progress log: RUN/work/ID/records.jsonl, appended as records finish.

This file is the resume point. Every finished record is written and flushed to the operating system
at once (it survives the process being killed) and fsynced at least every flush interval (it survives
the node going down, less at most that interval). On restart the ids in it are skipped; the last line
may be torn by a kill mid-write and is cut off.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import orjson

from hpcsynth.files import open_append_nofollow, read_bytes_nofollow, truncate_nofollow

ID_PREFIX = b'{"id":"'
TOKENS_KEY = b'"completion_tokens":'


class ProgressLog:
    def __init__(self, path: Path, flush_interval_s: float) -> None:
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.flush_interval = flush_interval_s
        self.finished, self.tokens = recover(self.path)
        self.resumed = len(self.finished)
        self.resumed_tokens = self.tokens
        self.expected = 0
        self.handle = open_append_nofollow(self.path)
        self.last_sync = time.monotonic()
        self.lock = threading.Lock()

    def add(self, record: dict) -> None:
        line = orjson.dumps(record) + b"\n"
        with self.lock:
            self.handle.write(line)
            self.handle.flush()
            self.finished.add(record["id"])
            self.tokens += record["completion_tokens"]
            if time.monotonic() - self.last_sync >= self.flush_interval:
                os.fsync(self.handle.fileno())
                self.last_sync = time.monotonic()

    def records(self) -> list[dict]:
        with self.lock:
            self.handle.flush()
            os.fsync(self.handle.fileno())
        return [orjson.loads(line) for line in read_bytes_nofollow(self.path).splitlines()]

    def close(self) -> None:
        if not self.handle.closed:
            self.handle.close()


def recover(path: Path) -> tuple[set[str], int]:
    """Record ids and completion tokens already on disk; cuts a torn last line off the file."""
    if not path.exists():
        return set(), 0
    data = read_bytes_nofollow(path)
    end = data.rfind(b"\n") + 1
    if end < len(data):
        truncate_nofollow(path, end)
    finished: set[str] = set()
    tokens = 0
    for line in data[:end].splitlines():
        record_id, count = _id_and_tokens(line)
        if record_id not in finished:
            finished.add(record_id)
            tokens += count
    return finished, tokens


def _id_and_tokens(line: bytes) -> tuple[str, int]:
    # The worker writes "id" first and ids never need escaping, so both fields are found without
    # parsing the (long) text: ~2x faster than orjson on real records. Anything else is parsed.
    if line.startswith(ID_PREFIX):
        close = line.find(b'"', len(ID_PREFIX))
        at = line.rfind(TOKENS_KEY)
        if close > 0 and at > 0 and b"\\" not in line[:close]:
            stop = line.find(b",", at)
            try:
                return line[len(ID_PREFIX):close].decode(), int(line[at + len(TOKENS_KEY):stop])
            except ValueError:
                pass
    record = orjson.loads(line)
    return record["id"], record["completion_tokens"]
