"""Validation by format: hand-written outputs of each format, good ones and near misses, each accepted or
refused for the right reason; the generic checks; the thresholds as config keys."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from hpcsynth.config import Config, config_from_dict
from hpcsynth.errors import ConfigError
from hpcsynth.reduce.validate import reason_code, validate_record
from hpcsynth.reduce.validate.ngrams import DistinctSketch, word_ids

SAMPLES = Path(__file__).parent / "samples"
CONFIG = Config()


def sample(name: str) -> str:
    return (SAMPLES / f"{name}.md").read_text()


def check(text: str, fmt: str, config: Config = CONFIG, **record) -> tuple[bool, str, str]:
    return validate_record({"text": text, "finish_reason": "stop", "input_chars": 3000, **record}, fmt, config)


def with_validate(**changes) -> Config:
    return dataclasses.replace(CONFIG, validate=dataclasses.replace(CONFIG.validate, **changes))


@pytest.mark.parametrize("name, fmt, expected", [
    ("table_good", "table", None),
    ("table_no_separator", "table", "table_no_separator"),
    ("table_no_question", "table", "table_no_question"),
    ("faq_good", "faq", None),
    ("faq_bold", "faq", None),
    ("faq_one_pair", "faq", "faq_few_pairs"),
    ("math_good", "math", None),
    ("math_no_final", "math", "math_no_final_answer"),
    ("math_no_steps", "math", "math_no_steps"),
    ("tutorial_good", "tutorial", None),
    ("tutorial_prose", "tutorial", "tutorial_no_steps"),
    ("loop", "faq", "repetition"),
])
def test_hand_written_samples(name: str, fmt: str, expected: str | None) -> None:
    ok, reason, text = check(sample(name), fmt)
    assert reason_code(reason) == (expected or ""), reason
    assert ok is (expected is None)


def test_each_format_refuses_the_other_formats_good_samples() -> None:
    """A prompt whose output came back in another shape is caught by its own format's check."""
    goods = {"table": "table_good", "faq": "faq_good", "math": "math_good", "tutorial": "tutorial_good"}
    for fmt in goods:
        for other, name in goods.items():
            if other == fmt or (fmt, other) in {("tutorial", "math"), ("faq", "table")}:
                continue  # math steps are numbered; a table's Question/Answer is one pair: judged below
            ok, reason, _ = check(sample(name), fmt)
            assert not ok and reason_code(reason).startswith(fmt), (fmt, name, reason)
    assert reason_code(check(sample("table_good"), "faq")[1]) == "faq_few_pairs"


@pytest.mark.parametrize("text, fmt, expected", [
    # table near misses: one data row; a question with nothing after it; a separator of the wrong width
    ("| a | b |\n|---|---|\n| 1 | 2 |\n\nQuestion: What is b when a is 1?\nAnswer: 2", "table", "table_few_rows"),
    ("| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |\n\nQuestion: What is b when a is 3?", "table", "table_no_answer"),
    ("| a | b | c |\n|---|---|\n| 1 | 2 | 3 |\n| 3 | 4 | 5 |\n\nQ: What is c when a is 3?\nA: 5", "table",
     "table_no_separator"),
    ("The document lists three years and what happened in each of them, in order.", "table", "table_missing"),
    # a table without leading pipes, aligned columns, an unlabelled question: accepted
    ("Year | Event\n:---|---:\n1889 | opens\n1909 | kept\n\nWhen did it open?\nIn 1889.", "table", None),
    # faq: questions with no answers under them are not pairs
    ("Q: What is it?\nQ: Why?\nQ: How?\nA: Like this, with a compressor and a refrigerant loop.", "faq",
     "faq_few_pairs"),
    ("### 1. What is it?\nA pump.\n\n### 2. Why use one?\nIt saves energy.", "faq", None),
    # math: \boxed{} counts as the final answer; a bare sum is no word problem
    ("A farmer has 12 rows of 15 apple trees and plants 3 more rows. How many trees are there now?\n\n"
     "First, 12 + 3 = 15 rows.\nThen 15 × 15 = 225 trees.\n\\boxed{225}", "math", None),
    ("What is 2 + 2?\n\nStep 1: 2 + 2 = 4\nStep 2: check 4 - 2 = 2\nFinal answer: 4", "math", "math_no_problem"),
    # tutorial: "Step N" headings count; two bullets are not enough
    ("## Step 1: Prepare\nWater it.\n## Step 2: Lift\nTip it out.\n## Step 3: Settle\nFirm the mix.", "tutorial",
     None),
    ("You need two things:\n- a pot\n- fresh potting mix\nThen repot the plant in spring.", "tutorial",
     "tutorial_no_steps"),
    # free: prose passes the format check
    ("A heat pump moves heat from a cold place to a warm one. It is efficient even in winter.", "free", None),
])
def test_near_misses(text: str, fmt: str, expected: str | None) -> None:
    ok, reason, _ = check(text, fmt, input_chars=len(text))
    assert reason_code(reason) == (expected or ""), reason
    assert ok is (expected is None)


