"""The done index: what each commit's done marker says, one JSON line per commit, for status to read.

Where it sits: the worker's commit (generate/shard.py) writes the shard's output, then its done marker
(the truth, which launch and reduce keep checking), then appends one line here. status, the account and
`estimate RUN` (status/done.py) read only what the index files gained since they last looked, instead of
opening every marker: ~680k metadata calls at FinePhrase's 339,000 shards became a few per new commit.

    RUN/index/done-TOKEN.jsonl   one file per worker process (TOKEN: host, pid, a random part), so each
                                 file has one writer: no lock. O_APPEND, no fsync: a lost line costs only
                                 time (status then reads that shard's marker), never a wrong count.

A line is the marker's figures plus `ino`, the marker file's inode when it was written: a marker
replaced later (a worker without the index, a marker put back by hand) has another inode in done/'s
listing, so the reader knows the line no longer describes it. Nothing here may fail a commit.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from hpcsynth.rundir import RunDir

log = logging.getLogger("hpcsynth.generate.worker")

INDEX_VERSION = 1
# A line is ~300 bytes plus ~80 per prompt; longer is not ours (and is never held whole by the reader).
MAX_LINE_BYTES = 64 << 10
# Past 2**53 a float no longer counts by ones: a figure beyond it is forged, not counted.
MAX_COUNT = 2 ** 53
COUNTS = ("records", "rejected", "documents", "completion_tokens", "prompt_tokens", "bytes")
PROMPT_COUNTS = ("records", "rejected", "completion_tokens")

_token: tuple[int, str] | None = None  # (pid, token): a forked child makes its own, never shares a file


def index_dir(run: RunDir) -> Path:
    return run.root / "index"


def writer_token() -> str:
    """This process's index file name part: host, pid and a random part (a pid is reused across nodes and
    restarts); only [A-Za-z0-9._-] so that it is a plain file name."""
    global _token
    if _token is None or _token[0] != os.getpid():
        host = "".join(c if c.isalnum() or c in "-." else "-" for c in socket.gethostname())[:64] or "host"
        _token = (os.getpid(), f"{host}-{os.getpid()}-{secrets.token_hex(4)}")
    return _token[1]


def index_line(marker: dict[str, Any], ino: int) -> bytes:
    """The index line of a done marker (what status, the account and estimate add up)."""
    line = {"v": INDEX_VERSION, "shard": marker["shard"], "fingerprint": marker["fingerprint"], "ino": ino,
            "committed": marker["committed"], **{key: marker[key] for key in COUNTS},
            "by_prompt": marker.get("by_prompt", {})}
    return orjson.dumps(line) + b"\n"


def append_done(run: RunDir, marker: dict[str, Any]) -> None:
    """Append the marker's line to this worker's index file; best effort (the marker is the truth)."""
    try:
        ino = os.stat(run.done_path(marker["shard"])).st_ino
        directory = index_dir(run)
        directory.mkdir(exist_ok=True)
        path = directory / f"done-{writer_token()}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        try:
            os.write(fd, index_line(marker, ino))  # one write: a reader sees a whole line or a cut last one
        finally:
            os.close(fd)
    except (OSError, KeyError, TypeError, ValueError) as exc:
        log.warning("shard %s: done index not updated (%s); status reads its marker instead",
                    marker.get("shard"), exc)


@dataclass(frozen=True)
class IndexEntry:
    """One checked index line."""

    shard: int
    fingerprint: str
    ino: int
    committed: float
    records: int
    rejected: int
    documents: int
    completion_tokens: int
    prompt_tokens: int
    bytes: int
    by_prompt: dict[str, tuple[int, int, int]] | None  # None: the marker had no by_prompt


def _count(value: object) -> bool:
    return type(value) is int and 0 <= value <= MAX_COUNT  # type(): True is not a count


def parse_line(line: bytes) -> IndexEntry | None:
    """The entry a line holds, or None for anything a worker did not write: cut, damaged, forged (a count
    that is not a whole number in [0, 2**53], a fingerprint that is not 64 hex digits, ...)."""
    if len(line) > MAX_LINE_BYTES:
        return None
    try:
        data = orjson.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("v") != INDEX_VERSION:
        return None
    fingerprint, committed, by_prompt = data.get("fingerprint"), data.get("committed"), data.get("by_prompt")
    if not (isinstance(fingerprint, str) and len(fingerprint) == 64 and _count(data.get("shard"))
            and _count(data.get("ino")) and all(_count(data.get(k)) for k in COUNTS)
            and isinstance(committed, (int, float)) and not isinstance(committed, bool) and 0 <= committed < 1e11):
        return None
    prompts: dict[str, tuple[int, int, int]] | None = None
    if isinstance(by_prompt, dict):
        prompts = {}
        for name, counts in by_prompt.items():
            if not (isinstance(counts, dict) and all(_count(counts.get(k)) for k in PROMPT_COUNTS)):
                return None
            prompts[name] = (counts["records"], counts["rejected"], counts["completion_tokens"])
    elif by_prompt is not None:
        return None
    return IndexEntry(data["shard"], fingerprint, data["ino"], float(committed), data["records"], data["rejected"],
                      data["documents"], data["completion_tokens"], data["prompt_tokens"], data["bytes"], prompts)
