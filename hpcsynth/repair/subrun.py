"""A repair sub-run: the records of one prompt still refused after attempt K-1, planned as a run of their own.

RUN/repair/attempt-K/PROMPT/ is an ordinary run directory, so that `launch_run` works it as it works any run
(leases, progress logs, kill -9, Slurm requeue) and commits each record of the attempt exactly once. It
differs from a planned run in three things, all written here:

- its documents are the source documents of the refused records (read from RUN/shards, or from attempt
  K-1's sub-run), each with its key and id unchanged: the worker names a record KEY/PROMPT, so a repaired
  record has the id of the one it repairs, and a record id says which main shard it belongs to;
- its config is the run's with `prompts: [PROMPT]` (no routing: the documents are chosen already),
  repair.sampling laid over sampling, and sampling.seed drawn from (sampling.seed, K): the worker seeds each
  record with record_seed(seed_K, document id, prompt), so every attempt samples each record anew;
- its manifest header holds "repair": the attempt, the prompt, how many records and a sha256 of their ids
  (whether the refused set changed since it was planned), and per shard the first and last main shard its
  documents came from ("spans", what the reduce looks up); each row's "inputs" names the main shard files
  (relative to RUN) and document positions, as a planned row names its corpus files and lines.

A sub-run is written in RUN/repair/attempt-K/PROMPT/.plan-tmp-PID while the scan streams its documents
(memory: one shard), and moved into place by the planner's own commit_plan, manifest last.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from typing import Any

from hpcsynth import __version__
from hpcsynth.config import Config, config_from_dict, config_to_dict, fingerprint
from hpcsynth.files import atomic_write_json, write_jsonl_zst
from hpcsynth.plan.documents import estimate_tokens
from hpcsynth.plan.manifest import commit_plan, take_lock, write_manifest
from hpcsynth.plan.shards import ShardCutter
from hpcsynth.prompts import load_prompts
from hpcsynth.reduce.repaired import main_shard_of
from hpcsynth.rundir import LAYOUT_VERSION, RunDir, shard_name


def attempt_seed(seed: int, attempt: int) -> int:
    """sampling.seed of attempt K's sub-runs: drawn from the run's seed and K (attempt 0 is the run itself)."""
    if attempt == 0:
        return seed
    blob = hashlib.sha256(f"repair:{seed}:{attempt}".encode()).digest()
    return int.from_bytes(blob[:4], "little") & 0x7FFFFFFF


def subrun_config(config: Config, prompt: str, attempt: int) -> Config:
    """The run's config for one prompt's records of attempt K, every value checked again as a planned one is."""
    s, o = config.sampling, config.repair.sampling
    sampling = dataclasses.replace(
        s, temperature=o.temperature or s.temperature, top_p=o.top_p or s.top_p, top_k=o.top_k or s.top_k,
        max_tokens=o.max_tokens or s.max_tokens, extra={**s.extra, **o.extra}, seed=attempt_seed(s.seed, attempt))
    sub = dataclasses.replace(config, prompts=(prompt,), prompt_when={}, sampling=sampling)
    return config_from_dict(config_to_dict(sub), source=f"repair attempt {attempt} of prompt {prompt!r}")


def subrun_fingerprint(config: Config) -> str:
    return fingerprint(config, {p.name: p.template_hash for p in load_prompts(config)})


def ids_digest(ids: list[str]) -> str:
    """What names a refused set: its record ids in order (main shard order, as the scan meets them)."""
    digest = hashlib.sha256()
    for record_id in ids:
        digest.update(record_id.encode() + b"\n")
    return digest.hexdigest()


class SubRunWriter:
    """Streams one sub-run's documents into its staging folder, cut into shards as plan cuts them."""

    def __init__(self, sub: RunDir, config: Config, attempt: int, bytes_per_token: float) -> None:
        self.sub, self.config, self.attempt, self.ratio = sub, config, attempt, bytes_per_token
        sub.root.mkdir(parents=True, exist_ok=True)
        self.tmp = sub.plan_staging_dir(os.getpid())
        for stale in sub.root.glob(".plan-tmp-*"):  # a killed repair's; the caller holds RUN/repair/.lock
            shutil.rmtree(stale, ignore_errors=True)
        (self.tmp / "shards").mkdir(parents=True)
        (self.tmp / "plan").mkdir()
        self.cutter = ShardCutter(config.plan.shard_tokens, config.plan.shard_docs)
        self.rows: list[dict[str, Any]] = []
        self.spans: list[list[int]] = []
        self.docs: list[dict] = []
        self.refused: list[dict] = []
        self.ids: list[str] = []
        self.tokens = self.chars = 0

    def add(self, doc: dict, entry: dict) -> None:
        """One document (as planned: key, id, text, meta) and why its record is here (id, check, reason)."""
        doc = {k: v for k, v in doc.items() if k != "prompts"}  # routing was decided: this prompt only
        self.docs.append(doc)
        self.refused.append(entry)
        self.ids.append(entry["id"])
        tokens = estimate_tokens(doc["text"], self.ratio)
        self.tokens += tokens
        self.chars += len(doc["text"])
        if self.cutter.add(tokens):
            self._end_shard()

    def _end_shard(self) -> None:
        if not self.docs:
            return
        shard = len(self.rows)
        path = self.tmp / "shards" / f"{shard_name(shard)}.jsonl.zst"
        count, sha = write_jsonl_zst(path, self.docs, self.config.plan.zstd_level)
        mains = [main_shard_of(d["key"]) for d in self.docs]
        self.rows.append({"id": shard, "path": f"shards/{shard_name(shard)}.jsonl.zst", "documents": count,
                          "est_tokens": self.tokens, "chars": self.chars, "bytes": path.stat().st_size,
                          "sha256": sha, "inputs": _inputs(self.docs)})
        self.spans.append([min(mains), max(mains)])
        self.docs, self.tokens, self.chars = [], 0, 0
        self.cutter = ShardCutter(self.config.plan.shard_tokens, self.config.plan.shard_docs)

    @property
    def records(self) -> int:
        return len(self.ids)

    def header(self) -> dict[str, Any]:
        return {"attempt": self.attempt, "prompt": self.config.prompts[0], "records": len(self.ids),
                "refused_sha256": ids_digest(self.ids), "seed": self.config.sampling.seed, "spans": self.spans}

    def commit(self, source_key: str) -> None:
        """Write the rest of the plan (config, fingerprint, refused list, manifest) and move it into place."""
        self._end_shard()
        prompts = load_prompts(self.config)
        digest = subrun_fingerprint(self.config)
        RunDir(self.tmp).write_config(self.config, digest)
        write_jsonl_zst(self.tmp / "plan" / "refused.jsonl.zst", self.refused)
        checks: dict[str, int] = {}
        for entry in self.refused:
            checks[entry["check"]] = checks.get(entry["check"], 0) + 1
        atomic_write_json(self.tmp / "plan" / "summary.json", {"documents": len(self.ids), "refused_by_check": checks,
                                                               "shards": len(self.rows)})
        header = {"layout_version": LAYOUT_VERSION, "hpcsynth_version": __version__, "fingerprint": digest,
                  "prompts": [p.describe() for p in prompts], "inputs": [], "documents": len(self.ids),
                  "sources": len(self.ids), "rejected": 0, "est_tokens": sum(r["est_tokens"] for r in self.rows),
                  "bytes_per_token": self.ratio, "repair": {**self.header(), "source_key": source_key}}
        write_manifest(self.tmp, header, self.rows)
        lock = take_lock(self.sub.root)
        try:
            commit_plan(self.tmp, self.sub)
        finally:
            lock.release()

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
        try:
            self.sub.root.rmdir()  # made for this staging only
        except OSError:
            pass


def _inputs(docs: list[dict]) -> list[dict[str, Any]]:
    """Where a sub-run shard's documents came from: main shard files (relative to RUN) and positions in them."""
    inputs: list[dict[str, Any]] = []
    for doc in docs:
        shard, _, position = str(doc["key"]).partition("-")
        path = f"shards/{shard}.jsonl.zst"
        index = int(position) if position.isdigit() else 0
        if inputs and inputs[-1]["path"] == path:
            inputs[-1]["last"] = index
        else:
            inputs.append({"path": path, "unit": "document", "first": index, "last": index})
    return inputs


def read_refused(sub: RunDir) -> list[dict]:
    """The entries (id, shard, check, reason) the sub-run was planned for, from its plan/refused.jsonl.zst."""
    from hpcsynth.files import read_jsonl_zst

    path = sub.plan_dir / "refused.jsonl.zst"
    return list(read_jsonl_zst(path)) if path.is_file() else []


__all__ = ["SubRunWriter", "attempt_seed", "ids_digest", "read_refused", "subrun_config", "subrun_fingerprint"]
