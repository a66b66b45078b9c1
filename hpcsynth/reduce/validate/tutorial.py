"""format: tutorial. Numbered steps or bullets ("1.", "2)", "Step 3:", "- ", "* ", "• ")."""

from __future__ import annotations

import re
from collections.abc import Iterator

from hpcsynth.config import Config

_LEAD = re.compile(r"^(?:#{1,6}\s*|\*\*)")  # a heading mark or bold around "Step 1" / "1."
_ITEM = re.compile(r"^(?:\d+[.)]\s+|step\s*\d+\b|[-*•+]\s+)\S?", re.IGNORECASE)


def steps(text: str, enough: int | None = None) -> int:
    """Lines that are a step or a bullet; counting stops at `enough`."""
    found = 0
    for line in text.splitlines():
        if _ITEM.match(_LEAD.sub("", line.strip())):
            found += 1
            if found == enough:
                break
    return found


def problems(text: str, config: Config) -> Iterator[str]:
    found = steps(text, enough=config.validate.min_tutorial_steps)  # more cannot fail it
    if found < config.validate.min_tutorial_steps:
        yield (f"tutorial_no_steps: {found} numbered step(s) or bullet(s), validate.min_tutorial_steps="
               f"{config.validate.min_tutorial_steps}")
