"""Decontamination: a synthetic record or a mixed-in document that shares an n-gram with a benchmark is refused.

The table and the normalization are benchmarks.py's. Two places ask:
- validation (validate/__init__.py), for every synthetic record that passed the basic checks, over the
  word ids its batch already computed: a hit refuses the record with check `contaminated` whatever
  validate.action says (the record goes to the rejects with the benchmark's name). Its cause is told
  from the record's source document (the run's shard): **copied** when the source also holds one of the
  matched n-grams (the page carried the benchmark item and the generator kept it), **written** when it
  does not (the generator produced benchmark text of its own).
- the mix (mix/feed.py), for the run's originals and the mix-in corpora's documents, before they are
  tokenized: a hit drops the document, counted per source.
A batch without a hit (nearly all) costs one n-gram pass and one searchsorted; the source documents of a
shard are read only when one of its records matched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from hpcsynth.reduce.validate.benchmarks import BenchmarkTable
from hpcsynth.reduce.validate.ngrams import ngram_hashes
from hpcsynth.reduce.validate.wordids import word_ids, word_ids_many, words

CHECK = "contaminated"
COPIED, WRITTEN = "copied", "written"  # the causes of a contaminated synthetic record
BATCH_CHARS = 250_000  # documents screened at once: the arrays of one pass stay a few MB
SHOWN_CHARS = 160  # of the matched words, in a reason


class Hit(NamedTuple):
    """A benchmark n-gram found in a text."""

    benchmark: str  # the benchmark file's name
    item: str  # where in it: "line 17", "row 3"
    words: str  # the text's own words that matched (n of them, normalized)
    cause: str  # COPIED or WRITTEN for a synthetic record, "" for a document

    def reason(self, n: int) -> str:
        found = f"a {n}-gram of {self.benchmark} ({self.item}): '{self.words}'"
        if self.cause == COPIED:
            return f"{CHECK}: copied from its source document, {found}"
        if self.cause == WRITTEN:
            return f"{CHECK}: written by the generator (its source document does not hold it), {found}"
        return f"{CHECK}: {found}"


class _Found(NamedTuple):
    row: int  # the table row of the first match
    at: int  # its word position in the text
    grams: np.ndarray  # every matched n-gram hash of the text


class Screen:
    """Looks texts up in a benchmark table. `sources(record)`: the text of a synthetic record's source
    document, or None (set per shard with for_sources)."""

    def __init__(self, table: BenchmarkTable, sources: Callable[[dict], str | None] | None = None) -> None:
        self.table = table
        self.n = table.ngram
        self.sources = sources

    def for_sources(self, sources: Callable[[dict], str | None]) -> Screen:
        return Screen(self.table, sources)

    def find(self, ids: np.ndarray, bounds: np.ndarray) -> list[_Found | None]:
        """Per text (its words ids[bounds[k]:bounds[k+1]]): its benchmark n-grams, or None."""
        n = self.n
        grams = ngram_hashes(ids, n)
        rows = self.table.find(grams)
        found: list[_Found | None] = [None] * (len(bounds) - 1)
        if not (rows >= 0).any():
            return found
        for k in range(len(bounds) - 1):
            first, end = int(bounds[k]), int(bounds[k + 1])
            mine = np.flatnonzero(rows[first:max(first, end - n + 1)] >= 0)  # none running into the next text
            if len(mine):
                found[k] = _Found(int(rows[first + mine[0]]), int(mine[0]), grams[first + mine])
        return found

    def record_hit(self, record: dict, text: str, found: _Found) -> Hit:
        """A synthetic record's hit, with its cause read from its source document."""
        source = self.sources(record) if self.sources else None
        copied = False
        if source:
            held = ngram_hashes(word_ids(source), self.n)
            copied = bool(np.isin(found.grams, held).any())
        return self._hit(text, found, COPIED if copied else WRITTEN)

    def documents(self, texts: list[str]) -> list[Hit | None]:
        """Per document text: its hit, or None (documents screened a few hundred KB at a time)."""
        out: list[Hit | None] = []
        start = 0
        while start < len(texts):
            end, chars = start, 0
            while end < len(texts) and (end == start or chars + len(texts[end]) <= BATCH_CHARS):
                chars += len(texts[end])
                end += 1
            ids, bounds = word_ids_many(texts[start:end])
            for text, found in zip(texts[start:end], self.find(ids, bounds)):
                out.append(None if found is None else self._hit(text, found, ""))
            start = end
        return out

    def _hit(self, text: str, found: _Found, cause: str) -> Hit:
        benchmark, item = self.table.where(found.row)
        shown = " ".join(words(text)[found.at:found.at + self.n])
        if len(shown) > SHOWN_CHARS:
            shown = shown[:SHOWN_CHARS - 3] + "..."
        return Hit(benchmark, item, shown, cause)


class ShardSources:
    """The source documents of one run shard by key, read on the first question (a shard whose records
    all passed is never opened): `sources(record)` for Screen.for_sources."""

    def __init__(self, read: Callable[[], Any]) -> None:
        self.read = read
        self.texts: dict[str, str] | None = None

    def __call__(self, record: dict) -> str | None:
        if self.texts is None:
            self.texts = {str(d.get("key")): d.get("text") for d in self.read() if isinstance(d.get("text"), str)}
        key = str(record.get("id", "")).rsplit("/", 1)[0]  # a record's id is KEY/PROMPT
        return self.texts.get(key)


def add_hit(tally: dict[str, Any], hit: Hit) -> None:
    """Count a contaminated synthetic record in its prompt's tally: by cause and by benchmark."""
    counts = tally.setdefault("contamination", {COPIED: 0, WRITTEN: 0, "benchmarks": {}})
    counts[hit.cause] = counts.get(hit.cause, 0) + 1
    counts["benchmarks"][hit.benchmark] = counts["benchmarks"].get(hit.benchmark, 0) + 1


def add_contamination(into: dict[str, Any], counts: dict[str, Any]) -> None:
    """Sum one tally's contamination counts into another's (parts into the report)."""
    if not counts:
        return
    total = into.setdefault("contamination", {COPIED: 0, WRITTEN: 0, "benchmarks": {}})
    for cause in (COPIED, WRITTEN):
        total[cause] += int(counts.get(cause, 0))
    for name, count in (counts.get("benchmarks") or {}).items():
        total["benchmarks"][name] = total["benchmarks"].get(name, 0) + int(count)
