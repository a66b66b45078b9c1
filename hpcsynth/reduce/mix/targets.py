"""From what each source has to what each must give: the total, and the too_few policy.

Pure arithmetic over per-source token counts (the sum of the parts' counts), so it is tested on its own.
Shares are weight / sum of weights over the tokens written (EOS included). The total is
reduce.mix.total_tokens, or when 0, the most the synthetic prompts allow without repeating any of them.
A source whose share of that total is more than it has is handled by reduce.mix.too_few: "error" stops
with one line (the source, its tokens, the tokens needed, the fix), "shrink" lowers the total until every
source fits, "repeat" uses its documents more than once, up to reduce.mix.max_repeat times.
"""

from __future__ import annotations

import math
from typing import Any

from hpcsynth.errors import RunError

SLACK = 1e-9  # float rounding of share x total must not count as "too few"


def plan_targets(sources: list[dict[str, Any]], available: list[int], settings: dict[str, Any]) -> dict[str, Any]:
    """{"total", "asked_total", "needs": [tokens per source], "copies": [whole copies], "fractions":
    [tokens to take beyond the whole copies], "notes": [one line each]}."""
    weights = [float(s["weight"]) for s in sources]
    shares = [w / sum(weights) for w in weights]
    total = float(settings["total_tokens"]) or _synthetic_total(sources, available, shares)
    asked, notes = total, []
    short = [i for i in range(len(sources)) if shares[i] * total > available[i] * (1 + SLACK)]
    policy = settings["too_few"]
    if short and policy == "error":
        i = short[0]
        raise RunError(f"reduce.mix: {sources[i]['name']} has {available[i]:,} tokens and its share "
                       f"({shares[i]:.1%} of {int(total):,}) needs {math.ceil(shares[i] * total):,}; add documents to "
                       f"it, lower its weight, or set reduce.mix.too_few to shrink or repeat")
    if short and policy == "shrink":
        empty = [sources[i]["name"] for i in short if not available[i]]
        if empty:
            raise RunError(f"reduce.mix: {empty[0]} has no tokens (no document of it was read), so no total fits "
                           f"its share; check its path and text_key, or leave it out of reduce.mix.sources")
        total = min(available[i] / shares[i] for i in range(len(sources)))
        i = min(short, key=lambda j: available[j] / shares[j])
        notes.append(f"mix: {sources[i]['name']} has {available[i]:,} of the {math.ceil(shares[i] * asked):,} tokens "
                     f"its share needs; the total shrank from {int(asked):,} to {int(total):,} tokens so every share "
                     f"stays as asked (reduce.mix.too_few: shrink)")
    if short and policy == "repeat":
        for i in short:
            times = shares[i] * total / available[i] if available[i] else math.inf
            if times > settings["max_repeat"] * (1 + SLACK):
                raise RunError(f"reduce.mix: {sources[i]['name']} has {available[i]:,} tokens and its share needs "
                               f"{math.ceil(shares[i] * total):,}, {times:.2f} times over, more than "
                               f"reduce.mix.max_repeat={settings['max_repeat']:g}; add documents, lower its weight, "
                               f"raise max_repeat or set reduce.mix.too_few: shrink")
            notes.append(f"mix: {sources[i]['name']} is repeated {times:.2f} times ({available[i]:,} tokens, its share "
                         f"needs {math.ceil(shares[i] * total):,}; reduce.mix.too_few: repeat)")
    needs = [shares[i] * total for i in range(len(sources))]
    copies = [int(needs[i] // available[i]) if available[i] else 0 for i in range(len(sources))]
    fractions = [max(0.0, needs[i] - copies[i] * available[i]) for i in range(len(sources))]
    return {"total": total, "asked_total": asked, "shares": shares, "needs": needs, "copies": copies,
            "fractions": fractions, "notes": notes, "short": [sources[i]["name"] for i in short]}


def _synthetic_total(sources: list[dict[str, Any]], available: list[int], shares: list[float]) -> float:
    """The largest total no synthetic source must repeat for: generation is what cost the GPU-hours."""
    synthetic = [i for i, s in enumerate(sources) if s["kind"] == "synthetic"]
    empty = [sources[i]["name"] for i in synthetic if available[i] == 0]
    if empty:
        raise RunError(f"reduce.mix: {empty[0]} has no tokens to mix (no record of it passed the checks); "
                       f"leave it out of reduce.mix.synthetic, or see `hpcsynth validate RUN` for why")
    return min(available[i] / shares[i] for i in synthetic)
