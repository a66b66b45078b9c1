"""The reduce report (DIR/report.json, report-partial.json for --partial): what was written, from what.

It is also what `hpcsynth verify DIR` checks the files against: every file's size and sha256, the
sequence and token counts, the vocabulary size and the EOS id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpcsynth.files import atomic_write_json, sha256_file
from hpcsynth.reduce.marker import PartMarker
from hpcsynth.reduce.select import add_tallies
from hpcsynth.reduce.spec import ReduceSpec


def report_path(out_dir: Path, partial: bool) -> Path:
    return Path(out_dir) / ("report-partial.json" if partial else "report.json")


def write_report(spec: ReduceSpec, markers: dict[int, PartMarker], output: Any, files: list[Path],
                 text: dict | None, rejects: Path | None, mix: dict[str, Any],
                 merge_cpu_seconds: float = 0.0) -> dict[str, Any]:
    return save_report(spec, build_report(spec, markers, output, files, text, rejects, mix, merge_cpu_seconds))


def save_report(spec: ReduceSpec, data: dict[str, Any]) -> dict[str, Any]:
    atomic_write_json(report_path(spec.out_dir, spec.partial), data)
    return data


def build_report(spec: ReduceSpec, markers: dict[int, PartMarker], output: Any, files: list[Path],
                 text: dict | None, rejects: Path | None, mix: dict[str, Any],
                 merge_cpu_seconds: float = 0.0) -> dict[str, Any]:
    total = {f"{kind}_{what}": sum(row[what] for row in mix["sources"] if row["kind"] == kind)
             for kind in ("synthetic", "original", "corpus") for what in ("documents", "tokens")}
    total["rejected_records"] = sum(m.rejected_records for m in markers.values())
    by_source = {row["name"]: row["tokens"] for row in mix["sources"]}
    weights = {kind: sum(row["weight"] for row in mix["sources"] if row["kind"] == kind)
               for kind in ("synthetic", "original")}
    validation: dict[str, dict] = {}
    for marker in markers.values():
        add_tallies(validation, marker.validation)
    syn, orig = total["synthetic_tokens"], total["original_tokens"]
    backends = sorted({m.backend for m in markers.values()})
    made = spec.run_info.get("settings_from") or {}
    first = output.prefixes[0]
    data = {
        "run": spec.run, "fingerprint": spec.run_info["fingerprint"], "partial": spec.partial,
        "format": spec.format, "name": spec.name, "prefix": str(spec.out_dir / first["prefix"]),
        "prefixes": [str(spec.out_dir / p["prefix"]) for p in output.prefixes],
        "bin": Path(first["files"][0]).name, "idx": Path(first["files"][-1]).name if spec.format == "megatron" else "",
        "tokenizer": spec.tokenizer["tokenizer"], "eos_token": spec.tokenizer["eos_token"],
        "eos_id": spec.tokenizer["eos_id"], "eos_source": spec.tokenizer["eos_source"],
        "bos_ids": spec.tokenizer["bos_ids"], "vocab_size": spec.tokenizer["vocab_size"],
        "dtype": first["dtype"], "backend": "+".join(backends),
        "backend_note": spec.backend_note or "; ".join(sorted({m.backend_note for m in markers.values()} - {""})),
        "shards_used": sum(len(p) - 1 for p in spec.parts), "shards_skipped": spec.shards_skipped,
        **total, "tokens_by_source": dict(sorted(by_source.items())),
        # Original tokens per synthetic token, asked (from the weights) and written.
        "original_ratio_target": round(weights["original"] / weights["synthetic"], 6) if weights["synthetic"] else None,
        "original_ratio": round(orig / syn, 4) if syn else None,
        # True when the run's originals had fewer tokens than their share (reduce.mix.too_few decided).
        "original_pool_exhausted": "run_originals" in mix["policy"]["short"],
        # What mix.json holds: the shares asked and written per source, and the policy's notes.
        "mix": mix,
        "sequences": output.sequences, "tokens": output.tokens,
        "max_token": max(m.max_token for m in markers.values()),
        "parts": len(markers), "buckets": spec.buckets,
        # Where the CPU time went: parts run in parallel (--jobs, Slurm array), the merge does not.
        "cpu_seconds": {"parts": round(sum(m.cpu_seconds for m in markers.values()), 2),
                        "merge": round(merge_cpu_seconds, 2)},
        "files": [{"path": f.name, "bytes": f.stat().st_size, "sha256": sha256_file(f)} for f in files],
        "token_files": output.prefixes, "docs": f"{spec.name}.docs.jsonl",
        "rejects": rejects.name if rejects else "", "text_export": text,
        # Per prompt: records accepted, refused by check, and (validate.action: keep) flagged by check.
        "validation": dict(sorted(validation.items())), "validate_action": spec.run_info.get("validate_action", ""),
        # Which reduce settings made this mix (reduce/settings.py): DIR/reduce-config.yaml, from the run's
        # config or a `reduce --config FILE`, and the keys that differ from the run's config.
        "reduce_settings": {"file": f"reduce-config{spec.suffix}.yaml" if "reduce_config" in spec.run_info else "",
                            "config": made.get("config", ""), "changed": made.get("changed", [])},
    }
    if spec.decontaminate:
        data["decontamination"] = decontamination(spec, validation, mix)
    return data


def decontamination(spec: ReduceSpec, validation: dict[str, dict], mix: dict[str, Any]) -> dict[str, Any]:
    """What reduce.decontaminate left out: per prompt, records refused (copied from their source document,
    or written by the generator) by benchmark; per mix source, the documents dropped; the benchmarks."""
    from hpcsynth.reduce.validate.benchmarks import load_table

    table = load_table(spec.parts_dir, spec.decontaminate["table"])
    benchmarks = (table.summary()["benchmarks"] if table is not None else
                  [{k: f[k] for k in ("name", "bytes", "sha256")} for f in spec.decontaminate["files"]])
    synthetic = {}
    for prompt, counts in validation.items():
        found = counts.get("contamination") or {"copied": 0, "written": 0, "benchmarks": {}}
        synthetic[prompt] = {"refused": found["copied"] + found["written"], **found}
    return {"ngram": spec.decontaminate["ngram"], "text_keys": spec.decontaminate["text_keys"],
            "benchmarks": benchmarks, "ngrams": len(table) if table is not None else None,
            "synthetic": synthetic,
            "documents": {row["name"]: row.get("contaminated_documents", 0) for row in mix["sources"]
                          if row["kind"] != "synthetic"}}
