"""One claimed shard while a worker holds it: its lease, documents, progress log and commit.

A ShardTask is opened when the worker's request stream reaches the shard, fed to the engine, filled
with completions, and committed (RUN/outputs/ID.jsonl.zst, then RUN/done/ID.json) the moment its last
record arrives, while the engine already works on the next shard.
"""

from __future__ import annotations

import hashlib
import logging
import io
import os
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import zstandard

from hpcsynth.config import Config
from hpcsynth.errors import RunError
from hpcsynth.generate.engines import Completion, Request
from hpcsynth.files import atomic_write_bytes, atomic_write_json, jsonl_zst_records, read_json, write_jsonl_zst
from hpcsynth.generate.lease import Lease, slurm_task
from hpcsynth.generate.clock import InPlaceFile
from hpcsynth.generate.progress import ProgressLog
from hpcsynth.logs import worker_log_path
from hpcsynth.prompts import Prompt
from hpcsynth.redact import redact
from hpcsynth.rundir import RunDir, shard_name

log = logging.getLogger("hpcsynth.generate.worker")


@dataclass(frozen=True)
class ShardResult:
    shard: int
    state: str  # "done", "skipped" (already done), "busy" (leased elsewhere), "failed"
    records: int = 0
    rejected: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    error: str = ""


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


