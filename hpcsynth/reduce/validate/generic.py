"""Checks every output gets, whatever its format: basic soundness, chatter, refusals, length, loops.

Each check takes what it needs and returns a reason ("name: detail") or None. The basic ones (no text,
an engine error, empty, cut at max_tokens) keep the reduce.* keys they always had and always drop; the
quality ones follow validate.action.
"""

from __future__ import annotations

import re

from hpcsynth.config import Config
from hpcsynth.reduce.validate.markup import plain
from hpcsynth.reduce.validate.ngrams import repetition_ratio, words

# A first line that talks to the user instead of starting the content ("Sure! Here is the FAQ:").
# "Here is ..." opens content too ("Here is where the tower stands."): it counts as chatter when it ends
# in a colon or names what was asked for.
_OPENER = re.compile(r"^(sure|certainly|of course|absolutely|okay|ok|great|alright)\b.{0,160}$"
                     r"|^(here(?:'s| is| are)|below (?:is|are)|the following (?:is|are)|i(?:'ve| have) "
                     r"(?:created|written|turned|prepared))\b(.{0,160}:|.{0,160}\b(faqs?|table|tutorial|guide|"
                     r"problem|questions?|rewrite|version|summary|based on|from the (?:document|text))\b.{0,80}[.!])$",
                     re.IGNORECASE)
# A last line of pleasantries.
_CLOSER = re.compile(r"^(i hope this helps|hope this helps|let me know if|feel free to|i hope (?:this|these|you))\b",
                     re.IGNORECASE)
# A refusal opens the text; a FAQ answer saying "you cannot" further down is content.
_REFUSAL = re.compile(r"^(?:i'?m sorry|i am sorry|i apologi[sz]e|unfortunately)\b[^\n]{0,120}\b(?:can(?:no|')t|unable|"
                      r"not able|won'?t)\b|^(?:i can(?:no|')t|i am unable to|i'm unable to|i won'?t|as an ai\b)",
                      re.IGNORECASE)
REFUSAL_SPAN = 300  # chars at the start where a refusal is looked for


def basic(record: dict, config: Config) -> str | None:
    """Why a record cannot go in at all (the reduce.* keys), or None."""
    text = record.get("text")
    if not isinstance(text, str):
        return "no_text: text is not a string"
    finish = record.get("finish_reason")
    if finish not in ("stop", "length"):
        return f"error: finish_reason {finish!r}"
    if len(text.strip()) < config.reduce.min_chars:
        return f"empty: {len(text.strip())} chars, under reduce.min_chars={config.reduce.min_chars}"
    if finish == "length" and config.reduce.drop_truncated:
        return "truncated: cut at max_tokens (reduce.drop_truncated)"
    return None


def split_chatter(text: str) -> tuple[str, str]:
    """(the text without an opening or closing chatty line, what was taken off)."""
    body = text.strip().splitlines()
    removed = []
    for _ in range(2):  # "Sure!" then "Here is the table:" on the next line
        if len(body) > 1 and body[0].strip() and _OPENER.match(plain(body[0])):
            removed.append(body.pop(0))
            while body and not body[0].strip():
                body.pop(0)
    if len(body) > 1 and _CLOSER.match(plain(body[-1])):
        removed.append(body.pop())
    return "\n".join(body).strip(), "\n".join(removed)


def refusal(text: str) -> str | None:
    head = plain(text[:REFUSAL_SPAN].lstrip())
    if _REFUSAL.match(head):
        return f"refusal: starts {head[:60]!r}"
    return None


def too_short(text: str, record: dict, config: Config) -> str | None:
    source = record.get("input_chars")
    if not isinstance(source, int) or source <= 0:
        return None  # records from before input_chars was recorded: nothing to compare with
    ratio = len(text) / source
    if ratio < config.validate.min_length_ratio:
        return (f"too_short: {len(text)} chars from a {source}-char document ({ratio:.3f}, under "
                f"validate.min_length_ratio={config.validate.min_length_ratio})")
    return None


def repetition(tokens: list[str], config: Config) -> str | None:
    ratio = repetition_ratio(tokens, config.validate.repetition_n)
    if ratio > config.validate.max_repetition:
        return (f"repetition: {ratio:.2f} of its word {config.validate.repetition_n}-grams repeat (over "
                f"validate.max_repetition={config.validate.max_repetition})")
    return None


def degenerate(tokens: list[str], config: Config) -> str | None:
    tail = tokens[-config.validate.tail_words:]
    ratio = repetition_ratio(tail, config.validate.repetition_n)
    if ratio > config.validate.max_tail_repetition:
        return (f"degenerate: its last {len(tail)} words loop ({ratio:.2f} of their "
                f"{config.validate.repetition_n}-grams repeat, over validate.max_tail_repetition="
                f"{config.validate.max_tail_repetition})")
    return None


__all__ = ["basic", "degenerate", "refusal", "repetition", "split_chatter", "too_short", "words"]
