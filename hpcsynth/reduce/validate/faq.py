"""format: faq. Several question/answer pairs.

A question is a line labelled "Q:"/"Question:" (any case, numbered or bold) or ending in "?"; its
answer is the text up to the next question, with or without an "A:" label. A question with nothing
under it is not a pair.
"""

from __future__ import annotations

from collections.abc import Iterator

from hpcsynth.config import Config
from hpcsynth.reduce.validate.markup import labelled, lines, plain

ANSWER_LABELS = ("answer", "a")


def is_question(line: str) -> bool:
    if labelled(line, ANSWER_LABELS) is not None:
        return False
    label = labelled(line, ("question", "q"))
    return bool(label) or plain(line).endswith("?")


def pairs(text: str) -> tuple[int, int]:
    """(questions, questions with an answer)."""
    questions = answered = 0
    waiting = False
    for line in lines(text):
        if is_question(line):
            questions += 1
            waiting = True
        elif waiting and (labelled(line, ANSWER_LABELS) or labelled(line, ANSWER_LABELS) is None):
            answered += 1
            waiting = False
    return questions, answered


def problems(text: str, config: Config) -> Iterator[str]:
    questions, answered = pairs(text)
    if questions == 0:
        yield "faq_no_questions: no question lines ('Q:' or ending in '?')"
    elif answered < config.validate.min_faq_pairs:
        yield (f"faq_few_pairs: {answered} question/answer pair(s) ({questions} question(s)), "
               f"validate.min_faq_pairs={config.validate.min_faq_pairs}")
