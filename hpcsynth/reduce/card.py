"""The dataset card: DIR/README.md for each reduce output (and DIR/text/README.md for its Parquet text).

Written by the merge after the token files and before report.json (which stays last). The YAML front
matter is what the Hugging Face Hub reads (license, language, task_categories, tags, size_categories,
configs with their data files); it is produced by yaml.safe_dump, so no name in a run (a model path, a
source from the mix) can break it. The text says what a reader needs to trust and reuse the data:
generator and revision, prompts and their hashes, sampling, sources and their licences as the config
states them (card: section), the mix (DIR/mix.json when the reduce mixed sources), token counts, the
quality checks, and what the run cost (hpcsynth/status/account.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import yaml

from hpcsynth.files import atomic_write_bytes
from hpcsynth.reduce.card_repair import repair_cost, repair_section
from hpcsynth.reduce.card_sections import (cell, code, cost_section, mix_section, quality_section, sources_section,
                                           tokens_section)

SIZES = ((1e3, "n<1K"), (1e4, "1K<n<10K"), (1e5, "10K<n<100K"), (1e6, "100K<n<1M"), (1e7, "1M<n<10M"),
         (1e8, "10M<n<100M"), (1e9, "100M<n<1B"), (1e10, "1B<n<10B"), (1e11, "10B<n<100B"), (1e12, "100B<n<1T"))


def size_category(rows: int) -> str:
    return next((label for limit, label in SIZES if rows < limit), "n>1T")


def write_cards(spec, report: dict[str, Any]) -> list[Path]:
    """README.md (README-partial.md for a partial reduce) in DIR, and README.md in the text export's folder."""
    info = card_info(spec, report)
    text = report.get("text_export")
    written = []
    root = spec.out_dir / f"README{spec.suffix}.md"
    atomic_write_bytes(root, render_card(info, f"{text['dir']}/train-*.parquet" if text else None).encode())
    written.append(root)
    if text:
        inner = spec.out_dir / text["dir"] / "README.md"
        atomic_write_bytes(inner, render_card(info, "train-*.parquet").encode())
        written.append(inner)
    return written


def card_info(spec, report: dict[str, Any]) -> dict[str, Any]:
    """Everything the card says, from the spec (the run as prepare saw it), the report, DIR/mix.json,
    RUN/validate/report.json and the run's account."""
    run_info = spec.run_info
    return {**run_info, "name": spec.name, "partial": spec.partial, "report": report,
            # The mix of THIS reduce (the report holds mix.json's object): a file read back could be the
            # full reduce's mix.json under a --partial card, or one an older reduce left.
            "mix": report.get("mix") or _read_json(spec.out_dir / f"mix{spec.suffix}.json"),
            "mix_file": f"mix{spec.suffix}.json",
            **_validate_report(Path(spec.run), run_info),
            "account": _account(spec.run, run_info.get("card", {}).get("gpu_hour_price", 0.0)),
            "repair_cost": repair_cost(spec.run) if getattr(spec, "repair", None) else None}


def render_card(info: dict[str, Any], data_files: str | None) -> str:
    report = info["report"]
    card = info.get("card") or {}
    rows = (report.get("text_export") or {}).get("rows") or report.get("sequences", 0)
    prompts = [p.get("name") for p in info.get("prompt_table", [])] or list(info.get("prompts", []))
    front: dict[str, Any] = {
        "license": card.get("license") or "other",
        "language": list(card.get("language") or ["en"]),
        "task_categories": ["text-generation"],
        "tags": ["synthetic", "hpcsynth", "pretraining", *[str(p) for p in prompts]],
        "size_categories": [size_category(int(rows))],
        "pretty_name": f"{info['name']}: synthetic rephrasings",
    }
    if data_files:
        front["configs"] = [{"config_name": "default", "data_files": [{"split": "train", "path": data_files}]}]
    partial = " This is a PARTIAL reduce: not every shard of the run was done." if info.get("partial") else ""
    body = [
        f"# {cell(info['name'])}: synthetic rephrasings\n",
        f"Web documents rephrased by {code(model_name(info.get('model', '')))} with the prompts "
        f"{cell(', '.join(map(str, prompts))) or '-'}, "
        f"mixed with original text and tokenized by hpcsynth: {report.get('sequences', 0):,} sequences, "
        f"{report.get('tokens', 0):,} tokens.{partial}\n",
        _generation_section(info), _prompts_section(info), sources_section(info), mix_section(info),
        tokens_section(report), quality_section(info), repair_section(info), _settings_section(info),
        cost_section(info.get("account"), _cost_scope(info)),
        _files_section(report),
        f"Run fingerprint: {code(info.get('fingerprint', ''))}.\n",
    ]
    return "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---\n\n" + "\n".join(
        part for part in body if part)


def _generation_section(info: dict[str, Any]) -> str:
    sampling = info.get("sampling") or {}
    said = ", ".join(f"{k} {v}" for k, v in sampling.items() if k != "extra")
    extra = sampling.get("extra")
    rows = [("generator", code(model_name(info.get("model", "")))),
            ("revision", code(info["revision"]) if info.get("revision") else "not pinned (model.revision empty)"),
            ("engine", cell(info.get("engine", ""))), ("sampling", cell(said + (f"; extra {extra}" if extra else ""))),
            ("per-record seed", "derived from sampling.seed, the source id and the prompt: reruns sample the same"),
            ("input cut", f"documents longer than {info['max_input_chars']:,} characters were cut at a line break"
             if info.get("max_input_chars") else "")]
    return "## Generation\n\n| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows if v) + "\n"


