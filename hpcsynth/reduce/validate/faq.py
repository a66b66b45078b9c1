"""format: faq. Several question/answer pairs.

A question is a line labelled "Q:"/"Question:" (any case, numbered or bold) or ending in "?"; its
answer is the text up to the next question, with or without an "A:" label. A question with nothing
under it is not a pair.
"""

from __future__ import annotations

from collections.abc import Iterator

from hpcsynth.config import Config
from hpcsynth.reduce.validate.markup import label_of, lines, plain

ANSWER_LABELS = ("answer", "a")
QUESTION_LABELS = ("question", "q")


def is_question(line: str) -> bool:
    return _is_question(plain(line), label_of(plain(line), ANSWER_LABELS))


def _is_question(flat: str, answer: str | None) -> bool:
    return answer is None and (bool(label_of(flat, QUESTION_LABELS)) or flat.endswith("?"))


def pairs(text: str, enough: int | None = None) -> tuple[int, int]:
    """(questions, questions with an answer); counting stops at `enough` answered ones."""
    questions = answered = 0
    waiting = False
    for line in lines(text):
        flat = plain(line)
        answer = label_of(flat, ANSWER_LABELS)
        if _is_question(flat, answer):
            questions += 1
            waiting = True
        elif waiting and (answer or answer is None):  # a bare "A:" line is not yet the answer
            answered += 1
            waiting = False
            if answered == enough:
                break
    return questions, answered


def problems(text: str, config: Config) -> Iterator[str]:
    questions, answered = pairs(text, enough=config.validate.min_faq_pairs)  # more cannot fail it
    if questions == 0:
        yield "faq_no_questions: no question lines ('Q:' or ending in '?')"
    elif answered < config.validate.min_faq_pairs:
        yield (f"faq_few_pairs: {answered} question/answer pair(s) ({questions} question(s)), "
               f"validate.min_faq_pairs={config.validate.min_faq_pairs}")
