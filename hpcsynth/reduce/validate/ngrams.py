"""Word n-gram measures shared by the checks and the quality report: repetition and diversity.

Words are runs of letters and digits, lowercased, so Markdown pipes and bold markers neither count as
words nor hide a loop.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"\w+")
MIN_NGRAMS = 12  # below this a text is too short for a share of repeats to mean anything


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    # zip over shifted views builds the tuples in C: 3x faster than slicing per position.
    return list(zip(*(tokens[i:] for i in range(n))))


def repetition_ratio(tokens: list[str], n: int) -> float:
    """Share of the n-grams that repeat an earlier one: 0 for fresh text, near 1 for a loop.

    Each word becomes its 64-bit hash and each n-gram a mix of n of them, counted in numpy: 2.5x
    faster than a set of string tuples, which made validation cost more than gigatoken's tokenizing.
    Hashes are per process; a collision (about one in 10^15 pairs) could only lower a ratio.
    """
    import numpy as np

    count = len(tokens) - n + 1
    if count < MIN_NGRAMS:
        return 0.0
    hashes = np.fromiter(map(hash, tokens), dtype=np.int64, count=len(tokens)).view(np.uint64)
    mixed = hashes[:count].copy()
    for i in range(1, n):
        mixed = mixed * np.uint64(0x9E3779B97F4A7C15) + hashes[i:i + count]  # wraps mod 2^64, as meant
    return 1.0 - distinct_count(mixed) / count


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
    k=4096). Words hash with crc32 (deterministic across processes, so a report is reproducible), n of
    them are mixed and finalized with splitmix64 so the hashes spread evenly, all in numpy.
    """

    def __init__(self, k: int = 4096) -> None:
        import numpy as np

        self.k = k
        self.kept = np.zeros(0, dtype=np.uint64)  # sorted, distinct, at most k
        self.total = 0

    def add_words(self, tokens: list[str], n: int) -> None:
        import zlib

        import numpy as np

        count = len(tokens) - n + 1
        if count <= 0:
            return
        self.total += count
        hashes = np.fromiter(map(zlib.crc32, map(str.encode, tokens)), dtype=np.uint64, count=len(tokens))
        mixed = hashes[:count].copy()
        for i in range(1, n):
            mixed = (mixed << np.uint64(32)) ^ (mixed >> np.uint64(32)) ^ hashes[i:i + count]
        mixed = _splitmix64(mixed)
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


def _splitmix64(x):  # type: ignore[no-untyped-def]
    import numpy as np

    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))
