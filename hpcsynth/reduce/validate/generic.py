"""Checks every output gets, whatever its format: basic soundness, chatter, refusals, length, loops.

Each check takes what it needs and returns a reason ("name: detail") or None. The basic ones (no text,
an engine error, empty, cut at max_tokens) keep the reduce.* keys they always had and always drop; the
quality ones follow validate.action.
"""

from __future__ import annotations

import re

from hpcsynth.config import Config
from hpcsynth.reduce.validate.markup import plain
from hpcsynth.reduce.validate.ngrams import distinct_count, ngram_hashes, repeated_share, word_ids, words

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


# Line breaks str.splitlines knows besides "\n"; a text without them is split here by "\n" alone.
_OTHER_BREAKS = ("\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")


def split_chatter(text: str) -> tuple[str, str]:
    """(the text without an opening or closing chatty line, what was taken off)."""
    whole = text.strip()
    if not any(mark in whole for mark in _OTHER_BREAKS) and not _may_chatter(whole):
        return whole, ""  # what the lines below give when nothing is taken off, without splitting it
    body = whole.splitlines()
    removed = []
    for _ in range(2):  # "Sure!" then "Here is the table:" on the next line
        if len(body) > 1 and body[0].strip() and _OPENER.match(plain(body[0])):
            removed.append(body.pop(0))
            while body and not body[0].strip():
                body.pop(0)
    if len(body) > 1 and _CLOSER.match(plain(body[-1])):
        removed.append(body.pop())
    return "\n".join(body).strip(), "\n".join(removed)


def _may_chatter(whole: str) -> bool:
    """Whether split_chatter's first or last line could be chatter (`whole`: stripped, lines by "\n")."""
    if "\n" not in whole:
        return False  # one line is never taken off
    first, last = whole[:whole.index("\n")], whole[whole.rindex("\n") + 1:]
    return bool(first.strip() and _OPENER.match(plain(first))) or bool(_CLOSER.match(plain(last)))


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


class Repeats:
    """A text's word n-grams (validate.repetition_n), hashed once for both loop checks."""

    def __init__(self, words: int, grams) -> None:  # type: ignore[no-untyped-def]
        self.words = words
        self.grams = grams  # ngram_hashes of the text's word ids
        self.repeats: int | None = None  # the whole text's, once repetition() has counted them

    @classmethod
    def of(cls, text: str, config: Config) -> Repeats:
        ids = word_ids(text)
        return cls(len(ids), ngram_hashes(ids, config.validate.repetition_n))

    def whole(self) -> float:
        self.repeats = len(self.grams) - distinct_count(self.grams)
        return repeated_share(self.grams, self.repeats)

    def tail(self, words: int, limit: float) -> float | None:
        """The share in the last `words` words, or None when it cannot exceed `limit`: a repeat inside
        the tail is a repeat of the whole text too, so the whole's count bounds the tail's."""
        count = max(0, min(words, self.words) - (self.words - len(self.grams)))
        grams = self.grams[len(self.grams) - count:]
        if self.repeats is not None and repeated_share(grams, min(self.repeats, count)) <= limit:
            return None
        return repeated_share(grams)


def repetition(repeats: Repeats, config: Config) -> str | None:
    ratio = repeats.whole()
    if ratio > config.validate.max_repetition:
        return (f"repetition: {ratio:.2f} of its word {config.validate.repetition_n}-grams repeat (over "
                f"validate.max_repetition={config.validate.max_repetition})")
    return None


def degenerate(repeats: Repeats, config: Config) -> str | None:
    ratio = repeats.tail(config.validate.tail_words, config.validate.max_tail_repetition)
    if ratio is not None and ratio > config.validate.max_tail_repetition:
        return (f"degenerate: its last {min(config.validate.tail_words, repeats.words)} words loop ({ratio:.2f} "
                f"of their {config.validate.repetition_n}-grams repeat, over validate.max_tail_repetition="
                f"{config.validate.max_tail_repetition})")
    return None


__all__ = ["Repeats", "basic", "degenerate", "refusal", "repetition", "split_chatter", "too_short", "word_ids", "words"]