def test_preamble_is_stripped_and_closer_too() -> None:
    text = "Sure! Here is the FAQ based on the document:\n\n" + sample("faq_good") + "\nI hope this helps!"
    ok, reason, cleaned = check(text, "faq")
    assert ok and reason == ""
    assert cleaned == sample("faq_good").strip()
    # On two lines, and in bold; a table whose first line happens to start with "Here" is content.
    ok, _, cleaned = check("Certainly!\n**Here's the table:**\n" + sample("table_good"), "table")
    assert ok and cleaned == sample("table_good").strip()
    assert check("Here is where the tower stands.\n" + sample("table_good"), "table")[2].startswith("Here is")


def test_text_without_chatter_is_left_exactly_as_written() -> None:
    """The demo's tokens must be the model's: a leading space or trailing newline is not ours to strip."""
    text = " " + sample("faq_good") + "\n\n"
    assert check(text, "faq")[2] == text


def test_preamble_reject_and_keep() -> None:
    text = "Here is the FAQ:\n" + sample("faq_good")
    ok, reason, _ = check(text, "faq", with_validate(preamble="reject"))
    assert not ok and reason_code(reason) == "preamble" and "Here is the FAQ" in reason
    ok, reason, cleaned = check(text, "faq", with_validate(preamble="keep"))
    assert ok and cleaned == text


@pytest.mark.parametrize("text", ["I'm sorry, but I can't help with turning this document into a table.",
                                  "As an AI language model, I cannot rewrite this content.",
                                  "Sure!\nI cannot create an FAQ from this document because it has no content."])
def test_refusals(text: str) -> None:
    ok, reason, _ = check(text, "faq", input_chars=len(text))
    assert not ok and reason_code(reason) == "refusal", reason


def test_a_refusal_inside_an_answer_is_content() -> None:
    text = sample("faq_good") + "\nQ: Can I install it myself?\nA: I'm sorry to say you cannot: it needs a licence."
    assert check(text, "faq")[0]


def test_much_shorter_than_the_source() -> None:
    ok, reason, _ = check(sample("faq_good"), "faq", input_chars=18000)
    assert not ok and reason_code(reason) == "too_short" and "validate.min_length_ratio" in reason
    assert check(sample("faq_good"), "faq", input_chars=18000, config=with_validate(min_length_ratio=0.01))[0]
    # Records from before input_chars existed are not judged by it.
    record = {"text": sample("faq_good"), "finish_reason": "stop"}
    assert validate_record(record, "faq", CONFIG)[0]


def test_a_good_start_that_degenerates_is_caught_by_its_tail() -> None:
    loop = " ".join(["and then the pump moves the heat"] * 20)
    text = sample("tutorial_good") * 3 + "\n" + loop  # whole-text repetition stays moderate
    ok, reason, _ = check(text, "tutorial")
    assert not ok and reason_code(reason) in ("degenerate", "repetition"), reason
    ok, reason, _ = check(text, "tutorial", with_validate(max_repetition=0.99))
    assert not ok and reason_code(reason) == "degenerate", reason


def test_basic_checks_always_drop_even_under_keep() -> None:
    keep = with_validate(action="keep")
    assert check("", "faq", keep)[:2] == (False, "empty: 0 chars, under reduce.min_chars=16")
    assert reason_code(check(sample("faq_good"), "faq", keep, finish_reason="error")[1]) == "error"
    assert reason_code(validate_record({"text": None, "finish_reason": "stop"}, "faq", keep)[1]) == "no_text"
    truncating = dataclasses.replace(keep, reduce=dataclasses.replace(keep.reduce, drop_truncated=True))
    assert reason_code(check(sample("faq_good"), "faq", truncating, finish_reason="length")[1]) == "truncated"
    # A quality failure under keep goes in, flagged with its reason.
    ok, reason, _ = check(sample("faq_one_pair"), "faq", keep)
    assert ok and reason_code(reason) == "faq_few_pairs"