class ShardTask:
    def __init__(self, run: RunDir, shard: int, config: Config, lease: Lease, prompts: list[Prompt],
                 digest: str, expected: dict | None) -> None:
        self.run, self.shard, self.config, self.lease, self.prompts = run, shard, config, lease, prompts
        self.by_name = {p.name: p for p in prompts}
        self.started = time.monotonic()
        self.started_wall = time.time()
        # The worker's engine counters when it opened the shard, and what they gained by its commit (worker.py).
        self.engine_at_open: dict[str, float] | None = None
        self.telemetry: dict[str, Any] | None = None
        self.documents = read_shard(run, shard, expected)
        self.pairs = routed_pairs(self.documents, prompts)
        if expected and "pairs" in expected and len(self.pairs) != expected["pairs"]:
            raise ShardUnusable(f"input shard {run.shard_path(shard)} routes {len(self.pairs)} (document, prompt) "
                                f"pairs, the manifest says {expected['pairs']}; plan the run again into a new "
                                f"directory")
        self.meta = {d["key"]: d for d in self.documents}
        self.progress = ProgressLog(run.progress_path(shard), config.worker.flush_interval_s, digest,
                                    run.set_aside_dir)
        self.progress.expected = len(self.pairs)
        self.beat_file = InPlaceFile(run.heartbeat_path(shard))  # rewritten in place every heartbeat
        run.failed_path(shard).unlink(missing_ok=True)

    @property
    def lost(self) -> bool:
        return self.lease.lost

    @classmethod
    def open(cls, run: RunDir, shard: int, config: Config, owner: str, prompts: list[Prompt],
             digest: str, expected: dict | None = None, failed_since: float = 0.0) -> ShardTask | ShardResult:
        """Claim a shard: skipped when done, busy when leased elsewhere or failed by another worker since
        `failed_since`, failed (with a marker naming the file and the reason) when its files cannot be used.
        expected: the shard's manifest row (default: looked up, once the lease is held).

        The lease is read before anything is created: a shard another worker holds costs one open, one
        bounded read and one close (generate/lease.py), and leaves no file behind."""
        lease = Lease(run.lease_path(shard), owner, config.worker.lease_timeout_s)
        try:
            held = lease.probe()
            if lease.busy(held):
                return ShardResult(shard, "busy")
            if run.is_done(shard, digest):  # committed since the worker listed its shards
                return ShardResult(shard, "skipped")
            acquired = lease.acquire(absent=held is None)
        except OSError as exc:
            # A file-system hiccup while probing (a directory that came and went, a server error): this
            # worker cannot tell who holds the shard, so it counts as busy and gets its second look later.
            log.warning("shard %d: cannot probe its lease (%s: %s); counted as busy", shard, type(exc).__name__, exc)
            return ShardResult(shard, "busy", error=f"lease probe failed: {exc}")
        if not acquired:
            return ShardResult(shard, "busy")
        try:
            # Again under the lease: another worker may have committed it since the check above.
            if run.is_done(shard, digest):
                lease.release()
                return ShardResult(shard, "skipped")
            # Failed by another worker since this one listed its shards: opening it would delete that
            # marker and meet the same failure (a shard that crashes the engine would end every worker
            # in turn). Only `launch --retry-failed` tries it again.
            if failed_since and _failed_at(run, shard) >= failed_since:
                lease.release()
                return ShardResult(shard, "busy", error="failed meanwhile by another worker; see its failed marker")
            if expected is None:
                expected = run.manifest_row(shard)  # one row, looked up now: the worker holds no manifest
            return cls(run, shard, config, lease, prompts, digest, expected)
        except ShardUnusable as exc:
            return fail_shard(run, shard, lease, str(exc), "")
        except Exception as exc:  # an unexpected error on one shard must not end the worker
            return fail_shard(run, shard, lease, f"cannot open shard: {type(exc).__name__}: {exc}",
                              traceback.format_exc())
        except BaseException:
            lease.release()
            raise

    @property
    def complete(self) -> bool:
        return len(self.progress.finished) >= self.progress.expected

    def requests(self) -> Iterator[Request]:
        """Every record not yet on disk, in document x prompt order (the routed pairs only)."""
        seed = self.config.sampling.seed
        limit = self.config.model.max_input_chars
        last, text = None, ""
        for doc, prompt in self.pairs:
            if doc is not last:  # a document's text is cut once, for all its prompts
                last, (text, _) = doc, truncate_document(doc["text"], limit)
            record_id = f"{doc['key']}/{prompt.name}"
            if record_id not in self.progress.finished:
                yield Request(record_id, prompt.render(text), record_seed(seed, doc["id"], prompt.name))

    def add(self, completion: Completion, model_id: str, revision: str) -> None:
        if not self.lost:
            self.progress.add(self._record(completion, model_id, revision))

    def commit(self, digest: str, step_downs: list[str]) -> ShardResult:
        self.lease.renew()  # still ours? a worker that lost its lease must not commit over a live one
        marker = _commit(self, digest, step_downs)
        self.close()
        if self.run.fingerprint() != digest:
            # launch adopted another config while this commit ran: done/ holds only markers of the run's
            # fingerprint (workers skip shards by the marker's name alone), so this one goes aside, under
            # the lease still, before another worker may commit the shard under the new config.
            set_aside_marker(self.run, self.shard, digest)
            self.lease.release()
            return ShardResult(self.shard, "busy", error="the run's config changed while committing; "
                                                         "its done marker was set aside")
        # Clear the work files while the lease is still ours: once it is released, another worker may
        # already be writing its own there.
        _remove_work_files(self.run.work_dir(self.shard), keep=self.lease.path)
        self.lease.release()
        try:
            self.run.work_dir(self.shard).rmdir()
        except OSError:
            pass  # someone else's files arrived meanwhile
        return ShardResult(self.shard, "done", marker["records"], marker["rejected"], marker["completion_tokens"],
                           time.monotonic() - self.started)

    def fail(self, reason: str, trace: str = "") -> ShardResult:
        self.close()
        return fail_shard(self.run, self.shard, self.lease, reason, trace)

    def close(self) -> None:
        self.progress.close()
        self.beat_file.close()

    def write_heartbeat(self, in_flight: int, step_downs: list[str]) -> None:
        """Renew the lease, then rewrite the heartbeat in place: one read of the lease by its path and two
        writes through held descriptors; no temp file, no fsync. LeaseLost when another worker holds it."""
        self.lease.renew()
        self.beat_file.write(self.heartbeat(in_flight, step_downs))

    def heartbeat(self, in_flight: int, step_downs: list[str]) -> dict[str, Any]:
        progress = self.progress
        elapsed = max(time.time() - self.started_wall, 1e-9)
        return {
            "shard": self.shard, "owner": self.lease.owner, "task": slurm_task(), "updated": time.time(),
            "started": self.started_wall, "records_done": len(progress.finished), "records_expected": progress.expected,
            "resumed_records": progress.resumed, "worker_in_flight": in_flight,
            "completion_tokens": progress.tokens,
            "tokens_per_s": round((progress.tokens - progress.resumed_tokens) / elapsed, 2),
            "step_downs": step_downs,
        }

    def _record(self, completion: Completion, model_id: str, revision: str) -> dict[str, Any]:
        key, prompt_name = completion.record_id.rsplit("/", 1)
        doc = self.meta[key]
        prompt = self.by_name[prompt_name]
        sampling = self.config.sampling
        return {  # "id" first
            "id": completion.record_id,
            "source_id": doc["id"],
            "prompt": prompt.name,
            "template_hash": prompt.template_hash,
            "text": completion.text,
            "model": model_id,
            "revision": revision,
            "engine": self.config.model.engine,
            "sampling": {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k,
                         "max_tokens": sampling.max_tokens, **({"extra": sampling.extra} if sampling.extra else {})},
            "seed": record_seed(sampling.seed, doc["id"], prompt.name),
            "finish_reason": completion.finish_reason,
            "error": completion.error,
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
            "input_chars": len(doc["text"]),
            "input_truncated": len(doc["text"]) > self.config.model.max_input_chars,
            **({"meta": doc["meta"]} if "meta" in doc else {}),
            "generate_s": round(completion.seconds, 4),
            "finished_at": round(time.time(), 3),
        }


