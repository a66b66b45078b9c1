"""Repaired records in the reduce: for a record validation refused, the first attempt of `hpcsynth repair`
that passes.

`hpcsynth repair` (hpcsynth/repair/) generates refused records again in sub-runs, RUN/repair/attempt-K/PROMPT/,
each an ordinary run directory whose documents keep the run's keys, so that a record there has the id of the
one it repairs. Reduce stands below repair and reads them by the run directory's paths alone:

- `repair_state(run)`, once per reduce (prepare_reduce): every sub-run's done shards with their checksums and,
  from its manifest's "repair" header, which main shards each sub-run shard's documents came from. It goes
  into the spec (and its digest into the spec key), so a repair finished after a reduce redoes its parts, and
  every part reads exactly the sub-run outputs the reduce started with.
- `RepairIndex.for_shard`: the repair records of one main shard, validated as its records are, in a batch.
  `choose` gives a refused record's first passing attempt, with the attempt number and the reasons of those
  before it ("attempt", "repaired_from"). Memory: the repair records of one main shard (the refused ones only).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from hpcsynth.config import Config
from hpcsynth.errors import RunError
from hpcsynth.files import jsonl_zst_records, read_json
from hpcsynth.rundir import RunDir, shard_name


def main_shard_of(record_id: str) -> int:
    """The main run's shard of a record or document key (KEY = SHARD-INDEX, kept by every repair sub-run)."""
    return int(record_id.split("-", 1)[0])


def repair_header(sub: RunDir) -> dict[str, Any] | None:
    """A sub-run's "repair" manifest header (attempt, prompt, spans, ...); None when it has none or is unreadable."""
    try:
        header = read_json(sub.manifest_path).get("repair")
    except (OSError, ValueError, AttributeError):
        return None
    return header if isinstance(header, dict) and isinstance(header.get("spans"), list) else None


