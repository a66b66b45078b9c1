"""Reading Markdown-ish model output line by line, the way the per-format checks need it."""

from __future__ import annotations

import re

_DECOR = re.compile(r"^[\s>#*_`]+|[\s*_`]+$")


def plain(line: str) -> str:
    """A line without heading marks, quote marks, bold/italic markers and surrounding space."""
    return _DECOR.sub("", line)


def lines(text: str) -> list[str]:
    """Non-empty lines, stripped."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def labelled(line: str, labels: tuple[str, ...]) -> str | None:
    """The text after a label such as "Question:" or "**Q1:**" (any case, optional number), else None."""
    match = re.match(r"^(" + "|".join(labels) + r")\s*\d*\s*[:.)]\s*(.*)$", plain(line), re.IGNORECASE)
    if match is None:
        return None
    return plain(match.group(2))
