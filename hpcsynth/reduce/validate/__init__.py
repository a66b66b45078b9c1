"""Validation by format: does an output have the shape its prompt asked for, and is it worth training on.

Sits in reduce, between reading a shard's committed outputs and tokenizing them (reduce/select.py
calls it), and runs alone in `hpcsynth validate RUN` (quality.py). Generic checks (generic.py) run on
every record; then the check of the prompt's declared format (table.py, faq.py, math_problem.py,
tutorial.py; "free" has none). Every check returns a reason "name: detail" or None; the name is what
reports count by, the detail is for a person.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from hpcsynth.config import Config
from hpcsynth.reduce.validate import faq, generic, math_problem, table, tutorial

# Each yields its format's failures in order, so that a check named in validate.skip lets the next speak.
FORMAT_CHECKS: dict[str, Callable[[str, Config], Iterator[str]]] = {
    "table": table.problems, "faq": faq.problems, "math": math_problem.problems, "tutorial": tutorial.problems,
}


def reason_code(reason: str) -> str:
    """The check's name, what reports count by ("table_no_separator: ..." -> "table_no_separator")."""
    return reason.split(":", 1)[0]


def validate_record(record: dict, fmt: str, config: Config) -> tuple[bool, str, str]:
    """(goes in, why not or what was flagged, the text to use): reason is "" when every check passed.

    A record failing a basic check (no text, engine error, reduce.min_chars, reduce.drop_truncated)
    never goes in; one failing a quality check goes in only under validate.action: keep.
    """
    reason = generic.basic(record, config)
    if reason:
        return False, reason, ""
    text = record["text"]
    stripped, chatter = generic.split_chatter(text)
    strip = config.validate.preamble == "strip"
    reason = _quality(record, stripped if strip else text, chatter, fmt, config)
    # Untouched unless chatter went: the text's own spaces and newlines are what the model wrote.
    cleaned = stripped if strip and chatter and stripped else text
    return (not reason or config.validate.action == "keep"), reason or "", cleaned


def _quality(record: dict, body: str, chatter: str, fmt: str, config: Config) -> str | None:
    skip = set(config.validate.skip)
    if chatter and config.validate.preamble == "reject" and "preamble" not in skip:
        return f"preamble: {chatter.splitlines()[0][:60]!r}"
    tokens = generic.words(body)
    checks = (
        lambda: generic.refusal(body),
        lambda: generic.too_short(body, record, config),
        lambda: generic.repetition(tokens, config),
        lambda: generic.degenerate(tokens, config),
    )
    for check in checks:
        reason = check()
        if reason and reason_code(reason) not in skip:
            return reason
    for reason in FORMAT_CHECKS[fmt](body, config) if fmt in FORMAT_CHECKS else ():
        if reason_code(reason) not in skip:
            return reason
    return None


__all__ = ["FORMAT_CHECKS", "reason_code", "validate_record"]
