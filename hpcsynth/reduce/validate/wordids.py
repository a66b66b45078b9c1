"""Words as 64-bit ids: the one word split that every n-gram measure of a record shares.

A word is what `\\w+` finds in text.lower() (`words`, the reference, kept for tests and tools): runs of
letters, digits and underscores, lowercased, so Markdown pipes and bold markers neither count as words
nor hide a loop. `word_ids` gives each of those words an id without building a Python string per word:
the text's code points go through a lookup table (lowercase if a word character, else 0) and each run
of non-zero codes is hashed as a polynomial from one prefix sum, all in numpy. The regex split and the
per-word hashing it fed were half of validation's time; this costs a few numpy passes per character.

Equal words get equal ids by construction; different words collide with probability ~2^-64 (the
polynomial is finalized with splitmix64; an engineered Thue-Morse word of 2,048+ letters is the known
way to collide such a polynomial, which a collision could only make look repetitive). Ids are the same
in every process, so the quality report's diversity sketch is reproducible.
"""

from __future__ import annotations

import re

import numpy as np

_WORD = re.compile(r"\w+")
_BASE = 0x100000001B3  # odd, so every power has an inverse mod 2^64
_INVERSE = pow(_BASE, -1, 1 << 64)
KEEP_POWERS = 1 << 19  # characters of text (16 bytes each) whose power tables a process keeps
_MASK = (1 << 64) - 1
_SPECIAL = 0xFFFFFFFE  # a code point whose lowercase is not one code point of its own (see _build_page)
_UNBUILT = 0xFFFFFFFF  # a code point of a page of the tables not filled in yet
_PAGE = 256  # code points per lazily built slice of the tables: a text touches a handful
_POINTS = 0x110000

_ASCII = np.zeros(128, dtype=np.uint32)
for _c in range(128):
    _ASCII[_c] = ord(chr(_c).lower()) if _WORD.fullmatch(chr(_c)) else 0
# code point -> its lowercase if a word character, 0 if not, _SPECIAL or _UNBUILT; and whether it
# matches \w (for text that str.lower lowered). Allocated on the first text that is not ASCII.
_LOWER = np.zeros(0, dtype=np.uint32)
_IS_WORD = np.zeros(0, dtype=bool)
_POWERS = np.ones(1, dtype=np.uint64)  # _BASE^i and its inverse^i mod 2^64, grown on demand
_INVERSES = np.ones(1, dtype=np.uint64)


def words(text: str) -> list[str]:
    """The words of a text, as strings: the definition word_ids follows."""
    return _WORD.findall(text.lower())


def word_id(word: str) -> int:
    """The id word_ids gives a (lowercase) word, computed the slow way: for tests."""
    value = sum(ord(char) * pow(_BASE, i, 1 << 64) for i, char in enumerate(word)) & _MASK
    return int(splitmix64(np.array([value], dtype=np.uint64))[0])


def word_ids(text: str) -> np.ndarray:
    """One uint64 id per word of `words(text)`, in order; a long text a slice at a time."""
    if len(text) <= KEEP_POWERS:
        return word_ids_many([text])[0]
    return np.concatenate([word_ids_many([piece])[0] for piece in _slices(text)])


def _slices(text: str):  # type: ignore[no-untyped-def]
    """A long text cut after a space or line break near every KEEP_POWERS characters: a 50 MB record
    costs one slice's arrays (~60 bytes a character where str.lower must see context), not the
    record's. No word runs across a space, and str.lower's one context rule (a final sigma) reads
    only letters and case-ignorable marks next to it, never through a space: same ids as whole."""
    start = 0
    while start < len(text):
        end = start + KEEP_POWERS
        if end >= len(text):
            yield text[start:]
            return
        cut = max(text.rfind(" ", start, end), text.rfind("\n", start, end))
        if cut < 0:  # one word longer than a slice: up to the next space or line break
            found = [i for i in (text.find(" ", end), text.find("\n", end)) if i >= 0]
            cut = min(found) if found else len(text) - 1
        yield text[start:cut + 1]
        start = cut + 1


