"""The merge's mix plan: every part's counts -> targets (targets.py) -> key thresholds (choose.py).

Parts may have tokenized only the first of their originals in key order (feed.py). The plan is exact
only when every threshold stays below the key where each such part stopped and no decision rests on a
partial count; otherwise `redo` tokenizes those parts' originals in full and the plan is made again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hpcsynth.errors import RunError
from hpcsynth.reduce.marker import PartMarker
from hpcsynth.reduce.mix.choose import part_arrays, thresholds
from hpcsynth.reduce.mix.targets import plan_targets

SUMMED = ("documents", "tokens", "cut", "dropped", "chars", "rest_documents", "rest_chars", "contaminated")


@dataclass(frozen=True)
class SourceTotals:
    """One mix source over every part: the parts' counts summed (the largest document, the largest)."""

    documents: int
    tokens: int
    cut: int
    dropped: int
    chars: int
    rest_documents: int  # originals parts did not tokenize (mix/feed.py): their tokens are estimated
    rest_chars: int
    largest: int
    contaminated: int = 0  # documents dropped for holding benchmark text (reduce.decontaminate)

    @property
    def estimated(self) -> bool:
        return bool(self.rest_documents)

    def tokens_estimate(self) -> int:
        """Counted tokens, plus those of the originals a part did not tokenize, estimated from their chars."""
        rest = self.rest_chars * self.tokens / max(self.chars, 1) if self.rest_documents else 0
        return self.tokens + round(rest)


@dataclass(frozen=True)
class MixPlan:
    """What the merge writes of each source (targets.py's figures, per source in spec.mix["sources"] order)."""

    total: float  # tokens the mix writes
    asked_total: float  # before too_few: shrink lowered it
    shares: list[float]
    needs: list[float]  # tokens per source
    copies: list[int]  # whole copies of each source
    fractions: list[float]  # tokens to take beyond the whole copies
    notes: list[str]  # one line each, printed by reduce
    short: list[str]  # names of the sources with fewer tokens than their share asks
    available: list[SourceTotals]
    limits: list[int]  # per source, the mix key below which a document gives one more copy (choose.py)


def plan_mix(spec: Any, markers: dict[int, PartMarker],
             redo: Callable[[list[int]], dict[int, PartMarker]]) -> tuple[MixPlan, dict[int, PartMarker]]:
    """The plan and the markers it rests on; `redo(parts)` re-tokenizes those parts with all their
    originals and returns every part's marker."""
    for _ in range(2):
        partial = {i: counts.limit for i, m in markers.items() for counts in m.mix if counts.limit is not None}
        try:
            plan = _plan(spec, markers)
        except RunError:
            if not partial:
                raise
            markers = redo(sorted(partial))  # a decision on a partial count: count them all, decide again
            continue
        short = [i for i in partial if _unsafe(spec, markers[i], plan)]
        if not short:
            return plan, markers
        markers = redo(sorted(short))
    return _plan(spec, markers), markers


def _unsafe(spec: Any, marker: PartMarker, plan: MixPlan) -> bool:
    """True when the plan needs originals this part did not tokenize."""
    for s, counts in enumerate(marker.mix):
        if counts.limit is None:
            continue
        if plan.copies[s] >= 1 or plan.limits[s] > counts.limit or spec.mix["sources"][s]["name"] in plan.short:
            return True
    return False


def _plan(spec: Any, markers: dict[int, PartMarker]) -> MixPlan:
    sources = spec.mix["sources"]
    counted = [SourceTotals(**{key: sum(getattr(m.mix[i], key) for m in markers.values()) for key in SUMMED},
                            largest=max((m.mix[i].largest for m in markers.values()), default=0))
               for i in range(len(sources))]
    targets = plan_targets(sources, [c.tokens for c in counted], spec.mix)
    limits = thresholds(part_arrays(spec), len(sources), targets["fractions"])
    return MixPlan(**targets, available=counted, limits=limits)