def _commit(task: ShardTask, digest: str, step_downs: list[str]) -> dict[str, Any]:
    run, shard = task.run, task.shard
    order = {f"{d['key']}/{p.name}": i for i, (d, p) in enumerate(task.pairs)}
    by_id: dict[str, dict] = {}
    for record in task.progress.records():
        by_id.setdefault(record["id"], record)
    missing = set(order) - set(by_id)
    if missing:
        raise RuntimeError(f"engine returned no result for {len(missing)} record(s), e.g. {min(missing)}")
    records = sorted((r for r in by_id.values() if r["id"] in order), key=lambda r: order[r["id"]])
    kept = [r for r in records if r["finish_reason"] != "rejected"]
    rejected = [r for r in records if r["finish_reason"] == "rejected"]
    if rejected:
        blob = b"".join(orjson.dumps({"id": r["id"], "source_id": r["source_id"], "reason": r["error"]}) + b"\n"
                        for r in rejected)
        atomic_write_bytes(run.rejects_path(shard), blob)
    count, checksum = write_jsonl_zst(run.output_path(shard), kept)
    marker = {
        "shard": shard, "fingerprint": digest, "output": run.output_path(shard).name, "sha256": checksum,
        "bytes": run.output_path(shard).stat().st_size,
        "records": count, "rejected": len(rejected), "documents": len(task.documents),
        "completion_tokens": sum(r["completion_tokens"] for r in kept),
        "prompt_tokens": sum(r["prompt_tokens"] for r in kept), "step_downs": list(step_downs),
        "resumed_records": task.progress.resumed, "committed": time.time(),
    }
    marker["by_prompt"] = _by_prompt(records)
    if task.telemetry:
        marker["telemetry"] = task.telemetry
    atomic_write_json(run.done_path(shard), marker)
    from hpcsynth.generate.index import append_done  # here: the rest of generate/ is another's to edit

    append_done(run, marker)  # after the marker (the truth): status's cheap way to learn of the commit
    return marker


def _by_prompt(records: list[dict]) -> dict[str, dict[str, int]]:
    """Records kept and rejected and completion tokens per prompt: status's table of a grid's cells."""
    out: dict[str, dict[str, int]] = {}
    for record in records:
        counts = out.setdefault(record["prompt"], {"records": 0, "rejected": 0, "completion_tokens": 0})
        if record["finish_reason"] == "rejected":
            counts["rejected"] += 1
        else:
            counts["records"] += 1
            counts["completion_tokens"] += record["completion_tokens"]
    return out


class ShardUnusable(Exception):
    """A shard's input file cannot be used (missing, damaged, or not what plan wrote)."""


def routed_pairs(documents: list[dict], prompts: list[Prompt]) -> list[tuple[dict, Prompt]]:
    """The (document, prompt) pairs a shard generates, in document x prompt order: a document the plan routed
    (`prompts: [{name, when}]`) to the prompts its "prompts" lists, any other to every prompt. The plan
    decided the routing; the worker never judges a condition (check_routing holds the two to one config)."""
    pairs = []
    for doc in documents:
        routed = doc.get("prompts")
        pairs += [(doc, p) for p in prompts if routed is None or p.name in routed]
    return pairs


def check_routing(run: RunDir, config: Config) -> None:
    """Refuse to generate with prompt conditions other than those the shards were routed by: `plan` decides
    which pairs exist (and writes them into every shard), so a config whose `prompts` route otherwise (adopted
    with `launch --config --force`) would silently generate the old pairs."""
    from hpcsynth.plan.routing import routes_of

    routing = run.manifest().get("routing")
    planned = routing.get("prompts") if isinstance(routing, dict) else None
    wanted = [{"name": name, **({"when": when} if when else {})} for name, when in routes_of(config)]
    if (planned or []) != wanted:
        def shown(entries: list) -> str:
            return ", ".join(f"{e.get('name')} when {e['when']!r}" for e in entries
                             if isinstance(e, dict) and e.get("when")) or "none"
        raise RunError(f"{run.root}: its config routes prompts by {shown(wanted)}, its shards were planned with "
                       f"{shown(planned or [])}; routing is decided at plan time: plan the run again with this "
                       f"config (`hpcsynth plan CONFIG --run {run.root} --force`)")


