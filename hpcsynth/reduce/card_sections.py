"""Sections of the dataset card (card.py) built from data: sources, the mix, tokens, quality, cost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

NOT_STATED = "not stated (set card.license)"


def sources_section(info: dict[str, Any]) -> str:
    """Each source and its licence as the config states it: the planned corpus (what was rephrased, and the
    run's originals), then every other corpus the mix took text from."""
    card = info.get("card") or {}
    licences = card.get("source_licenses") or {}
    mix = info.get("mix") if isinstance(info.get("mix"), dict) else None
    lines = ["## Sources\n", "| source | kind | documents | licence |", "|---|---|---|---|"]
    inputs = info.get("inputs") or []
    files = info.get("input_files", len(inputs))
    shown = ", ".join(code(i.get("name")) for i in inputs[:10]) + (f" and {files - 10:,} more"
                                                                         if files > 10 else "")
    lines.append(f"| the corpus: {shown or '-'} | web documents | {number(info.get('documents'))} | "
                 f"{cell(card.get('license') or NOT_STATED)} |")
    if mix and isinstance(mix.get("sources"), list):
        for source in mix["sources"]:
            if isinstance(source, dict):
                name = str(source.get("name", ""))
                # Rephrasings and the run's originals come from the corpus above; another corpus has its own.
                fallback = NOT_STATED if source.get("kind") == "corpus" else card.get("license") or NOT_STATED
                licence = licences.get(name) or source.get("license") or fallback
                lines.append(f"| {cell(name)} | {cell(source.get('kind', ''))} | {number(source.get('documents'))} | "
                             f"{cell(licence)} |")
    lines.append("\nThe rephrasings derive from their sources: their licence terms carry over.\n")
    return "\n".join(lines)


def mix_section(info: dict[str, Any]) -> str:
    """DIR/mix.json as the mixing step wrote it, every key of every source; else the reduce's ratio."""
    mix = info.get("mix") if isinstance(info.get("mix"), dict) else None
    if not mix or not isinstance(mix.get("sources"), list):
        ratio = info.get("original_ratio")
        report = info.get("report") or {}
        return ("## The mix\n\nOriginal documents of each shard were mixed in at "
                f"{ratio} x that shard's synthetic tokens (reduce.original_ratio; achieved "
                f"{report.get('original_ratio')}), then everything was shuffled at document level "
                f"(seed {info.get('seed')}).\n")
    sources = [s for s in mix["sources"] if isinstance(s, dict)]
    keys = list(dict.fromkeys(k for s in sources for k in s))
    head = ", ".join(f"{k} {number(v)}" for k, v in mix.items() if k != "sources" and not isinstance(v, (dict, list)))
    file = code(info.get("mix_file") or "mix.json")
    lines = ["## The mix\n", f"From {file}: {head}.\n" if head else f"From {file}.\n",
             "| " + " | ".join(cell(k) for k in keys) + " |", "|" + "---|" * len(keys)]
    # A path by its last part only: the card travels to the Hub, the site's directories stay home.
    lines += ["| " + " | ".join(number(Path(str(s[k])).name if k == "path" and s.get(k) else s.get(k)) for k in keys)
              + " |" for s in sources]
    return "\n".join(lines) + "\n"


def tokens_section(report: dict[str, Any]) -> str:
    rows = [("synthetic (rephrasings)", report.get("synthetic_documents"), report.get("synthetic_tokens")),
            ("original (mixed in)", report.get("original_documents"), report.get("original_tokens")),
            *([("other corpora (mixed in)", report.get("corpus_documents"), report.get("corpus_tokens"))]
              if report.get("corpus_tokens") else []),
            ("total", report.get("sequences"), report.get("tokens"))]
    lines = ["## Token counts\n", f"Tokenizer {code(tokenizer_name(report.get('tokenizer', '')))}; EOS {code(report.get('eos_token'))} "
             f"(id {report.get('eos_id')}) after every document; counts include it.\n",
             "| | documents | tokens |", "|---|---|---|"]
    lines += [f"| {name} | {number(docs)} | {number(tokens)} |" for name, docs, tokens in rows]
    by_source = report.get("tokens_by_source") or {}
    if by_source:
        lines += ["\n| by source | tokens |", "|---|---|"]
        lines += [f"| {cell(name)} | {number(tokens)} |" for name, tokens in by_source.items()]
    return "\n".join(lines) + "\n"


def quality_section(info: dict[str, Any]) -> str:
    """Validation by format (what this reduce kept), and the validate report's measures when there is one."""
    parts = [validation_section(info), decontamination_section(info.get("report") or {})]
    report = info.get("validate_report")
    if report:
        lines = [f"`hpcsynth validate` on this run under this output's settings "
                 f"({info.get('validate_report_file') or 'RUN/validate/report.json'}):\n",
                 "| prompt | records | accepted | output/input length | truncated | distinct "
                 f"{report.get('diversity_n', 2)}-grams |", "|---|---|---|---|---|---|"]
        for name, q in sorted(report["prompts"].items()):
            if isinstance(q, dict):
                lines.append(f"| {cell(name)} | {number(q.get('records'))} | {number(q.get('accepted'))} | "
                             f"{number(q.get('length_ratio'))} | {number(q.get('truncation_rate'))} | "
                             f"{number(q.get('distinct_ngrams'))} |")
        parts.append("\n".join(lines) + "\n")
    body = "\n".join(p for p in parts if p)
    return ("## Quality\n\n" + body) if body else ""


def validation_section(info: dict[str, Any]) -> str:
    """What validation by format kept and left out, per prompt (hpcsynth/reduce/validate/)."""
    validation = info.get("validation") or (info.get("report") or {}).get("validation") or {}
    if not validation:
        return ""
    keep = info.get("validate_action") == "keep"
    formats = info.get("formats", {})
    rows = []
    for prompt, counts in sorted(validation.items()):
        failed = counts.get("flagged" if keep else "rejected", {})
        total = counts["accepted"] + sum(counts.get("rejected", {}).values())
        checks = ", ".join(f"{check} {n:,}" for check, n in sorted(failed.items(), key=lambda kv: -kv[1])) or "-"
        rows.append(f"| {cell(prompt)} | {formats.get(prompt, 'free')} | {total:,} | {counts['accepted']:,} | "
                    f"{cell(checks)} |")
    what = ("records that failed a check were kept and are only counted here (validate.action: keep)" if keep
            else "records that failed a check are not in this dataset")
    return ("Each output was checked for the shape its prompt's format asks for; "
            f"{what}.\n\n| prompt | format | records | kept | failed checks |\n|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n")


def decontamination_section(report: dict[str, Any]) -> str:
    """What reduce.decontaminate kept out: the benchmarks by name, records and documents by prompt and source."""
    found = report.get("decontamination")
    if not isinstance(found, dict):
        return ""
    names = ", ".join(code(b.get("name")) for b in found.get("benchmarks") or [] if isinstance(b, dict)) or "-"
    lines = [f"No text here shares a {found.get('ngram')}-word sequence (lowercased words) with the benchmarks "
             f"{names}: a rephrasing that did was refused, a mixed-in document that did was dropped.\n",
             "| prompt or source | left out | copied from the source document | written by the generator |",
             "|---|---|---|---|"]
    for prompt, counts in sorted((found.get("synthetic") or {}).items()):
        if isinstance(counts, dict):
            lines.append(f"| {cell(prompt)} | {number(counts.get('refused'))} | {number(counts.get('copied'))} | "
                         f"{number(counts.get('written'))} |")
    for source, count in sorted((found.get("documents") or {}).items()):
        lines.append(f"| {cell(source)} | {number(count)} | - | - |")
    return "\n".join(lines) + "\n"


def cost_section(account: dict[str, Any] | None, scope: str = "") -> str:
    if not account:
        return ""
    if "error" in account:
        return f"## Cost\n\nNot available: {cell(account['error'])}.\n"
    unit = account["unit"]
    lines = ["## Cost\n", *([scope + "\n"] if scope else []), f"{account['hours']['hours']:,.4g} {unit}-hours ({account['hours']['how']})"
             + (f", ${account['cost']:,.2f}" if account["price_per_hour"] else "")
             + f" for {number(account['tokens_committed'])} completion tokens"
             + (f" (${account['cost_per_million_tokens']:,.4f} per million)" if account["price_per_hour"]
                and account["cost_per_million_tokens"] is not None else "") + ".\n",
             f"| | {unit}-hours | how it is known |", "|---|---|---|",
             f"| useful generation | {account['useful']['hours']:,.4g} | {cell(account['useful']['how'])} |"]
    lines += [f"| {name.replace('_', ' ')} | {fig['hours']:,.4g} | {cell(fig['how'])} |"
              for name, fig in account["wasted"].items()]
    return "\n".join(lines) + "\n"


def tokenizer_name(path: str) -> str:
    """The tokenizer by its name, not this site's path: `gpt2.tokenizer.json`, `smollm2/tokenizer.json`."""
    parts = [p for p in str(path).replace("\\", "/").split("/") if p]
    if not parts:
        return ""
    return "/".join(parts[-2:]) if parts[-1] == "tokenizer.json" and len(parts) > 1 else parts[-1]


def cell(value: Any) -> str:
    """A table cell: no pipe or line break from a name may break the table, no '<' start an HTML tag on the
    Hub's page (a corpus file named `<img src=x onerror=...>.jsonl`), and no bracket start a Markdown link
    or image (a file named `[click](https://...)`, an image that calls a tracker when the page is read)."""
    text = str(value if value is not None else "")
    return (text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")
            .replace("<", "&lt;").replace("[", "\\[").replace("]", "\\]"))


def code(value: Any) -> str:
    """A value shown as code: inside backticks no HTML is read, but a backtick of its own would end the
    span and let the rest be Markdown and HTML."""
    text = str(value if value is not None else "")
    return "`" + text.replace("`", "'").replace("|", "\\|").replace("\r", " ").replace("\n", " ") + "`"


def number(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return cell(value if value is not None else "-")
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e6 else f"{value:,.0f}"
    return cell(value)
