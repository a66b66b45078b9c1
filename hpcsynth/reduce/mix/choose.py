"""Which documents the merge writes, and how often: seeded thresholds over 64-bit document keys.

Every document a part tokenized carries a key, hash(seed, id), uniform over 64 bits, stored in
part-N.keys.npy beside its source (part-N.src.npy) and its tokens (part-N.lens.npy). A source that
must give F tokens beyond its whole copies takes the documents whose key is below a threshold; the
threshold is found in two passes over those small per-part arrays, never holding the run: a histogram
of tokens over the top 16 bits of the key (per source), then, inside the bin where the running sum
crosses F, a histogram over the next 16 bits. The threshold is the 32-bit boundary whose running sum
is nearest F, so a source is off its target by at most half of the documents sharing one 2^-32 slice
of keys: one document, in practice. Same seed, same documents; another seed, others.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator

import numpy as np

BINS = 1 << 16
Arrays = Callable[[], Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]]  # each part's keys, sources, lengths


def document_key(doc_id: str, seed: int) -> int:
    digest = hashlib.blake2b(f"mix:{seed}:{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def thresholds(arrays: Arrays, sources: int, fractions: list[float]) -> list[int]:
    """Per source, the key below which a document gives one more copy; `arrays()` yields each part's
    (keys uint64, sources uint8, lengths) in turn (called twice: two passes)."""
    wanted = [i for i in range(sources) if fractions[i] > 0]
    result = [0] * sources
    if not wanted:
        return result
    coarse = np.zeros(sources * BINS)
    for keys, src, lens in arrays():
        coarse += np.bincount(src.astype(np.int64) * BINS + (keys >> np.uint64(48)).astype(np.int64),
                              weights=lens, minlength=sources * BINS)
    per_source = coarse.reshape(sources, BINS)
    below = np.concatenate((np.zeros((sources, 1)), np.cumsum(per_source, axis=1)), axis=1)  # sum of bins < b
    crossing = {i: min(int(np.searchsorted(below[i], fractions[i], side="right")) - 1, BINS - 1) for i in wanted}
    fine = np.zeros((sources, BINS))
    for keys, src, lens in arrays():
        top = (keys >> np.uint64(48)).astype(np.int64)
        for i in wanted:
            mask = (src == i) & (top == crossing[i])
            if mask.any():
                low = ((keys[mask] >> np.uint64(32)) & np.uint64(0xFFFF)).astype(np.int64)
                fine[i] += np.bincount(low, weights=lens[mask], minlength=BINS)
    for i in wanted:
        sums = below[i][crossing[i]] + np.concatenate(([0.0], np.cumsum(fine[i])))
        j = int(np.argmin(np.abs(sums - fractions[i])))
        result[i] = min((crossing[i] << 48) + (j << 32), (1 << 64) - 1)  # all of a source: the top key
    return result


def copies_of(keys: np.ndarray, src: np.ndarray, copies: list[int], limits: list[int]) -> np.ndarray:
    """How many times each document is written: its source's whole copies, plus one below the threshold."""
    whole = np.asarray(copies, dtype=np.int64)[src]
    # Thresholds reach 2^64 - 2^32 at most, so they fit uint64; compare in uint64 to keep all 64 bits.
    limit = np.asarray(limits, dtype=np.uint64)[src]
    return whole + (keys < limit)


def part_arrays(spec) -> Arrays:
    """A callable yielding each done part's (keys, sources, lengths), memory-mapped."""
    def each() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        for index in spec.part_indices():
            keys = np.load(spec.part_path(index, ".keys.npy"), mmap_mode="r")
            src = np.load(spec.part_path(index, ".src.npy"), mmap_mode="r")
            lens = np.load(spec.part_path(index, ".lens.npy"), mmap_mode="r")
            yield np.asarray(keys), np.asarray(src), np.asarray(lens, dtype=np.float64)
    return each
