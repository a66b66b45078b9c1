"""Word n-gram measures shared by the checks and the quality report: repetition and diversity.

Words are runs of letters and digits, lowercased, so Markdown pipes and bold markers neither count as
words nor hide a loop.
"""

from __future__ import annotations

import hashlib
import heapq
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
    return 1.0 - len(np.unique(mixed)) / count


class DistinctSketch:
    """Distinct n-grams over a whole prompt's outputs, in bounded memory.

    Exact counting would hold every n-gram of the run; instead the k smallest 64-bit hashes estimate
    the number of distinct ones (k-minimum-values: relative error about 1/sqrt(k), 1.6% at k=4096).
    """

    def __init__(self, k: int = 4096) -> None:
        self.k = k
        self.heap: list[int] = []  # negated hashes: heap[0] is minus the largest kept
        self.kept: set[int] = set()
        self.total = 0

    def add(self, grams: list[tuple[str, ...]]) -> None:
        self.total += len(grams)
        for gram in grams:
            value = int.from_bytes(hashlib.blake2b(" ".join(gram).encode(), digest_size=8).digest(), "little")
            if value in self.kept:
                continue
            if len(self.heap) < self.k:
                heapq.heappush(self.heap, -value)
                self.kept.add(value)
            elif value < -self.heap[0]:
                self.kept.discard(-heapq.heapreplace(self.heap, -value))
                self.kept.add(value)

    def distinct(self) -> float:
        """Estimated number of distinct n-grams (exact while fewer than k were seen)."""
        if len(self.heap) < self.k:
            return float(len(self.heap))
        return (self.k - 1) / ((-self.heap[0] + 1) / 2.0 ** 64)

    def ratio(self) -> float | None:
        """Distinct n-grams per n-gram: 1.0 when nothing repeats across the outputs."""
        return min(1.0, self.distinct() / self.total) if self.total else None
