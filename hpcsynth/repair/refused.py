"""Which records are still refused: one attempt's outputs validated, the refused ones' documents streamed out.

Scan K validates the outputs of attempt K (attempt 0: the run's own outputs, every done shard; attempt K:
its sub-runs, RUN/repair/attempt-K/*) as the reduce does (hpcsynth/reduce/validate/, the run's validate:
settings, no benchmark screen), and counts per prompt the records checked, passed and refused by check.
A record refused by a check of repair.checks is a candidate of attempt K+1: its document (read from the
shard it came from) goes to that prompt's SubRunWriter, in main shard order. Memory: one shard at a time.

A scan's counts are kept in RUN/repair/validated-K.json with the key of what decided them (the outputs'
checksums, the validation settings, repair.checks): a repair run again with nothing changed reads them
back instead of validating the whole run again.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from hpcsynth.config import Config
from hpcsynth.config.sections import VALIDATE_CHECKS
from hpcsynth.files import atomic_write_json, read_json, read_jsonl_zst
from hpcsynth.reduce.select import verified_records
from hpcsynth.reduce.validate import reason_code, validate_records
from hpcsynth.repair.subrun import SubRunWriter, ids_digest
from hpcsynth.rundir import RunDir


def repairable(code: str, fmt: str, checks: tuple[str, ...]) -> bool:
    """Whether a refusal by check `code` (of a prompt of format `fmt`) is one repair.checks names."""
    return code in checks or ("format" in checks and code in VALIDATE_CHECKS and code.startswith(f"{fmt}_"))


@dataclass
class Scan:
    """Per prompt: records checked, passed, refused by check, and the candidates of the next attempt."""

    attempt: int  # the attempt whose outputs were validated (0: the run's own)
    key: str
    by_prompt: dict[str, dict[str, Any]] = field(default_factory=dict)

    def prompt(self, name: str) -> dict[str, Any]:
        return self.by_prompt.setdefault(name, {"records": 0, "passed": 0, "refused": {}, "candidates": 0,
                                                "candidates_sha256": ids_digest([])})

    def to_dict(self) -> dict[str, Any]:
        return {"attempt": self.attempt, "key": self.key, "by_prompt": self.by_prompt}


def scan_path(run: RunDir, attempt: int) -> Any:
    return run.repair_dir / f"validated-{attempt}.json"


def cached_scan(run: RunDir, attempt: int, key: str) -> Scan | None:
    """Scan `attempt`'s counts as kept, when made from the same outputs and settings; else None."""
    try:
        data = read_json(scan_path(run, attempt))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != key or not isinstance(data.get("by_prompt"), dict):
        return None
    return Scan(attempt, key, data["by_prompt"])


def sources(run: RunDir, attempt: int) -> list[tuple[RunDir, int]]:
    """(run directory, shard) of every output attempt `attempt` holds, in order (sub-runs by prompt)."""
    if attempt == 0:
        return [(run, shard) for shard in run.shard_ids()]
    return [(sub, shard) for number, _, sub in run.repair_runs() if number == attempt for shard in sub.shard_ids()]


def scan_key(run: RunDir, attempt: int, config: Config, formats: dict[str, str]) -> str:
    """What decides scan `attempt`: each output's checksum (its done marker's), the settings that validate."""
    settings = {"validate": dataclasses.asdict(config.validate), "min_chars": config.reduce.min_chars,
                "drop_truncated": config.reduce.drop_truncated, "checks": list(config.repair.checks),
                "formats": formats, "prompts": list(config.prompts)}
    outputs = []
    for folder, shard in sources(run, attempt):
        marker = folder.done_marker(shard) or {}
        outputs.append([str(folder.root.relative_to(run.root)), shard, marker.get("sha256")])
    payload = {"attempt": attempt, "settings": settings, "outputs": outputs}
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


def scan_attempt(run: RunDir, attempt: int, config: Config, formats: dict[str, str],
                 writer_for: Callable[[str], SubRunWriter | None] | None = None) -> Scan:
    """Validate attempt `attempt`'s outputs; hand each candidate's document to writer_for(prompt) (None: count
    only). Keeps the counts in RUN/repair/validated-K.json."""
    scan = Scan(attempt, scan_key(run, attempt, config, formats))
    candidates: dict[str, list[str]] = {}
    checks = tuple(config.repair.checks)
    for folder, shard in sources(run, attempt):
        wanted: list[tuple[dict, dict]] = []  # (record, why) of this shard's candidates
        records = (r for r in verified_records(folder, shard) if str(r.get("prompt", "")) in config.prompts)
        items = ((r, formats.get(str(r.get("prompt", "")), "free")) for r in records)
        for record, verdict in validate_records(items, config):
            prompt = str(record.get("prompt", ""))
            counts = scan.prompt(prompt)
            counts["records"] += 1
            if verdict.ok:
                counts["passed"] += 1
                continue
            code = reason_code(verdict.reason)
            counts["refused"][code] = counts["refused"].get(code, 0) + 1
            if repairable(code, formats.get(prompt, "free"), checks):
                wanted.append((record, {"id": record["id"], "prompt": prompt, "check": code,
                                        "reason": verdict.reason}))
        if not wanted:
            continue
        documents = _documents(folder, shard)
        for record, why in wanted:
            key = str(record["id"]).rsplit("/", 1)[0]
            doc = documents.get(key)
            if doc is None:
                continue  # not in its shard (a hand-edited output): nothing to generate it from
            counts = scan.prompt(why["prompt"])
            counts["candidates"] += 1
            candidates.setdefault(why["prompt"], []).append(why["id"])
            writer = writer_for(why["prompt"]) if writer_for else None
            if writer is not None:
                writer.add(doc, {**why, "shard": shard})
    for prompt, ids in candidates.items():
        scan.prompt(prompt)["candidates_sha256"] = ids_digest(ids)
    run.repair_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(scan_path(run, attempt), scan.to_dict())
    return scan


def _documents(folder: RunDir, shard: int) -> dict[str, dict]:
    return {str(d.get("key")): d for d in _read(folder, shard)}


def _read(folder: RunDir, shard: int) -> Iterator[dict]:
    return read_jsonl_zst(folder.shard_path(shard))


__all__ = ["Scan", "cached_scan", "repairable", "scan_attempt", "scan_key", "sources"]