def repair_state(run: RunDir) -> dict[str, Any]:
    """What the reduce takes from RUN/repair: per sub-run its attempt, prompt, folder (relative to RUN),
    spans (first and last main shard of each of its shards) and done shards' sha256; {} without any."""
    subruns = []
    for attempt, prompt, sub in run.repair_runs():
        header = repair_header(sub)
        if header is None:
            continue
        try:
            digest = sub.fingerprint()
        except RunError:
            continue  # a sub-run being planned or broken: nothing of it is done
        done = {}
        for shard in sorted(sub.done_ids()):
            marker = sub.done_marker(shard)
            if marker is not None and sub.is_done(shard, digest):
                done[str(shard)] = str(marker.get("sha256", ""))
        if done:
            subruns.append({"attempt": attempt, "prompt": prompt, "dir": str(sub.root.relative_to(run.root)),
                            "fingerprint": digest, "spans": header["spans"], "done": done})
    if not subruns:
        return {}
    digest = hashlib.sha256(orjson.dumps(subruns, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return {"digest": digest, "subruns": subruns}


@dataclass
class Choice:
    record: dict  # the repaired record, with "attempt" and "repaired_from"
    text: str  # its text to use (preamble stripped as validation says)
    reason: str  # what validate.action: keep flagged in it, else ""


@dataclass
class RepairIndex:
    """The repair records of one main shard, each attempt's verdict computed once."""

    verdicts: dict[str, dict[int, tuple[dict, bool, str, str]]] = field(default_factory=dict)

    @classmethod
    def for_shard(cls, run: RunDir, shard: int, state: dict[str, Any], config: Config, formats: dict[str, str],
                  screen: Any = None) -> RepairIndex:
        from hpcsynth.reduce.validate import validate_records

        records: list[tuple[int, dict]] = []
        for entry in state.get("subruns", []):
            if entry["prompt"] not in config.prompts:
                continue
            sub = RunDir(run.root / entry["dir"])
            for number in _covering(entry, shard):
                sha = entry["done"].get(str(number))
                if sha is None:
                    continue
                records += [(entry["attempt"], r) for r in _verified(sub, number, sha)
                            if main_shard_of(str(r.get("id", ""))) == shard]
        index = cls()
        items = ((r, formats.get(str(r.get("prompt", "")), "free")) for _, r in records)
        for (attempt, _), (record, verdict) in zip(records, validate_records(items, config, screen)):
            index.verdicts.setdefault(str(record["id"]), {})[attempt] = (record, verdict.ok, verdict.reason,
                                                                          verdict.text)
        return index

    def choose(self, record_id: str, reason: str) -> Choice | None:
        """The first attempt of a refused record (refused for `reason`) that passes, or None."""
        from hpcsynth.reduce.validate import reason_code

        before = [{"attempt": 0, "check": reason_code(reason), "reason": reason}]
        for attempt, (record, ok, why, text) in sorted(self.verdicts.get(record_id, {}).items()):
            if ok:
                return Choice({**record, "attempt": attempt, "repaired_from": before}, text, why)
            before = before + [{"attempt": attempt, "check": reason_code(why), "reason": why}]
        return None


def apply_repair(index: RepairIndex, record: dict, reason: str, text: str,
                 counts: dict[str, Any]) -> tuple[dict, bool, str, str]:
    """(record, goes in, reason, text) for a refused record: its first passing attempt when there is one,
    counted per prompt under "repaired" (by the original's check) and "repaired_by_attempt"; else as it was."""
    from hpcsynth.reduce.validate import reason_code

    chosen = index.choose(str(record.get("id", "")), reason)
    if chosen is None:
        return record, False, reason, text
    by_check = counts.setdefault("repaired", {})
    by_check[reason_code(reason)] = by_check.get(reason_code(reason), 0) + 1
    by_attempt = counts.setdefault("repaired_by_attempt", {})
    key = str(chosen.record["attempt"])
    by_attempt[key] = by_attempt.get(key, 0) + 1
    return chosen.record, True, chosen.reason, chosen.text


def provenance(record: dict) -> dict[str, Any]:
    """What mix.docs.jsonl says of a record of a repaired run: its attempt (0: the original) and, for a
    repaired one, the reasons of the attempts before it."""
    if "repaired_from" not in record:
        return {"attempt": 0}
    return {"attempt": record["attempt"], "repaired_from": record["repaired_from"]}


def add_repaired(into: dict[str, Any], counts: dict[str, Any]) -> None:
    """Sum a part's "repaired" and "repaired_by_attempt" counts of one prompt into the report's."""
    for kind in ("repaired", "repaired_by_attempt"):
        for key, n in (counts.get(kind) or {}).items():
            bucket = into.setdefault(kind, {})
            bucket[key] = bucket.get(key, 0) + n


def _covering(entry: dict[str, Any], shard: int) -> list[int]:
    """The sub-run shards whose documents include main shard `shard`: a binary search, since a sub-run's
    documents are in main shard order (its spans' firsts and lasts never go down), not a pass over them all
    for every main shard of every part."""
    import bisect

    spans = entry["spans"]
    lasts = entry.get("_lasts")  # each shard's last main shard, listed once per spec read (per part)
    if lasts is None:
        lasts = entry["_lasts"] = [int(span[1]) for span in spans]
    found = []
    for number in range(bisect.bisect_left(lasts, shard), len(spans)):
        if spans[number][0] > shard:
            break
        found.append(number)
    return found


def _verified(sub: RunDir, shard: int, sha256: str) -> list[dict]:
    """A sub-run shard's records, its bytes checked against the checksum the reduce started with."""
    output = sub.output_path(shard)
    try:
        data = output.read_bytes()
    except FileNotFoundError:
        data = b""
    if hashlib.sha256(data).hexdigest() != sha256:
        raise RunError(f"{output} changed since this reduce started (repair shard {shard_name(shard)} of "
                       f"{_short(sub.root)}); run `hpcsynth reduce` again: it redoes the parts with the repairs "
                       f"as they are now")
    return list(jsonl_zst_records(io.BytesIO(data)))


def _short(path: Path) -> str:
    return "/".join(path.parts[-3:])


__all__ = ["Choice", "RepairIndex", "add_repaired", "apply_repair", "main_shard_of", "provenance", "repair_header",
           "repair_state"]