def _cost_scope(info: dict[str, Any]) -> str:
    """A grid dataset is one prompt (and one mix-in) of its generator's run, which is what was billed."""
    view = info.get("view") or {}
    if not view.get("prompts"):
        return ""
    run_prompts = info.get("run_prompts") or []
    return (f"The cost is that of the generator's whole run ({cell(', '.join(map(str, run_prompts))) or 'all its prompts'}"
            f" in one request stream), shared by every dataset made from it; this one holds "
            f"{cell(', '.join(map(str, view['prompts'])))}.")


def model_name(path: str) -> str:
    """A Hub id as it is; a local directory by its name only (this site's paths stay off the card)."""
    path = str(path)
    if path.startswith(("/", "~", "./", "../")) or "\\" in path:
        return path.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] + " (a local directory)"
    return path


def _prompts_section(info: dict[str, Any]) -> str:
    table = info.get("prompt_table") or []
    if not table:
        return ""
    lines = [f"| {cell(p.get('name'))} | {cell(p.get('format'))} | {cell(p.get('version'))} | "
             f"{code(p.get('template_hash'))} |" for p in table]
    return ("## Prompts\n\nEach record names its prompt and the hash of the prompt's system message and template "
            "(column `template_hash`).\n\n| prompt | format | version | template hash |\n|---|---|---|---|\n"
            + "\n".join(lines) + "\n")


def _files_section(report: dict[str, Any]) -> str:
    prefixes = report.get("prefixes") or []
    lines = ["## Files\n"]
    if prefixes:
        names = " ".join(Path(p).name for p in prefixes)
        lines.append(f"Token files ({report.get('format', '')}, dtype {report.get('dtype', '')}): `{names}`; for "
                     f"Megatron-LM: `--data-path {names}`. `report.json` lists every file with its size and sha256 "
                     f"(`hpcsynth verify DIR` checks them).\n")
    if report.get("text_export"):
        lines.append("The synthetic text is in Parquet under `" + report["text_export"]["dir"] + "/`:\n\n"
                     "| column | what it is |\n|---|---|\n| id | record id, `SHARD-INDEX/PROMPT` |\n"
                     "| text | the generated text |\n| prompt | which prompt produced it |\n"
                     "| source_id | the source document's own id (for web data, its URL) |\n"
                     "| model, template_hash, seed | what generated it, exactly |\n"
                     "| finish_reason, completion_tokens | `length` means it was cut at the token limit |\n"
                     "| meta | provenance attached when the corpus was planned (JSON), if any |\n\n"
                     "```python\nfrom datasets import load_dataset\n"
                     "ds = load_dataset(\"parquet\", data_dir=\"PATH/TO/THE/TEXT/DIRECTORY\", split=\"train\")\n```\n")
    return "\n".join(lines)


def _read_json(path: Path) -> Any:
    try:
        return orjson.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


def _validate_report(run: Path, run_info: dict[str, Any]) -> dict[str, Any]:
    """The `hpcsynth validate` report made under this reduce's own validation settings: RUN/validate/report.json
    (the run's config), else the what-if report of these settings (`validate RUN --config FILE`, the FILE
    this reduce took too). One of other settings is never quoted: "accepted 0" under stricter thresholds
    beside this dataset's own counts would describe records other than these."""
    from hpcsynth.reduce.validate.quality import whatif_path
    from hpcsynth.rundir import RunDir

    settings = run_info.get("validate_settings")
    candidates = [run / "validate" / "report.json"]
    if isinstance(settings, dict):
        candidates.append(whatif_path(RunDir(run), settings))
    for path in candidates:
        data = _read_json(path)
        if (isinstance(data, dict) and data.get("fingerprint") == run_info.get("fingerprint", "")
                and isinstance(data.get("prompts"), dict) and (settings is None or data.get("settings") == settings)):
            return {"validate_report": data, "validate_report_file": f"RUN/validate/{path.name}"}
    return {"validate_report": None}  # none, or one of another config: its figures would describe other records


def _settings_section(info: dict[str, Any]) -> str:
    """Which reduce settings made this output (reduce/settings.py)."""
    from hpcsynth.reduce.settings import change_line

    config = info.get("reduce_config")
    if not isinstance(config, dict):
        return ""
    made = info.get("settings_from") or {}
    source = (f"{code(Path(str(made['config'])).name)} laid over the run's config" if made.get("config")
              else "the grid mix-in's `reduce:` keys laid over the generator run's config" if made.get("grid")
              else "the run's own config")
    changed = made.get("changed") or []
    said = ("; these keys differ from the run's config:\n\n" + "\n".join(f"- {code(change_line(c, card=True))}"
                                                                          for c in changed if isinstance(c, dict))
            if changed else ".")
    return (f"## Reduce settings\n\nThis output was made with the `reduce:`, `validate:` and `card:` settings in "
            f"`reduce-config{'-partial' if info.get('partial') else ''}.yaml` ({source}){said}\n")


def _account(run: str, price: float) -> dict[str, Any] | None:
    """The run's account, or None: the card must not fail a reduce because accounting failed."""
    try:
        from hpcsynth.rundir import RunDir
        from hpcsynth.status.account import account_run

        return account_run(RunDir(Path(run)), price)
    except Exception as exc:  # the run moved, a damaged file, sacct unreachable
        return {"error": f"{type(exc).__name__}: {exc}"}
