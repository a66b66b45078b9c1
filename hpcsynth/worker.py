"""The worker: one shard in, one committed output file and a done marker out.

`run_shard` reads RUN/shards/ID, renders every (document, prompt) pair, streams them through an engine
and appends each finished record to RUN/work/ID/records.jsonl. On restart, what that file holds is
skipped (a torn last line is dropped), so no request is replayed. The commit writes
RUN/outputs/ID.jsonl.zst atomically, then RUN/done/ID.json with the fingerprint and checksum.
The worker knows nothing of Slurm; launch decides where it runs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from hpcsynth.config import Config
from hpcsynth.engines import Completion, Engine, Request
from hpcsynth.files import atomic_write_bytes, atomic_write_json, read_jsonl_zst, write_jsonl_zst
from hpcsynth.lease import Lease, LeaseLost
from hpcsynth.prompts import Prompt, load_prompts
from hpcsynth.rundir import RunDir


@dataclass(frozen=True)
class ShardResult:
    shard: int
    state: str  # "done", "skipped" (already done), "busy" (leased elsewhere), "failed"
    records: int = 0
    rejected: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    error: str = ""


def run_shard(run: RunDir, shard: int, engine: Engine, config: Config, owner: str) -> ShardResult:
    """Generate every missing record of one shard and commit it; safe to call again after any crash."""
    digest = run.fingerprint()
    if run.is_done(shard, digest):
        return ShardResult(shard, "skipped")
    lease = Lease(run.lease_path(shard), owner, config.worker.lease_timeout_s)
    if not lease.acquire():
        return ShardResult(shard, "busy")
    started = time.monotonic()
    progress = _Progress(run, shard, config)
    beat = _Heartbeat(run, shard, lease, progress, config.worker.heartbeat_interval_s)
    try:
        run.failed_path(shard).unlink(missing_ok=True)
        beat.start()
        prompts = load_prompts(config)
        documents = list(read_jsonl_zst(run.shard_path(shard)))
        progress.expected = len(documents) * len(prompts)
        requests = _requests(documents, prompts, config, progress.finished)
        meta = {d["key"]: d for d in documents}
        for completion in engine.generate(requests):
            progress.add(_record(completion, meta, prompts, engine, config))
            beat.check()
        beat.stop()
        lease.renew()  # still ours? a stale worker must not commit over a live one
        result = _commit(run, shard, progress, documents, prompts, digest)
        lease.release()
        shutil.rmtree(run.work_dir(shard), ignore_errors=True)
        return ShardResult(shard, "done", result["records"], result["rejected"], result["completion_tokens"],
                           time.monotonic() - started)
    except LeaseLost as exc:
        return ShardResult(shard, "busy", error=str(exc))
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        atomic_write_json(run.failed_path(shard), {"shard": shard, "reason": reason, "owner": owner,
                                                   "time": time.time(), "traceback": traceback.format_exc()})
        lease.release()
        return ShardResult(shard, "failed", error=reason)
    finally:
        beat.stop()
        progress.close()


def record_seed(base: int, source_id: str, prompt: str) -> int:
    """Per-record seed: the same document and prompt sample the same way on every rerun."""
    blob = hashlib.sha256(f"{base}:{source_id}:{prompt}".encode()).digest()
    return int.from_bytes(blob[:4], "little") & 0x7FFFFFFF


def truncate_document(text: str, limit: int) -> tuple[str, bool]:
    """Cut at the last newline before `limit` characters (FinePhrase did this silently; we record it)."""
    if len(text) <= limit:
        return text, False
    cut = text.rfind("\n", 0, limit)
    return text[: cut if cut > limit // 2 else limit], True


def _requests(documents: list[dict], prompts: list[Prompt], config: Config, finished: set[str]) -> Iterator[Request]:
    for doc in documents:
        text, _ = truncate_document(doc["text"], config.model.max_input_chars)
        for prompt in prompts:
            record_id = f"{doc['key']}/{prompt.name}"
            if record_id in finished:
                continue
            seed = record_seed(config.sampling.seed, doc["id"], prompt.name)
            yield Request(record_id, prompt.render(text), seed)


def _record(completion: Completion, meta: dict[str, dict], prompts: list[Prompt], engine: Engine,
            config: Config) -> dict[str, Any]:
    key, prompt_name = completion.record_id.rsplit("/", 1)
    doc = meta[key]
    prompt = next(p for p in prompts if p.name == prompt_name)
    sampling = config.sampling
    return {
        "id": completion.record_id,
        "source_id": doc["id"],
        "prompt": prompt.name,
        "template_hash": prompt.template_hash,
        "text": completion.text,
        "model": engine.model_id,
        "revision": engine.revision,
        "engine": config.model.engine,
        "sampling": {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k,
                     "max_tokens": sampling.max_tokens},
        "seed": record_seed(sampling.seed, doc["id"], prompt.name),
        "finish_reason": completion.finish_reason,
        "error": completion.error,
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "input_chars": len(doc["text"]),
        "input_truncated": len(doc["text"]) > config.model.max_input_chars,
        "finished_at": round(time.time(), 3),
    }


class _Progress:
    """Append-only log of finished records; fsynced at least every flush interval."""

    def __init__(self, run: RunDir, shard: int, config: Config) -> None:
        self.path = run.progress_path(shard)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.flush_interval = config.worker.flush_interval_s
        self.finished, self.tokens = _recover(self.path)
        self.resumed = len(self.finished)
        self.expected = 0
        self.handle = open(self.path, "ab")
        self.last_sync = time.monotonic()
        self.lock = threading.Lock()

    def add(self, record: dict) -> None:
        with self.lock:
            self.handle.write(orjson.dumps(record) + b"\n")
            self.handle.flush()  # in the page cache: survives the process being killed
            self.finished.add(record["id"])
            self.tokens += record["completion_tokens"]
            if time.monotonic() - self.last_sync >= self.flush_interval:
                self.sync()

    def sync(self) -> None:
        os.fsync(self.handle.fileno())
        self.last_sync = time.monotonic()

    def records(self) -> list[dict]:
        with self.lock:
            self.handle.flush()
        out = []
        with open(self.path, "rb") as handle:
            for line in handle:
                out.append(orjson.loads(line))
        return out

    def close(self) -> None:
        if not self.handle.closed:
            self.handle.close()


def _recover(path) -> tuple[set[str], int]:
    """Ids and tokens already on disk; a torn last line (killed mid-write) is cut off."""
    if not path.exists():
        return set(), 0
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as handle:
            handle.truncate(end)
    finished: set[str] = set()
    tokens = 0
    for line in data[:end].splitlines():
        record = orjson.loads(line)
        if record["id"] not in finished:
            finished.add(record["id"])
            tokens += record["completion_tokens"]
    return finished, tokens


class _Heartbeat:
    """Renews the lease and writes progress for status from a thread, so a slow engine keeps its lease."""

    def __init__(self, run: RunDir, shard: int, lease: Lease, progress: _Progress, interval: float) -> None:
        self.run, self.shard, self.lease, self.progress, self.interval = run, shard, lease, progress, interval
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name=f"heartbeat-{shard}")
        self.error: BaseException | None = None
        self.started = time.time()

    def start(self) -> None:
        self.beat()
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join()

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def _loop(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.beat()
            except BaseException as exc:  # surfaced in the worker's thread by check()
                self.error = exc
                return

    def beat(self) -> None:
        self.lease.renew()
        progress = self.progress
        elapsed = max(time.time() - self.started, 1e-9)
        generated = progress.tokens
        atomic_write_bytes(self.run.heartbeat_path(self.shard), orjson.dumps({
            "shard": self.shard, "owner": self.lease.owner, "updated": time.time(), "started": self.started,
            "records_done": len(progress.finished), "records_expected": progress.expected,
            "resumed_records": progress.resumed, "completion_tokens": generated,
            "tokens_per_s": round(generated / elapsed, 2),
        }))


def _commit(run: RunDir, shard: int, progress: _Progress, documents: list[dict], prompts: list[Prompt],
            digest: str) -> dict[str, Any]:
    order = {f"{d['key']}/{p.name}": i for i, (d, p) in enumerate((d, p) for d in documents for p in prompts)}
    by_id: dict[str, dict] = {}
    for record in progress.records():
        by_id.setdefault(record["id"], record)
    missing = set(order) - set(by_id)
    if missing:
        raise RuntimeError(f"engine returned no result for {len(missing)} record(s), e.g. {min(missing)}")
    records = sorted(by_id.values(), key=lambda r: order[r["id"]])
    kept = [r for r in records if r["finish_reason"] != "rejected"]
    rejected = [r for r in records if r["finish_reason"] == "rejected"]
    if rejected:
        blob = b"".join(orjson.dumps({"id": r["id"], "source_id": r["source_id"], "reason": r["error"]}) + b"\n"
                        for r in rejected)
        atomic_write_bytes(run.rejects_path(shard), blob)
    count, checksum = write_jsonl_zst(run.output_path(shard), kept)
    marker = {
        "shard": shard, "fingerprint": digest, "output": run.output_path(shard).name, "sha256": checksum,
        "records": count, "rejected": len(rejected), "documents": len(documents),
        "completion_tokens": sum(r["completion_tokens"] for r in kept),
        "prompt_tokens": sum(r["prompt_tokens"] for r in kept), "committed": time.time(),
    }
    atomic_write_json(run.done_path(shard), marker)
    return marker
