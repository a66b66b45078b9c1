"""The fast word split and n-gram counting behind validation give the verdicts the slow ones gave.

word_ids must find exactly the words of `\\w+` over str.lower() (every code point, context-dependent
lowercase included), batches must not change a verdict, the early exits must never skip a failure,
and the whole corpus of tests/reduce/verdict_corpus.py must keep the verdicts recorded before.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from hpcsynth.config import Config
from hpcsynth.reduce.validate import generic, markup, validate_record, validate_records, wordids
from hpcsynth.reduce.validate.wordids import word_id, word_ids, word_ids_many, words

sys.path.insert(0, str(Path(__file__).parent))
import verdict_corpus  # noqa: E402

CONFIG = Config()


def reference_ids(text: str) -> list[int]:
    return [word_id(word) for word in words(text)]


def test_every_code_point_is_split_and_lowered_as_the_regex_does() -> None:
    everything = [chr(c) for c in range(sys.maxunicode + 1)]
    spaced = " ".join(everything)  # each character alone: its class and its lowercase
    assert word_ids(spaced).tolist() == reference_ids(spaced)
    shuffled = everything[:]
    random.Random(7).shuffle(shuffled)
    for start in range(0, len(shuffled), 200_000):  # runs of neighbours: words of mixed scripts
        text = "".join(shuffled[start:start + 200_000])
        assert word_ids(text).tolist() == reference_ids(text)


@pytest.mark.parametrize("seed", range(3))
def test_context_dependent_lowercase_and_batches_follow_the_regex(seed: int) -> None:
    """'Σ' lowers to 'ς' at a word's end, 'İ' to two code points: in a batch they must not shift the
    other texts' words; surrogates, combining marks, digits and underscores as the regex has them."""
    rng = random.Random(seed)
    pool = "aZ_9 \n\t.,|*ΣσςΑΌİIıi\u0307\u0301ß\ud800😀Ⅻ½ǅſ"
    texts = ["".join(rng.choice(pool) for _ in range(rng.randrange(40))) for _ in range(300)]
    texts += ["", "   ", "plain ascii words", "ΣΑΣ σας"]
    for text in texts:
        assert word_ids(text).tolist() == reference_ids(text), repr(text)
    for batch in (texts, [t for t in texts if "İ" not in t and "Σ" not in t], ["ascii only", "", "more words"]):
        ids, bounds = word_ids_many(batch)
        assert len(bounds) == len(batch) + 1 and bounds[-1] == len(ids)
        for i, text in enumerate(batch):
            assert ids[bounds[i]:bounds[i + 1]].tolist() == reference_ids(text), repr(text)


def test_real_text_and_samples_split_as_the_regex_does() -> None:
    texts = [p.read_text() for p in sorted(verdict_corpus.SAMPLES.glob("*.md"))] + verdict_corpus.web_documents()
    for text in texts:
        assert word_ids(text).tolist() == reference_ids(text)
    ids, bounds = word_ids_many(texts)
    assert [ids[bounds[i]:bounds[i + 1]].tolist() for i in range(len(texts))] == [reference_ids(t) for t in texts]


def test_a_text_past_the_kept_power_tables_leaves_none_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wordids, "KEEP_POWERS", 1000)
    monkeypatch.setattr(wordids, "_POWERS", np.ones(1, dtype=np.uint64))
    monkeypatch.setattr(wordids, "_INVERSES", np.ones(1, dtype=np.uint64))
    texts = ["Lorem ipsum dolor sit amet, " * 200 + "x" * 3000 + " tail", "x" * 2500, "ab " * 900 + "Σ" * 1200]
    for text in texts:  # windows of 1,000 characters, cut between words; a 3,000-letter word whole
        assert word_ids(text).tolist() == reference_ids(text)
    ids, bounds = word_ids_many(texts)
    assert [ids[bounds[i]:bounds[i + 1]].tolist() for i in range(3)] == [reference_ids(t) for t in texts]
    assert len(wordids._POWERS) <= 1000


def reference_share(tokens: list[str], n: int) -> float:
    grams = list(zip(*(tokens[i:] for i in range(n))))
    return 0.0 if len(grams) < 12 else 1.0 - len(set(grams)) / len(grams)


@pytest.mark.parametrize("seed", range(4))
def test_loop_checks_match_counting_string_tuples(seed: int) -> None:
    """repetition and degenerate, including the tail check skipped when the whole text's repeats
    cannot reach its limit, give the reasons (ratios included) that counting word tuples gives."""
    rng = random.Random(seed)
    vocabulary = [f"w{i}" for i in range(rng.choice([3, 8, 40, 400]))]
    for _ in range(150):
        tokens = [rng.choice(vocabulary) for _ in range(rng.randrange(0, 300))]
        if rng.random() < 0.5:  # a fresh start that loops at the end
            tokens = [f"u{i}" for i in range(rng.randrange(200))] + tokens[:rng.randrange(1, 40)] * 6
        n, tail = rng.choice([1, 2, 4]), rng.choice([1, 12, 30, 120, 500])
        validate = dataclasses.replace(CONFIG.validate, repetition_n=n, tail_words=tail,
                                       max_repetition=rng.random(), max_tail_repetition=rng.random())
        config = dataclasses.replace(CONFIG, validate=validate)
        repeats = generic.Repeats.of(" ".join(tokens), config)
        whole, tail_share = reference_share(tokens, n), reference_share(tokens[-tail:], n)
        got = generic.repetition(repeats, config)
        assert (got is not None) is (whole > validate.max_repetition), (got, whole)
        if got:
            assert f"{whole:.2f} of its word" in got
        got = generic.degenerate(repeats, config)
        assert (got is not None) is (tail_share > validate.max_tail_repetition), (got, tail_share)
        if got:
            assert f"last {len(tokens[-tail:])} words loop ({tail_share:.2f}" in got


def test_label_shortcut_letters_match_only_their_own_case() -> None:
    """labelled() rules a label out by its first letter before the regex: sound only for letters that
    IGNORECASE matches to nothing else ('k' also matches the Kelvin sign, 's' the long s)."""
    everything = "".join(chr(c) for c in range(sys.maxunicode + 1))
    initials = "".join(sorted(markup._PLAIN_INITIALS))
    found = set(re.findall(f"[{initials}]", everything, re.IGNORECASE))
    assert found == set(initials) | set(initials.upper())
    assert markup.labelled("**Q1:** What is it?", ("question", "q")) == "What is it?"
    assert markup.labelled("ſtep 1: go", ("step",)) == "go"  # 's' takes the regex path


def test_batches_give_the_verdicts_of_one_record_at_a_time() -> None:
    for config in verdict_corpus.configs().values():
        cases = list(verdict_corpus.cases())
        alone = [validate_record(record, fmt, config) for _, record, fmt in cases]
        batched = [verdict[:3] for _, verdict in validate_records(((r, f) for _, r, f in cases), config)]
        assert batched == alone


def test_verdicts_are_the_ones_recorded_before_the_fast_split() -> None:
    """tests/reduce/verdicts.json came from the code with the regex split and string n-grams."""
    recorded = json.loads((Path(__file__).parent / "verdicts.json").read_text())
    now = verdict_corpus.verdicts()
    assert any(key.startswith("sample:") for key in now)
    changed = [key for key in now if recorded.get(key) != now[key]]
    assert not changed, f"verdicts changed for {changed[:10]}"
    if not any(key.startswith("web:") for key in now):
        pytest.skip("shared web documents not present: checked the samples only")