def word_ids_many(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(the word ids of all the texts, one after another; where each text's start, and the end).

    One pass over the texts joined by line breaks (no word runs across one): numpy's cost per call,
    not per character, is most of it for texts of a few hundred words.
    """
    if not texts:
        return np.zeros(0, dtype=np.uint64), np.zeros(1, dtype=np.int64)
    if len(texts) > 1 and any(len(text) > KEEP_POWERS for text in texts):
        return _one_by_one(texts)  # a long one is cut into slices (word_ids), not joined whole
    joined = "\n".join(texts)
    if joined.isascii():
        codes = _ASCII[np.frombuffer(joined.encode("ascii"), dtype=np.uint8)]
    else:
        points = _code_points(joined)
        codes = _LOWER[points] if len(_LOWER) else np.full(len(points), _UNBUILT, dtype=np.uint32)
        if codes.max() >= _SPECIAL:
            codes = _with_pages(points, codes)
            if codes.max() == _SPECIAL:
                # 'İ' lowers to two code points, 'Σ' to σ or ς by its neighbours: str.lower decides,
                # and as it may change lengths, text by text.
                return _one_by_one(texts) if len(texts) > 1 else _lowered(joined)
    ids, starts = _windowed_run_hashes(codes)
    offsets = np.cumsum([0] + [len(text) + 1 for text in texts])
    offsets[-1] -= 1
    return splitmix64(ids), np.searchsorted(starts, offsets)


def _one_by_one(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    parts = [word_ids(text) for text in texts]
    return np.concatenate(parts), np.cumsum([0] + [len(part) for part in parts])


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def _lowered(text: str) -> tuple[np.ndarray, np.ndarray]:
    """word_ids_many([text]) of a text holding code points that str.lower must see in context."""
    points = _code_points(text.lower())
    _with_pages(points, _LOWER[points])
    ids, _ = _windowed_run_hashes(np.where(_IS_WORD[points], points, 0).astype(np.uint32))
    return splitmix64(ids), np.array([0, len(ids)])


def _with_pages(points: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """`codes` (_LOWER[points]) once every page the points fall in is built."""
    missing = codes == _UNBUILT
    if not missing.any():
        return codes
    for page in np.unique(points[missing] // _PAGE):
        _build_page(int(page))
    return _LOWER[points]


def _build_page(page: int) -> None:
    """Fill in one page of the tables (~0.3 ms; a text touches a handful, a process a few dozen)."""
    global _LOWER, _IS_WORD
    if not len(_LOWER):
        _LOWER, _IS_WORD = np.full(_POINTS, _UNBUILT, np.uint32), np.zeros(_POINTS, bool)
    for point in range(page * _PAGE, (page + 1) * _PAGE):
        char = chr(point)
        lower = char.lower()
        _IS_WORD[point] = _WORD.fullmatch(char) is not None
        if len(lower) != 1 or char == "\u03a3":  # the only context-dependent lowercase str.lower knows
            _LOWER[point] = _SPECIAL
        else:
            _LOWER[point] = ord(lower) if _WORD.fullmatch(lower) else 0


def _windowed_run_hashes(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """_run_hashes over windows of about KEEP_POWERS codes, cut where no word is: a huge output costs
    a window's arrays at a time, not ~40 bytes per character of it at once."""
    if len(codes) <= KEEP_POWERS:
        return _run_hashes(codes)
    pieces, start = [], 0
    while start < len(codes):
        end = min(start + KEEP_POWERS, len(codes))
        if end < len(codes) and codes[end - 1] != 0:  # inside a word: cut after the last gap before it
            gaps = np.flatnonzero(codes[start:end] == 0)
            if len(gaps):
                end = start + int(gaps[-1]) + 1
            else:  # a word longer than a window: take all of it
                after = np.flatnonzero(codes[end:] == 0)
                end = end + int(after[0]) if len(after) else len(codes)
        ids, starts = _run_hashes(codes[start:end])
        pieces.append((ids, starts + start))
        start = end
    return np.concatenate([ids for ids, _ in pieces]), np.concatenate([starts for _, starts in pieces])


def _run_hashes(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sum(code[s + i] * BASE^i) over each maximal run from s of non-zero codes, mod 2^64; each s)."""
    word = codes != 0
    starts = np.flatnonzero(word[1:] > word[:-1]) + 1
    if len(word) and word[0]:
        starts = np.concatenate(([0], starts))
    if not len(starts):
        return np.zeros(0, dtype=np.uint64), starts
    powers, inverses = _powers(len(codes))
    # A run's sum reaches to the next run's start: the codes between are 0 and add nothing.
    return np.add.reduceat(codes * powers[:len(codes)], starts) * inverses[starts], starts  # wraps, as meant


def _powers(count: int) -> tuple[np.ndarray, np.ndarray]:
    """BASE^i and BASE^-i for i < count: kept up to KEEP_POWERS, made for the call beyond (one huge
    output must not leave a table of its size behind in a long-lived reduce process)."""
    global _POWERS, _INVERSES
    if count > KEEP_POWERS:
        return _geometric(_BASE, count), _geometric(_INVERSE, count)
    if len(_POWERS) < count:
        size = min(KEEP_POWERS, max(count, 2 * len(_POWERS), 1 << 14))
        _POWERS, _INVERSES = _geometric(_BASE, size), _geometric(_INVERSE, size)
    return _POWERS, _INVERSES


def _geometric(ratio: int, size: int) -> np.ndarray:
    steps = np.full(size, ratio, dtype=np.uint64)
    steps[0] = 1
    return np.cumprod(steps)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """A bijective mix of 64-bit values, so that related inputs give unrelated outputs."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))
