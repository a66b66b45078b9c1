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


@functools.lru_cache(maxsize=16)
def _label_pattern(labels: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile(r"^(" + "|".join(labels) + r")\s*(?:\d+\s*)?[:.)]\s*(.*)$", re.IGNORECASE)


def labelled(line: str, labels: tuple[str, ...]) -> str | None:
    """The text after a label such as "Question:" or "**Q1:**" (any case, optional number), else None."""
    match = _label_pattern(labels).match(plain(line))
    if match is None:
        return None
    return plain(match.group(2))
