"""The reduce's own plan, DIR/parts/spec.json: what every part and the merge need, read from disk.

A part (parts.py) or the merge (merge.py) may run in another process or a Slurm array task; each gets
only the output directory and a part index and reads everything else here (house rule: submit small
work). `key` covers what decides a part's bytes: the run's fingerprint, the reduce settings, the
tokenizer file and its EOS/BOS, the bucket count. A part whose done marker carries another key, or
covers other shards, is redone; one that matches is reused (that is how a killed reduce resumes).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from hpcsynth.files import atomic_write_json, read_json, sha256_file
from hpcsynth.errors import RunError
from hpcsynth.reduce.marker import PartMarker

SPEC_VERSION = 2  # 2: parts hold every candidate of the exact mix, with keys and sources
KeepParts = Literal["all", "run"]  # what the merge leaves in DIR/parts (reduce/cleanup.py)


@dataclass(frozen=True)
class ReduceSpec:
    run: str  # the run directory
    out: str  # the output directory
    name: str  # output prefix: reduce.name, with "-partial" when not every shard is in
    partial: bool
    shards_skipped: list[dict]  # shards a partial reduce left out, with the reason
    parts: list[list[int]]  # [part index, shard ids...]: a part index is stable, from the manifest
    buckets: int
    format: str
    max_file_mb: float
    text_export: bool
    tokenizer: dict[str, Any]  # DocumentTokenizer.describe(), the backend the parity gate chose
    backend_note: str
    run_info: dict[str, Any]  # fingerprint, model, prompts, seed, original_ratio: for the merge and the card
    key: str
    # The resolved reduce.mix (hpcsynth/reduce/mix/sources.py): sources in index order, and the policy.
    mix: dict[str, Any] = dataclasses.field(default_factory=dict)
    # [part index, source index, file, Parquet row groups or None]: the parts of mix-in corpora, after the
    # run's parts (a JSONL file is one part, a Parquet file one per run of row groups).
    corpus_parts: list[list] = dataclasses.field(default_factory=list)
    # What the merge leaves in DIR/parts once the output is written (reduce/cleanup.py): "all", or "run" (the
    # mix-in corpora's parts removed). Not in the key: it changes no byte. "all" for specs written before.
    keep_parts: KeepParts = "all"
    # reduce.decontaminate resolved (benchmarks.resolve_benchmarks: n, text_keys, each file's name, size and
    # sha256) and the key of the table prepare_reduce built into DIR/parts; {} when off. In the spec key.
    decontaminate: dict[str, Any] = dataclasses.field(default_factory=dict)
    # `hpcsynth repair`'s sub-runs as the reduce found them (reduce/repaired.py repair_state: each one's done
    # shards and checksums); {} without repairs. Its digest is in the key: a repair since redoes the parts.
    repair: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def out_dir(self) -> Path:
        return Path(self.out)

    @functools.cached_property  # part_path asks per file of every part: ~10 per part, 10^5 at 10,000 parts
    def parts_dir(self) -> Path:
        return self.out_dir / "parts"

    def part_path(self, index: int, suffix: str) -> Path:
        return self.parts_dir / f"part-{index:06d}{suffix}"

    def part_shards(self, index: int) -> list[int]:
        shards = self._shards_by_part.get(index)
        if shards is not None:
            return list(shards)
        if self.corpus_part(index) is not None:
            return []
        raise RunError(f"{self.parts_dir / 'spec.json'} has no part {index}")

    # Looked up by dict, built once per spec: every part, and the merge for every part, asks, and a scan of
    # the list each time was O(parts^2) (16.5 s per sweep at 42,375 parts). Not fields: spec.json is unchanged.
    @functools.cached_property
    def _shards_by_part(self) -> dict[int, list[int]]:
        return {entry[0]: entry[1:] for entry in self.parts}

    @functools.cached_property
    def _corpus_by_part(self) -> dict[int, tuple[int, str, list[int] | None]]:
        return {entry[0]: (entry[1], entry[2], entry[3]) for entry in self.corpus_parts}

    @property
    def suffix(self) -> str:
        return "-partial" if self.partial else ""

    def part_indices(self) -> list[int]:
        return [entry[0] for entry in self.parts] + [entry[0] for entry in self.corpus_parts]

    def corpus_part(self, index: int) -> tuple[int, str, list[int] | None] | None:
        """(source index, file, row groups) of a corpus part; None for a part of the run's shards."""
        return self._corpus_by_part.get(index)

    def part_done(self, index: int) -> PartMarker | None:
        """The part's done marker when it is valid for this spec, else None (the part is made again)."""
        try:
            marker = PartMarker.from_file(self.part_path(index, ".done.json"))
        except (OSError, RunError):  # none yet, or damaged or forged (a field of the wrong type)
            return None
        if marker.key != self.key or marker.shards != self.part_shards(index):
            return None
        # A part file damaged or deleted after its marker: redo the part rather than merge garbage.
        from hpcsynth.reduce.partcheck import part_is_whole

        try:
            if not part_is_whole(self, index, marker):
                return None
        except (OSError, KeyError, TypeError, ValueError, EOFError):
            return None
        return marker


