"""Validation on hostile text: huge records, context-dependent lowercase, surrogates, NULs, RTL, marks.
The word ids must equal the reference split's and a long record must cost a slice of it, not all of it."""

from __future__ import annotations

import numpy as np
import pytest

from hpcsynth.config import config_from_dict
from hpcsynth.reduce.validate import validate_record
from hpcsynth.reduce.validate import wordids
from hpcsynth.reduce.validate.wordids import KEEP_POWERS, word_id, word_ids, word_ids_many, words


def reference(text: str) -> np.ndarray:
    known: dict[str, int] = {}
    for w in words(text):
        if w not in known:
            known[w] = word_id(w)
    return np.array([known[w] for w in words(text)], dtype=np.uint64)


def test_a_long_record_is_split_in_slices_with_the_same_ids(monkeypatch) -> None:
    """A 50 MB record took ~40-60 bytes a character at once (2 GB for 56 MB of Greek and Turkish text);
    now the code point arrays never exceed a slice, and the ids are those of the whole-text split."""
    rng = np.random.default_rng(0)
    alphabet = list("ab Σς'\u0301İi\n\u05d0 1_-")
    text = "".join(rng.choice(alphabet, size=2 * KEEP_POWERS + 17))
    text = "ab " * ((KEEP_POWERS - 3) // 3) + "ΑΣ ΑΣ" + text  # a final sigma right before the first cut
    largest = []
    points = wordids._code_points
    monkeypatch.setattr(wordids, "_code_points", lambda t: largest.append(len(t)) or points(t))
    assert np.array_equal(word_ids(text), reference(text))
    assert max(largest) <= 2 * KEEP_POWERS  # lowercase may double a slice ('İ' is two code points)
    ids, starts = word_ids_many(["short one", text, "İ tail"])
    assert np.array_equal(ids, reference("short one\n" + text + "\nİ tail"))
    assert list(starts) == [0, 2, 2 + len(reference(text)), len(ids)]


@pytest.mark.parametrize("text", ["a\ud800b \udfff c\ud83d some more words here", "x\0y \0 z\0 and more words too",
                                  "\u0301\u0302\u0303" * 40, "שלום עולם \u202e مرحبا بالعالم " * 5,
                                  "!!! ... ??? *** ---" * 5, "ΣΑΣ ΟΔΟΣ İstanbul ﬁﬂ ẞ 😀 ＡＢＣ" * 3])
def test_hostile_text_gets_a_verdict_and_reference_ids(text: str) -> None:
    assert np.array_equal(word_ids(text), reference(text))
    record = {"id": "0-0/faq", "prompt": "faq", "text": text, "finish_reason": "stop"}
    ok, check, reason = validate_record(record, "faq", config_from_dict({}))
    assert isinstance(ok, bool) and (ok or reason)