def test_skipped_checks_pass_and_the_next_check_speaks() -> None:
    skip = with_validate(skip=("table_no_separator",))
    assert check(sample("table_no_separator"), "table", skip)[0]
    # Skipping one check of a format does not wave the rest through.
    no_question = sample("table_no_separator").split("\n\n")[0]
    assert reason_code(check(no_question, "table", skip)[1]) == "table_no_question"
    both = "A long train ride: 3 hours at 80 km/h, then 2 hours at 60 km/h. How far did it go?\n\nSo far."
    assert reason_code(check(both, "math")[1]) == "math_no_final_answer"
    assert reason_code(check(both, "math", with_validate(skip=("math_no_final_answer",)))[1]) == "math_no_steps"
    assert check(sample("faq_one_pair"), "faq", with_validate(min_faq_pairs=1))[0]


@pytest.mark.parametrize("key, value, says", [
    ("action", "delete", "must be drop or keep"),
    ("preamble", "hide", "must be strip, reject or keep"),
    ("skip", ["table_no_seperator"], "names no check 'table_no_seperator'; checks: preamble, refusal"),
    ("max_repetition", 1.5, "must be between 0 and 1"),
    ("min_faq_pairs", 0, "must be 1 or more"),
])
def test_bad_validate_settings_are_one_clear_line(key: str, value, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"validate": {key: value}}, "my.yaml", {f"validate.{key}": 7})
    assert str(caught.value).startswith(f"my.yaml line 7: 'validate.{key}' {says}")


def test_distinct_sketch_is_exact_when_small_and_close_when_large() -> None:
    small = DistinctSketch(k=64)
    small.add(word_ids("a b a b c"), 2)  # ab ba ab bc: 3 distinct of 4
    assert small.ratio() == pytest.approx(3 / 4)
    records = [[f"w{(r * 500 + i) % 50000}" for i in range(500)] for r in range(300)]  # the corpus 3 times
    exact = len({gram for tokens in records for gram in zip(tokens, tokens[1:])})
    sketches = [DistinctSketch(k=4096), DistinctSketch(k=4096)]
    for sketch in sketches:
        for tokens in records:
            sketch.add(word_ids(" ".join(tokens)), 2)
    assert sketches[0].total == 300 * 499
    assert sketches[0].distinct() == pytest.approx(exact, rel=0.05)
    assert len(sketches[0].kept) == 4096  # bounded, whatever the input
    assert sketches[0].distinct() == sketches[1].distinct()  # deterministic: a report is reproducible


@pytest.mark.parametrize("fmt", ["table", "faq", "math", "tutorial", "free"])
def test_degenerate_whitespace_runs_are_read_in_linear_time(fmt: str) -> None:
    """A model stuck emitting spaces: end-anchored patterns retried at every space were quadratic
    (an 8,000-space line took 0.6 s in one helper, 20,000 spaces ~13 s in the faq check)."""
    import time

    run = " " * 20000
    texts = [f"a{run}b", f"answer 1{run}x", f"Q:{run}?", f"final answer is{run}=", f"|{'-' * 20000} x|\n|{run}-x",
             "A farmer has 12 rows of apple trees. How many trees are there now?\n\nStep 1 = 2\nfinal answer" + run]
    started = time.process_time()
    for text in texts:
        check(text, fmt, input_chars=len(text))
    assert time.process_time() - started < 1.0


def test_hashed_repetition_ratio_equals_the_exact_count() -> None:
    from hpcsynth.reduce.validate.ngrams import repetition_ratio, words

    for path in sorted(SAMPLES.glob("*.md")):
        text = path.read_text() * 2  # doubled: half its n-grams repeat
        tokens = words(text)
        for n in (2, 4):
            grams = list(zip(*(tokens[i:] for i in range(n))))
            assert repetition_ratio(word_ids(text), n) == pytest.approx(1 - len(set(grams)) / len(grams), abs=1e-12)
    assert repetition_ratio(word_ids("a b " * 3), 4) == 0.0  # too short to judge