def read_shard(run: RunDir, shard: int, expected: dict | None) -> list[dict]:
    """The shard's documents, verified against its manifest row (sha256 and count) before any is used."""
    path = run.shard_path(shard)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        parent = run.grid_parent()
        fix = (f"plan the grid again, which links it again (`hpcsynth plan CONFIG --run {parent}`), then "
               f"`hpcsynth launch {parent} --retry-failed`" if parent else "plan the run again into a new directory")
        raise ShardUnusable(f"input shard {path} is missing; {fix}") from None
    if expected and expected.get("sha256") and hashlib.sha256(data).hexdigest() != expected["sha256"]:
        raise ShardUnusable(f"input shard {path} differs from the manifest (sha256 mismatch): it was changed or "
                            f"damaged after plan; restore it or plan the run again into a new directory")
    try:
        documents = list(jsonl_zst_records(io.BytesIO(data)))
    except (zstandard.ZstdError, ValueError) as exc:
        raise ShardUnusable(f"input shard {path} is damaged ({exc}); restore it or plan the run again") from None
    if expected and "documents" in expected and len(documents) != expected["documents"]:
        raise ShardUnusable(f"input shard {path} holds {len(documents)} documents, the manifest says "
                            f"{expected['documents']}; plan the run again into a new directory")
    for number, doc in enumerate(documents, start=1):
        if not (isinstance(doc, dict) and isinstance(doc.get("key"), str) and isinstance(doc.get("text"), str)):
            raise ShardUnusable(f"input shard {path} record {number} is not a planned document")
        routed = doc.get("prompts", [])  # the prompts plan routed it to, when routed: a list of names
        if not (isinstance(routed, list) and all(isinstance(name, str) for name in routed)):
            raise ShardUnusable(f"input shard {path} record {number} is not a planned document (its \"prompts\" "
                                f"is not a list of prompt names)")
    return documents


def fail_shard(run: RunDir, shard: int, lease: Lease, reason: str, trace: str) -> ShardResult:
    """Write the shard's failed marker (reason, owner, log, traceback) and let the lease go."""
    atomic_write_json(run.failed_path(shard), {
        "shard": shard, "reason": redact(reason), "owner": lease.owner, "time": time.time(),
        "log": worker_log_path(), "traceback": trace or "".join(traceback.format_stack(limit=8))})
    lease.release()
    log.error("shard %d failed: %s", shard, reason)
    return ShardResult(shard, "failed", error=reason)


def set_aside_marker(run: RunDir, shard: int, digest: str) -> None:
    """Move the shard's done marker to RUN/set-aside/ if it is of `digest` (another config's run's one
    is left alone: it may be a newer worker's)."""
    marker = run.done_marker(shard)
    if marker is None or marker.get("fingerprint") != digest:
        return
    run.set_aside_dir.mkdir(parents=True, exist_ok=True)
    aside = run.set_aside_dir / f"{shard_name(shard)}.{digest[:12]}.{int(time.time())}.done.json"
    try:
        os.replace(run.done_path(shard), aside)
    except FileNotFoundError:
        pass  # launch set it aside first


def _failed_at(run: RunDir, shard: int) -> float:
    """When the shard's failed marker was written (its own time; else the file's), 0 when there is none."""
    path = run.failed_path(shard)
    try:
        marker = read_json(path)
        return float(marker["time"])
    except FileNotFoundError:
        return 0.0
    except (OSError, ValueError, KeyError, TypeError):
        try:
            return path.stat().st_mtime  # a damaged marker still marks the shard failed
        except OSError:
            return 0.0


def shard_of(record_id: str) -> int:
    """The shard a record id (KEY/PROMPT, KEY = SHARD-INDEX) belongs to, at any number of shards."""
    return int(record_id.split("-", 1)[0])


def _remove_work_files(work: Path, keep: Path) -> None:
    # Only plain files (the worker's own); anything else there is left alone.
    for path in work.glob("*"):
        if path != keep and (path.is_file() or path.is_symlink()):
            path.unlink(missing_ok=True)
