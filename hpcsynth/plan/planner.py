"""Plan: split a JSONL corpus into zstd JSONL shards and write the manifest.

First stage of the flow. Writes RUN/config.yaml, RUN/fingerprint, RUN/shards/*.jsonl.zst,
RUN/rejects/plan.jsonl and, last, RUN/manifest.json: a run counts as planned once the manifest exists.
"""

from __future__ import annotations

import dataclasses
import glob
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from hpcsynth import __version__
from hpcsynth.config import Config, fingerprint
from hpcsynth.errors import InputError, RunError
from hpcsynth.files import atomic_write_json, read_corpus_lines, write_jsonl_zst
from hpcsynth.prompts import load_prompts
from hpcsynth.rundir import LAYOUT_VERSION, RunDir


@dataclass(frozen=True)
class Plan:
    run: RunDir
    shards: int
    documents: int
    rejected: int
    fingerprint: str


def expand_inputs(patterns: tuple[str, ...] | list[str]) -> list[Path]:
    if not patterns:
        raise InputError("no input files: pass --input PATH_OR_GLOB or set plan.inputs in the config")
    paths: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        files = [Path(m) for m in matches if Path(m).is_file()]
        if not files:
            raise InputError(f"input {pattern!r} matches no file; check the path or glob")
        paths += files
    return list(dict.fromkeys(p.resolve() for p in paths))


def plan_corpus(config: Config, run: RunDir, inputs: list[str] | None = None) -> Plan:
    """Shard the corpus named by `inputs` (or plan.inputs) into RUN; refuse an already planned RUN."""
    if run.manifest_path.exists():
        raise RunError(f"{run.root} is already planned; pick a new --run directory (outputs there are kept)")
    paths = expand_inputs(inputs or list(config.plan.inputs))
    config = dataclasses.replace(config, plan=dataclasses.replace(config.plan, inputs=tuple(map(str, paths))))
    prompts = load_prompts(config)
    hashes = {p.name: p.template_hash for p in prompts}
    digest = fingerprint(config, hashes)
    run.root.mkdir(parents=True, exist_ok=True)
    run.write_config(config, digest)

    writer = _ShardWriter(run, config)
    rejects = _Rejects(run.root / "rejects" / "plan.jsonl")
    input_stats = []
    for path in paths:
        kept = 0
        for line, record in read_corpus_lines(path):
            doc = _document(record, config, path, line)
            if isinstance(doc, str):
                rejects.add({"source": str(path), "line": line, "reason": doc})
                continue
            writer.add(doc)
            kept += 1
        input_stats.append({"path": str(path), "documents": kept})
    writer.close()
    rejects.close()
    if writer.documents == 0:
        raise InputError(f"no usable documents in {len(paths)} input file(s) ({rejects.count} rejected, see "
                         f"{rejects.path}); check plan.text_key ({config.plan.text_key!r}) and plan.min_chars")

    manifest: dict[str, Any] = {
        "layout_version": LAYOUT_VERSION,
        "hpcsynth_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "fingerprint": digest,
        "prompts": [p.describe() for p in prompts],  # name, format (reduce validates by it), version, hash
        "inputs": input_stats,
        "documents": writer.documents,
        "rejected": rejects.count,
        "shards": writer.shards,
    }
    atomic_write_json(run.manifest_path, manifest)
    return Plan(run=run, shards=len(writer.shards), documents=writer.documents, rejected=rejects.count,
                fingerprint=digest)


def _document(record: dict, config: Config, path: Path, line: int) -> dict | str:
    """The shard record for one corpus line, or the reason it is rejected."""
    text = record.get(config.plan.text_key)
    if not isinstance(text, str):
        return f"no string field {config.plan.text_key!r}"
    if len(text.strip()) < config.plan.min_chars:
        return f"shorter than plan.min_chars={config.plan.min_chars}"
    source_id = record.get(config.plan.id_key)
    if source_id is None:
        source_id = f"{path.name}:{line}"
    return {"id": str(source_id), "text": text}


class _ShardWriter:
    def __init__(self, run: RunDir, config: Config) -> None:
        self.run = run
        self.size = config.plan.shard_docs
        self.level = config.plan.zstd_level
        self.buffer: list[dict] = []
        self.shards: list[dict[str, Any]] = []
        self.documents = 0

    def add(self, doc: dict) -> None:
        shard = len(self.shards)
        # The key is unique within the run by construction, whatever the corpus's ids look like.
        doc = {"key": f"{shard:06d}-{len(self.buffer):06d}", **doc}
        self.buffer.append(doc)
        self.documents += 1
        if len(self.buffer) >= self.size:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        shard = len(self.shards)
        chars = sum(len(d["text"]) for d in self.buffer)
        count, sha = write_jsonl_zst(self.run.shard_path(shard), self.buffer, self.level)
        self.shards.append({"id": shard, "documents": count, "chars": chars, "sha256": sha})
        self.buffer = []

    def close(self) -> None:
        self.flush()


class _Rejects:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self.handle = None

    def add(self, entry: dict) -> None:
        if self.handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = open(self.path, "wb")
        self.handle.write(orjson.dumps(entry) + b"\n")
        self.count += 1

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
