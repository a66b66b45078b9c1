"""OUT/mix.json (mix-partial.json for --partial): what the mix asked and what the written files hold.

Its shape is a contract (the dataset card renders it): {"seed", "total_tokens", "sources": [{"name",
"kind", "path", "prompt", "weight", "target_share", "achieved_share", "tokens", "documents", "repeat",
"cut_documents", "dropped_documents"}], "policy": {...}}. Tokens and documents are those written,
copies included, EOS included; repeat is written tokens / the source's tokens (0.5: half of it was
used; 2.0: all of it twice). The policy holds the settings, the total aimed at, each source's tokens
before choosing, and the notes `reduce` prints: a shrunk total, a repeated source, a share more than 1%
off the asked one and why. With reduce.decontaminate, each source also has "contaminated_documents": its
documents left out for holding benchmark text (a synthetic source: its records refused by validation).
"""

from __future__ import annotations

from typing import Any

from hpcsynth.files import atomic_write_json
from hpcsynth.reduce.marker import PartMarker
from hpcsynth.reduce.mix.plan import MixPlan

TOLERANCE = 0.01  # an achieved share more than 1% (relative) off the asked one is said, with the reason


def write_mix_manifest(spec: Any, markers: dict[int, PartMarker], plan: MixPlan,
                       written: list[dict[str, int]]) -> dict[str, Any]:
    sources = spec.mix["sources"]
    total = sum(w["tokens"] for w in written)
    rows, notes = [], list(plan.notes)
    for i, source in enumerate(sources):
        available, tokens = plan.available[i], plan.available[i].tokens_estimate()
        achieved = written[i]["tokens"] / total if total else 0.0
        rows.append({"name": source["name"], "kind": source["kind"], "path": source["path"],
                     "prompt": source["prompt"], "weight": float(source["weight"]),
                     "target_share": round(plan.shares[i], 6), "achieved_share": round(achieved, 6),
                     "tokens": written[i]["tokens"], "documents": written[i]["documents"],
                     "repeat": round(written[i]["tokens"] / tokens, 4) if tokens else 0.0,
                     "cut_documents": available.cut, "dropped_documents": available.dropped})
        if getattr(spec, "decontaminate", None):
            rows[-1]["contaminated_documents"] = (_contaminated_records(source, markers)
                                                  if source["kind"] == "synthetic" else available.contaminated)
    notes += _off_target(sources, plan, written, total)
    policy = {"form": spec.mix["form"], "too_few": spec.mix["too_few"], "max_repeat": spec.mix["max_repeat"],
              "max_doc_tokens": spec.mix["max_doc_tokens"], "oversize": spec.mix["oversize"],
              "total_tokens": spec.mix["total_tokens"], "target_total": round(plan.total),
              "asked_total": round(plan.asked_total), "short": plan.short,
              "available": {s["name"]: {"documents": a.documents + a.rest_documents, "tokens": a.tokens_estimate(),
                                        "largest": a.largest, "estimated": a.estimated}
                            for s, a in zip(sources, plan.available)},
              "notes": notes}
    data = {"seed": int(spec.run_info["seed"]), "total_tokens": total, "sources": rows, "policy": policy}
    name = f"mix{spec.suffix}.json"
    atomic_write_json(spec.out_dir / name, data)
    return {"file": name, "data": data}


def _contaminated_records(source: dict, markers: dict[int, PartMarker]) -> int:
    """Records of a synthetic source (one prompt, or every prompt: "*") refused for benchmark text."""
    total = 0
    for marker in markers.values():
        for prompt, counts in marker.validation.items():
            if source["prompt"] in (None, prompt) and isinstance(counts, dict):
                found = counts.get("contamination") or {}
                total += int(found.get("copied", 0)) + int(found.get("written", 0))
    return total


def _off_target(sources: list[dict], plan: MixPlan, written: list[dict[str, int]], total: int) -> list[str]:
    """One line per share more than 1% off the asked one, with its cause: a source whose own documents
    are too coarse for its need, or (its tokens as planned) the sources that are."""
    coarse = [i for i in range(len(sources)) if abs(written[i]["tokens"] - plan.needs[i]) > TOLERANCE * plan.needs[i]]
    lines = []
    for i, source in enumerate(sources):
        achieved = written[i]["tokens"] / total if total else 0.0
        off = abs(achieved - plan.shares[i]) / plan.shares[i]
        if off <= TOLERANCE:
            continue
        head = (f"mix: {source['name']} is {achieved:.2%} of the tokens, {plan.shares[i]:.2%} was asked "
                f"(off by {off:.1%})")
        if i in coarse:
            lines.append(f"{head}: whole documents (up to {plan.available[i].largest:,} tokens) are too coarse "
                         f"for the {plan.needs[i]:,.0f} tokens it needs ({written[i]['tokens']:,} written); mix more "
                         f"text, or lower reduce.mix.max_doc_tokens")
        else:
            others = ", ".join(sources[j]["name"] for j in coarse) or "none"
            lines.append(f"{head}: its {written[i]['tokens']:,} tokens are as planned; the total moved with the "
                         f"sources whose documents are too coarse for their need ({others})")
    return lines


def mix_lines(mix: dict[str, Any]) -> list[str]:
    """The mix as `reduce` prints it: one row per source, then the notes."""
    lines = [f"  {'mix source':<24} {'kind':<9} {'asked':>7} {'got':>7} {'tokens':>14} {'docs':>10} {'repeat':>7}"]
    for row in mix["sources"]:
        lines.append(f"  {row['name']:<24} {row['kind']:<9} {row['target_share']:>7.2%} {row['achieved_share']:>7.2%} "
                     f"{row['tokens']:>14,} {row['documents']:>10,} {row['repeat']:>6.2f}x")
        if row["cut_documents"] or row["dropped_documents"]:
            lines.append(f"    documents over reduce.mix.max_doc_tokens={mix['policy']['max_doc_tokens']:,}: "
                         f"{row['cut_documents']:,} cut, {row['dropped_documents']:,} dropped")
        if row.get("contaminated_documents"):
            lines.append(f"    holding benchmark text (reduce.decontaminate): {row['contaminated_documents']:,} "
                         f"{'records refused' if row['kind'] == 'synthetic' else 'documents dropped'}")
    return lines
