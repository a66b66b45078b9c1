"""Reading Markdown-ish model output line by line, the way the per-format checks need it."""

from __future__ import annotations

import functools
import re

_LEFT = " \t\r\f\v>#*_`"
_RIGHT = " \t\r\f\v*_`"


def plain(line: str) -> str:
    """A line without heading marks, quote marks, bold/italic markers and surrounding space.

    str.strip, not a regex: an end-anchored pattern retried at every space of a long run of them is
    quadratic (a degenerate 8,000-space line took 0.6 s; linear here)."""
    return line.lstrip(_LEFT).rstrip(_RIGHT)


def lines(text: str) -> list[str]:
    """Non-empty lines, stripped."""
    return [line.strip() for line in text.splitlines() if line.strip()]


# Initials whose only case-insensitive matches are their ASCII upper and lower case ('i', 'k' and 's'
# also match 'İ'/'ı', the Kelvin sign and 'ſ'): for labels starting with these, one look at a line's
# first character rules the label out before any regex runs.
_PLAIN_INITIALS = frozenset("abcdefghjlmnopqrtuvwxyz")


@functools.lru_cache(maxsize=16)
def _label_pattern(labels: tuple[str, ...]) -> tuple[re.Pattern[str], frozenset[str] | None]:
    pattern = re.compile(r"^(" + "|".join(labels) + r")\s*(?:\d+\s*)?[:.)]\s*(.*)$", re.IGNORECASE)
    heads = {label[:1].lower() for label in labels}
    initials = frozenset(heads | {h.upper() for h in heads}) if heads <= _PLAIN_INITIALS else None
    return pattern, initials


def labelled(line: str, labels: tuple[str, ...]) -> str | None:
    """The text after a label such as "Question:" or "**Q1:**" (any case, optional number), else None."""
    return label_of(plain(line), labels)


def label_of(flat: str, labels: tuple[str, ...]) -> str | None:
    """labelled() of a line already through plain()."""
    pattern, initials = _label_pattern(labels)
    if initials is not None and flat[:1] not in initials:
        return None
    match = pattern.match(flat)
    if match is None:
        return None
    return plain(match.group(2))
