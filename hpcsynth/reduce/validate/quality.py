"""`hpcsynth validate RUN`: the checks alone, over every done shard, into a quality report per prompt.

No tokenizer and no output files but RUN/validate/report.json, so thresholds can be tuned before a
reduce. Shards are read one at a time and only counters, a fixed-size n-gram sketch and three samples
per prompt and check are kept: memory does not grow with the run.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from hpcsynth.config import Config
from hpcsynth.files import atomic_write_json, read_jsonl_zst
from hpcsynth.reduce.validate import Verdict, reason_code, validate_records
from hpcsynth.reduce.validate.benchmarks import build_table, resolve_benchmarks
from hpcsynth.reduce.validate.contamination import Screen, ShardSources, add_hit
from hpcsynth.reduce.validate.ngrams import DistinctSketch, word_ids
from hpcsynth.rundir import RunDir, shard_name

SAMPLES = 3  # records kept per prompt and check, for a person to judge the check by
SAMPLE_CHARS = 2000  # of each sample's text: enough to see the shape, bounded for a report


@dataclass
class PromptQuality:
    format: str
    records: int = 0
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    flagged: dict[str, int] = field(default_factory=dict)
    truncated: int = 0
    preamble_stripped: int = 0  # accepted records whose chatty first or last line validate.preamble strips
    output_chars: int = 0
    input_chars: int = 0
    samples: dict[str, list[dict]] = field(default_factory=dict)
    sketch: DistinctSketch = field(default_factory=DistinctSketch)
    # Records holding benchmark text (reduce.decontaminate): by cause (copied, written) and benchmark.
    tally: dict[str, Any] = field(default_factory=dict)

    def add(self, record: dict, verdict: Verdict, shard: int, config: Config) -> None:
        self.records += 1
        ok, reason, text, ids = verdict.ok, verdict.reason, verdict.text, verdict.ids
        if verdict.hit is not None:
            add_hit(self.tally, verdict.hit)
        self.truncated += record.get("finish_reason") == "length"
        raw: str = record["text"] if isinstance(record.get("text"), str) else ""
        if isinstance(record.get("input_chars"), int) and record["input_chars"] > 0:
            self.output_chars += len(raw)
            self.input_chars += record["input_chars"]
        if reason:
            check = reason_code(reason)
            counts = self.flagged if ok else self.rejected
            counts[check] = counts.get(check, 0) + 1
            kept = self.samples.setdefault(check, [])
            if len(kept) < SAMPLES:
                kept.append({"id": record.get("id"), "shard": shard_name(shard), "reason": reason,
                             "text": raw[:SAMPLE_CHARS], "chars": len(raw)})
        if ok:
            self.accepted += 1
            self.preamble_stripped += text != raw
            self.sketch.add(word_ids(text) if ids is None else ids, config.validate.diversity_n)

    def summary(self) -> dict[str, Any]:
        distinct = self.sketch.ratio()
        return {"format": self.format, "records": self.records, "accepted": self.accepted,
                "rejected": dict(sorted(self.rejected.items(), key=lambda kv: -kv[1])),
                "flagged": dict(sorted(self.flagged.items(), key=lambda kv: -kv[1])),
                "preamble_stripped": self.preamble_stripped,
                "accepted_share": round(self.accepted / self.records, 4) if self.records else None,
                "length_ratio": round(self.output_chars / self.input_chars, 4) if self.input_chars else None,
                "truncation_rate": round(self.truncated / self.records, 4) if self.records else None,
                "distinct_ngrams": round(distinct, 4) if distinct is not None else None,
                **({"contamination": self.tally["contamination"]} if self.tally else {}),
                "samples": self.samples}


def validate_run(run: RunDir, config: Config, config_source: str = "", write: bool = True) -> dict[str, Any]:
    """Check every record of the done shards; write RUN/validate/report.json and return it."""
    from hpcsynth.reduce.select import prompt_formats, ready_shards

    started = time.monotonic()
    manifest = run.manifest()
    shards, skipped = ready_shards(run, partial=True)
    formats = prompt_formats(manifest)
    prompts: dict[str, PromptQuality] = {}
    screen = benchmark_screen(config)
    for shard in shards:
        records = read_jsonl_zst(run.output_path(shard))
        items = ((r, formats.get(str(r.get("prompt", "")), "free")) for r in records)
        # A contaminated record's cause is read from its source document, in the run's shard.
        sources = ShardSources(lambda shard=shard: read_jsonl_zst(run.shard_path(shard)))  # type: ignore[misc]
        for record, verdict in validate_records(items, config, screen.for_sources(sources) if screen else None):
            prompt = str(record.get("prompt", ""))
            if prompt not in prompts:
                prompts[prompt] = PromptQuality(formats.get(prompt, "free"))
            prompts[prompt].add(record, verdict, shard, config)
    report = {
        "run": str(run.root), "fingerprint": run.fingerprint(), "config": config_source or str(run.config_path),
        "action": config.validate.action, "settings": validation_settings(config),
        "shards_checked": len(shards), "shards_skipped": skipped,
        "records": sum(q.records for q in prompts.values()),
        "accepted": sum(q.accepted for q in prompts.values()),
        "diversity_n": config.validate.diversity_n,
        **({"decontamination": screen.table.summary()} if screen else {}),
        "prompts": {name: prompts[name].summary() for name in sorted(prompts)},
        "seconds": round(time.monotonic() - started, 2),
    }
    if write:
        write_report(run, report)
    return report


def benchmark_screen(config: Config) -> Screen | None:
    """reduce.decontaminate's table, built in this process (one validate reads the benchmarks once)."""
    resolved = resolve_benchmarks(config.reduce.decontaminate)
    if resolved is None:
        return None
    return Screen(build_table(resolved, config.plan.max_line_bytes))


def write_report(run: RunDir, report: dict[str, Any], path: Path | None = None) -> None:
    atomic_write_json(path or run.validate_report_path, report)


def whatif_path(run: RunDir, settings: dict[str, Any]) -> Path:
    """Where `validate RUN --config FILE` writes a report under settings other than the run's own:
    RUN/validate/whatif-HASH.json, HASH of the settings. Never RUN/validate/report.json, which the dataset
    card quotes (reduce/card.py): a what-if must not put stricter counts beside a reduce's own."""
    digest = hashlib.sha256(orjson.dumps(settings, option=orjson.OPT_SORT_KEYS)).hexdigest()[:12]
    return run.validate_report_path.with_name(f"whatif-{digest}.json")


def validation_settings(config: Config) -> dict[str, Any]:
    """What decides which records pass (the report's "settings"), as JSON gives it back: equal settings
    compare equal whether read from a report or made from a config."""
    import dataclasses

    settings = {**dataclasses.asdict(config.validate), "reduce.min_chars": config.reduce.min_chars,
                "reduce.drop_truncated": config.reduce.drop_truncated}
    resolved = resolve_benchmarks(config.reduce.decontaminate)
    if resolved is not None:  # only when set: the settings of reports made before it stay equal
        settings["reduce.decontaminate"] = resolved
    return orjson.loads(orjson.dumps(settings))

