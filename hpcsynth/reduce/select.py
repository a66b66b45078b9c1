"""Which documents go into the training data, and in what order: the reducer's one place for choices.

Separate from tokenizing and writing, so that per-format validation and exact mixing can replace these
functions without touching parts.py or merge.py. Everything here works on one shard at a time.

- `ready_shards`: shards whose done marker matches the run and whose output is there, of its size;
  `verified_records` checks an output's checksum as a part reads it.
- `synthetic_documents`: a shard's records that pass validation by their prompt's format
  (hpcsynth/reduce/validate/), in record order, preamble stripped; the rest are rejects, by reason.
- The mix (which documents of which source, how often) is hpcsynth/reduce/mix/: chosen over the whole
  run at exact token shares, not shard by shard.
- `bucket_of`: the shuffle bucket of a document, from the seed and its id alone.
"""

from __future__ import annotations

import hashlib
import io
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from hpcsynth.config import Config
from hpcsynth.errors import RunError
from hpcsynth.files import jsonl_zst_records, read_json
from hpcsynth.rundir import RunDir, shard_name


@dataclass
class Document:
    kind: str  # "synthetic", "original" or "corpus" (a mix-in corpus of reduce.mix.sources)
    id: str  # record id (KEY/PROMPT) or the document key
    source_id: str  # the corpus's own id of the source document (for web data, its URL)
    text: str
    prompt: str = ""
    record: dict[str, Any] = field(default_factory=dict)  # the whole output record, for the text export
    source: int = -1  # its source's index in the reduce's mix (hpcsynth/reduce/mix/sources.py)
    repair: dict[str, Any] = field(default_factory=dict)  # a repaired run's record: its attempt (reduce/repaired.py)


def ready_shards(run: RunDir, partial: bool) -> tuple[list[int], list[dict]]:
    """Shards whose done marker matches the run and whose output has the recorded size (the checksum is
    checked by the part that reads it: verified_records)."""
    digest = run.fingerprint()
    valid: list[int] = []
    problems: list[dict[str, Any]] = []
    planned = run.shard_ids()
    for shard in planned:
        reason = _not_ready(run, shard, digest)
        if reason:
            problems.append({"shard": shard, "reason": reason})
        else:
            valid.append(shard)
    if problems and not partial:
        _refuse_while_running(run, len(problems), len(valid))
        first = problems[0]
        raise RunError(f"{len(problems)} of {len(planned)} shards are not ready (shard "
                       f"{shard_name(first['shard'])}: {first['reason']}); run `hpcsynth launch {run.root}` "
                       f"to finish them, or pass --partial to reduce what is done")
    if not valid:
        raise RunError(f"no shard of {run.root} is done; run `hpcsynth launch {run.root}` first")
    return valid, problems


def _refuse_while_running(run: RunDir, missing: int, ready: int) -> None:
    """Shards that live workers generate right now: say so, rather than asking for a launch."""
    from hpcsynth.status.collect import collect_status

    running = collect_status(run, slurm=False).running_shards
    if not running:
        return
    workers = sorted({r.worker for r in running})
    shown = ", ".join(shard_name(r.shard) for r in running[:5]) + (", ..." if len(running) > 5 else "")
    raise RunError(f"{len(running)} of the {missing} shards not yet done are being generated now ({shown}; by "
                   f"{len(workers)} worker(s): {', '.join(workers[:3])}{', ...' if len(workers) > 3 else ''}); "
                   f"reduce once they are done (`hpcsynth status {shlex.quote(str(run.root))} --watch` ends when "
                   f"they are), or pass --partial to reduce the {ready} done now")


def _not_ready(run: RunDir, shard: int, digest: str) -> str:
    marker_path = run.done_path(shard)
    if not marker_path.is_file():
        return "not done"
    try:
        marker = read_json(marker_path)
    except ValueError:
        return f"{marker_path.name} is not valid JSON"
    output = run.output_path(shard)
    if marker.get("fingerprint") != digest:
        return "done under another config fingerprint"
    if not output.is_file():
        return f"{output.name} is missing"
    # A stat, not a checksum: the part that reads the output checks its sha256 (verified_records). One
    # process hashing every output before any part started was hours of reading at 339,000 shards.
    size = output.stat().st_size
    if isinstance(marker.get("bytes"), int) and size != marker["bytes"]:
        return f"{output.name} is {size:,} bytes, its done marker says {marker['bytes']:,} (cut or changed since)"
    return ""