def group_parts(shard_count: int, ready: list[int], part_shards: int) -> list[list[int]]:
    """Consecutive groups of the planned shards (ids 0..shard_count-1), keeping only ready ones; empty
    groups drop out."""
    ready_set = set(ready)
    parts = []
    for index, start in enumerate(range(0, shard_count, part_shards)):
        shards = [s for s in range(start, min(start + part_shards, shard_count)) if s in ready_set]
        if shards:
            parts.append([index, *shards])
    return parts


def bucket_count(manifest: dict, bucket_docs: int) -> int:
    # From the planned documents (the header's total: the sum of its rows'), not the ready ones, so a
    # partial and a full reduce share their parts.
    return max(1, math.ceil(int(manifest.get("documents", 0)) / bucket_docs))


def spec_key(fingerprint: str, reduce_settings: dict, tokenizer: dict, buckets: int) -> str:
    settings = {k: v for k, v in reduce_settings.items()
                if k not in ("format", "name", "max_file_mb", "backend")}  # these touch only the merge
    described = {k: v for k, v in tokenizer.items() if k != "backend"}  # parity makes backends equal
    payload = {"version": SPEC_VERSION, "fingerprint": fingerprint, "reduce": settings, "buckets": buckets,
               "tokenizer": described, "tokenizer_sha256": sha256_file(Path(tokenizer["tokenizer"]), follow=True)}
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


def settings_digest(config: Any) -> str:
    """What a part reads from the run's config (reduce:, validate:, the prompts, plan.max_line_bytes),
    hashed: prepare_reduce keeps it in the spec and every part compares, so a config edited while a
    reduce runs cannot give parts of two settings under one key."""
    merge_only = ("mix", "original_ratio", "format", "name", "max_file_mb")  # parts read these from the spec
    reduce = {k: v for k, v in dataclasses.asdict(config.reduce).items() if k not in merge_only}
    payload = {"reduce": reduce, "validate": dataclasses.asdict(config.validate),
               "prompts": list(config.prompts), "max_line_bytes": config.plan.max_line_bytes}
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


def write_spec(spec: ReduceSpec) -> None:
    atomic_write_json(spec.parts_dir / "spec.json", dataclasses.asdict(spec))


def read_spec(out_dir: Path) -> ReduceSpec:
    path = Path(out_dir) / "parts" / "spec.json"
    try:
        data = read_json(path)
        return ReduceSpec(**data)
    except FileNotFoundError:
        raise RunError(f"{out_dir} has no reduce in progress ({path} is missing); run `hpcsynth reduce RUN "
                       f"--out {out_dir}`") from None
    except (ValueError, TypeError):
        raise RunError(f"{path} is damaged; delete it and run `hpcsynth reduce RUN --out {out_dir}` again "
                       f"(finished parts are redone)") from None
