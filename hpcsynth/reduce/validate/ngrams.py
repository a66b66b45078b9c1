"""Word n-gram measures shared by the checks and the quality report: repetition and diversity.

Both take a record's word ids (wordids.word_ids: one split per record, shared by every measure).
"""

from __future__ import annotations

from hpcsynth.reduce.validate.wordids import splitmix64, word_ids, words

MIN_NGRAMS = 12  # below this a text is too short for a share of repeats to mean anything


def ngram_hashes(ids, n: int):  # type: ignore[no-untyped-def]
    """One 64-bit value per word n-gram: a mix of its n word ids (empty when there are fewer words)."""
    import numpy as np

    count = len(ids) - n + 1
    if count <= 0:
        return ids[:0]
    mixed = ids[:count].copy()
    for i in range(1, n):
        mixed = mixed * np.uint64(0x9E3779B97F4A7C15) + ids[i:i + count]  # wraps mod 2^64, as meant
    return mixed


def repeated_share(grams, repeats: int | None = None) -> float:  # type: ignore[no-untyped-def]
    """Share of the n-grams that repeat an earlier one, from ngram_hashes (or, given `repeats`, what it
    would be with that many repeats). A collision (about one in 10^15 pairs) could only raise it."""
    count = len(grams)
    if count < MIN_NGRAMS:
        return 0.0
    distinct = count - repeats if repeats is not None else distinct_count(grams)
    return 1.0 - distinct / count


def repetition_ratio(ids, n: int) -> float:  # type: ignore[no-untyped-def]
    """Share of the word n-grams that repeat an earlier one: 0 for fresh text, near 1 for a loop.

    Counted in numpy over word ids (a set of string tuples cost more than gigatoken's tokenizing)."""
    return repeated_share(ngram_hashes(ids, n))


def distinct_count(values) -> int:  # type: ignore[no-untyped-def]
    """Distinct values of a small array: sort and compare neighbours (np.unique's hash table costs
    ~0.2 ms a call on a few hundred values, most of a record's validation)."""
    import numpy as np

    if len(values) == 0:
        return 0
    ordered = np.sort(values)
    return 1 + int(np.count_nonzero(ordered[1:] != ordered[:-1]))


class DistinctSketch:
    """Distinct n-grams over a whole prompt's outputs, in bounded memory.

    Exact counting would hold every n-gram of the run; instead the k smallest 64-bit n-gram hashes
    estimate the number of distinct ones (k-minimum-values: relative error about 1/sqrt(k), 1.6% at
    k=4096). Word ids are the same in every process (so a report is reproducible); n of them are mixed
    and finalized with splitmix64 so the hashes spread evenly, all in numpy.
    """

    def __init__(self, k: int = 4096) -> None:
        import numpy as np

        self.k = k
        self.kept = np.zeros(0, dtype=np.uint64)  # sorted, distinct, at most k
        self.total = 0

    def add(self, ids, n: int) -> None:  # type: ignore[no-untyped-def]
        """Count the n-grams of one record's word ids (word_ids)."""
        import numpy as np

        count = len(ids) - n + 1
        if count <= 0:
            return
        self.total += count
        mixed = ids[:count].copy()
        for i in range(1, n):
            mixed = (mixed << np.uint64(32)) ^ (mixed >> np.uint64(32)) ^ ids[i:i + count]
        mixed = splitmix64(mixed)
        if len(self.kept) == self.k:  # once full, only hashes under the largest kept can enter
            mixed = mixed[mixed < self.kept[-1]]
            if not len(mixed):
                return
        merged = np.sort(np.concatenate([self.kept, mixed]))
        self.kept = merged[np.concatenate(([True], merged[1:] != merged[:-1]))][:self.k]

    def distinct(self) -> float:
        """Estimated number of distinct n-grams (exact while fewer than k were seen)."""
        if len(self.kept) < self.k:
            return float(len(self.kept))
        return (self.k - 1) / ((float(self.kept[-1]) + 1) / 2.0 ** 64)

    def ratio(self) -> float | None:
        """Distinct n-grams per n-gram: 1.0 when nothing repeats across the outputs."""
        return min(1.0, self.distinct() / self.total) if self.total else None


__all__ = ["DistinctSketch", "MIN_NGRAMS", "distinct_count", "ngram_hashes", "repeated_share", "repetition_ratio",
           "word_ids", "words"]