def verified_records(run: RunDir, shard: int) -> Iterator[dict]:
    """The records of a done shard's output, its bytes read once and checked against the sha256 in its
    done marker first: each reduce part checks the outputs it reads, so the checks run in parallel with
    the parts and a damaged output stops the part that needs it, after the parts before it are kept."""
    output = run.output_path(shard)
    data = output.read_bytes()
    marker = run.done_marker(shard) or {}
    if hashlib.sha256(data).hexdigest() != marker.get("sha256"):
        raise RunError(f"{output} differs from its done marker's sha256 (damaged or changed after shard "
                       f"{shard_name(shard)} was done); run `hpcsynth launch {shlex.quote(str(run.root))}` to set "
                       f"it aside and generate it again, then reduce again (finished parts are kept)")
    return jsonl_zst_records(io.BytesIO(data))


def prompt_formats(manifest: dict) -> dict[str, str]:
    """Each prompt's declared format, from the manifest's prompts rows (plan wrote them)."""
    return {str(p.get("name")): str(p.get("format", "free")) for p in manifest.get("prompts", [])
            if isinstance(p, dict)}


def synthetic_documents(run: RunDir, shard: int, config: Config, rejects: list[dict],
                        formats: dict[str, str], tally: dict[str, dict] | None = None,
                        screen: Any = None, repairs: Any = None) -> list[Document]:
    """The shard's records that pass validation (hpcsynth/reduce/validate/), with their cleaned text.
    `repairs`: the shard's records generated again by `hpcsynth repair` (repaired.RepairIndex), None for none.

    Refused records go to `rejects` with their prompt, check and reason; `tally` counts, per prompt,
    accepted records and refused (and, under validate.action: keep, flagged) ones by check, and those
    holding benchmark text by cause and benchmark. `screen`: reduce.decontaminate's (contamination.Screen).
    """
    from hpcsynth.files import read_jsonl_zst
    from hpcsynth.reduce.validate import reason_code, validate_records
    from hpcsynth.reduce.validate.contamination import ShardSources, add_hit

    keep = []
    tally = {} if tally is None else tally
    if screen is not None:  # a contaminated record's cause is read from its source document, in the shard
        screen = screen.for_sources(ShardSources(lambda: read_jsonl_zst(run.shard_path(shard))))
    # A reduce of some prompts only (reduce/view.py) leaves the others out before they are checked.
    records = (r for r in verified_records(run, shard) if str(r.get("prompt", "")) in config.prompts)
    for record, (ok, reason, text, _, hit) in validate_records(
            ((r, formats.get(str(r.get("prompt", "")), "free")) for r in records), config, screen):
        prompt = str(record.get("prompt", ""))
        counts = tally.setdefault(prompt, {"accepted": 0, "rejected": {}, "flagged": {}})
        if hit is not None:
            add_hit(counts, hit)
        if not ok and repairs is not None:  # generated again by `hpcsynth repair`: its first passing attempt
            from hpcsynth.reduce.repaired import apply_repair

            record, ok, reason, text = apply_repair(repairs, record, reason, text, counts)
        if reason:
            bucket = counts["flagged" if ok else "rejected"]
            bucket[reason_code(reason)] = bucket.get(reason_code(reason), 0) + 1
        if not ok:
            rejects.append({"id": record.get("id"), "shard": shard, "prompt": prompt,
                            "check": reason_code(reason), "reason": reason})
            continue
        counts["accepted"] += 1
        if text != record["text"]:  # a chatty preamble or closing line went (validate.preamble: strip)
            counts["preamble_stripped"] = counts.get("preamble_stripped", 0) + 1
            record = {**record, "text": text}
        keep.append(Document("synthetic", record["id"], str(record.get("source_id", "")), text, prompt, record,
                             repair=_provenance(record) if repairs is not None else {}))
    return keep


def add_tallies(total: dict[str, dict], part: dict[str, dict]) -> dict[str, dict]:
    """Sum per-prompt validation counts (parts into the report)."""
    from hpcsynth.reduce.repaired import add_repaired
    from hpcsynth.reduce.validate.contamination import add_contamination

    for prompt, counts in part.items():
        into = total.setdefault(prompt, {"accepted": 0, "rejected": {}, "flagged": {}})
        into["accepted"] += counts.get("accepted", 0)
        add_contamination(into, counts.get("contamination") or {})
        add_repaired(into, counts)
        if counts.get("preamble_stripped"):
            into["preamble_stripped"] = into.get("preamble_stripped", 0) + counts["preamble_stripped"]
        for kind in ("rejected", "flagged"):
            for check, n in counts.get(kind, {}).items():
                into[kind][check] = into[kind].get(check, 0) + n
    return total


def _provenance(record: dict) -> dict[str, Any]:
    from hpcsynth.reduce.repaired import provenance

    return provenance(record)


def bucket_of(doc_id: str, seed: int, buckets: int) -> int:
    if buckets <= 1:
        return 0
    digest = hashlib.blake2b(f"{seed}:{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % buckets
