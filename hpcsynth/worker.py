"""The worker: one shard in, one committed output file and a done marker out.

`run_shard` reads RUN/shards/ID, renders every (document, prompt) pair, streams them through an engine
and appends each finished record to the shard's progress log (hpcsynth/progress.py). On restart, what
that log holds is skipped, so no request is replayed and none is produced twice. The commit writes
RUN/outputs/ID.jsonl.zst atomically, then RUN/done/ID.json with the fingerprint and checksum.
The worker knows nothing of Slurm; launch decides where it runs.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from hpcsynth.config import Config
from hpcsynth.engines import Completion, Engine, Request
from hpcsynth.files import atomic_write_bytes, atomic_write_json, read_jsonl_zst, write_jsonl_zst
from hpcsynth.heartbeat import Heartbeat
from hpcsynth.lease import Lease, LeaseLost
from hpcsynth.progress import ProgressLog
from hpcsynth.prompts import Prompt, load_prompts
from hpcsynth.rundir import RunDir

log = logging.getLogger("hpcsynth.worker")


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
    progress = ProgressLog(run.progress_path(shard), config.worker.flush_interval_s)
    beat = Heartbeat(run, shard, lease, progress, config.worker.heartbeat_interval_s, config.worker.watchdog_s)
    try:
        run.failed_path(shard).unlink(missing_ok=True)
        beat.start()
        prompts = load_prompts(config)
        documents = list(read_jsonl_zst(run.shard_path(shard)))
        progress.expected = len(documents) * len(prompts)
        _generate(documents, prompts, engine, config, progress, beat)
        beat.stop()
        lease.renew()  # still ours? a worker that lost its lease must not commit over a live one
        marker = _commit(run, shard, progress, documents, prompts, digest)
        lease.release()
        shutil.rmtree(run.work_dir(shard), ignore_errors=True)
        return ShardResult(shard, "done", marker["records"], marker["rejected"], marker["completion_tokens"],
                           time.monotonic() - started)
    except LeaseLost as exc:
        return ShardResult(shard, "busy", error=str(exc))
    except KeyboardInterrupt:
        if not beat.tripped:
            raise
        return _fail(run, shard, owner, lease, beat.tripped)
    except Exception as exc:
        return _fail(run, shard, owner, lease, f"{type(exc).__name__}: {exc}", traceback.format_exc())
    finally:
        beat.stop()
        progress.close()


def _generate(documents: list[dict], prompts: list[Prompt], engine: Engine, config: Config,
              progress: ProgressLog, beat: Heartbeat) -> None:
    """Stream every unfinished request through the engine; on OOM, step the engine down and go on."""
    meta = {d["key"]: d for d in documents}
    by_name = {p.name: p for p in prompts}
    while True:
        progress.restart_stream()
        try:
            for completion in engine.generate(_requests(documents, prompts, config, progress)):
                progress.add(_record(completion, meta, by_name, engine, config))
                beat.check()
            return
        except Exception as exc:
            step = getattr(engine, "step_down", None)
            if not is_out_of_memory(exc) or step is None or len(progress.step_downs) >= config.worker.oom_retries:
                raise
            change = step()
            if not change:
                raise
            progress.step_downs.append(change)
            log.warning("out of memory (%s); stepped down: %s", exc, change)


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or "OutOfMemory" in type(exc).__name__ or "out of memory" in str(exc).lower()


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


def _requests(documents: list[dict], prompts: list[Prompt], config: Config, progress: ProgressLog) -> Iterator[Request]:
    for doc in documents:
        text, _ = truncate_document(doc["text"], config.model.max_input_chars)
        for prompt in prompts:
            record_id = f"{doc['key']}/{prompt.name}"
            if record_id in progress.finished:
                continue
            progress.submitted += 1
            yield Request(record_id, prompt.render(text), record_seed(config.sampling.seed, doc["id"], prompt.name))


def _record(completion: Completion, meta: dict[str, dict], prompts: dict[str, Prompt], engine: Engine,
            config: Config) -> dict[str, Any]:
    key, prompt_name = completion.record_id.rsplit("/", 1)
    doc = meta[key]
    prompt = prompts[prompt_name]
    sampling = config.sampling
    return {  # "id" first: resume reads it
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
        "generate_s": round(completion.seconds, 4),
        "finished_at": round(time.time(), 3),
    }


def _fail(run: RunDir, shard: int, owner: str, lease: Lease, reason: str, trace: str = "") -> ShardResult:
    atomic_write_json(run.failed_path(shard), {"shard": shard, "reason": reason, "owner": owner,
                                               "time": time.time(), "traceback": trace})
    lease.release()
    log.error("shard %d failed: %s", shard, reason)
    return ShardResult(shard, "failed", error=reason)


def _commit(run: RunDir, shard: int, progress: ProgressLog, documents: list[dict], prompts: list[Prompt],
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
        "prompt_tokens": sum(r["prompt_tokens"] for r in kept), "step_downs": progress.step_downs,
        "committed": time.time(),
    }
    atomic_write_json(run.done_path(shard), marker)
    return marker
