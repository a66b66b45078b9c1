"""Numbers and types read from run files, checked where they enter.

A run file is data anyone with write access to the run directory may have forged or damaged: a shard id
given as a string, a count as a list, a token total of 1e308. Checked once at the boundary against a
shape (`problem`), such a field is one line naming the file and the key; unchecked, it surfaced later as
a traceback far from its cause (`Unknown format code 'd'` at launch, `unsupported operand type(s)` in
status).

A shape is a dict of key -> check, where a check is a predicate (`count`, `number`, `text`...), a nested
shape, or `list_of(check)`. Keys named in `optional` may be absent; every other key of the shape must be
there. Keys the shape does not name are left alone (a newer hpcsynth may add some).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

MAX_COUNT = 1 << 62  # past any count a run holds (tokens of a 486B-token campaign are ~2^39)
MAX_TEXT = 1 << 16  # a name, a path, a hash: never longer

Check = Callable[[Any], bool] | dict[str, Any] | tuple


def count(value: Any) -> bool:
    """A whole number from 0 to MAX_COUNT (a bool is not one, though Python counts it as an int)."""
    return type(value) is int and 0 <= value <= MAX_COUNT


def number(value: Any) -> bool:
    """A finite number from 0 to MAX_COUNT."""
    return type(value) in (int, float) and math.isfinite(value) and 0 <= value <= MAX_COUNT


def positive(value: Any) -> bool:
    return number(value) and value > 0


def text(value: Any) -> bool:
    return type(value) is str and len(value) <= MAX_TEXT


def list_of(check: Check) -> tuple:
    return ("list", check)


def problem(data: Any, shape: dict[str, Check], optional: frozenset[str] = frozenset(), where: str = "") -> str:
    """'' when data fits the shape, else what is wrong with the first key that does not ('prompts[1].name
    is 42, not text')."""
    if not isinstance(data, dict):
        return f"{where or 'it'} is {_shown(data)}, not an object"
    for key, check in shape.items():
        name = f"{where}.{key}" if where else key
        if key not in data:
            if key in optional:
                continue
            return f"{name} is missing"
        found = _problem_of(data[key], check, name)
        if found:
            return found
    return ""


def _problem_of(value: Any, check: Check, name: str) -> str:
    if isinstance(check, dict):
        return problem(value, check, frozenset(), name)
    if isinstance(check, tuple):
        if not isinstance(value, list):
            return f"{name} is {_shown(value)}, not a list"
        for i, item in enumerate(value):
            found = _problem_of(item, check[1], f"{name}[{i}]")
            if found:
                return found
        return ""
    if check(value):
        return ""
    return f"{name} is {_shown(value)}, not {_NAMES.get(check, 'valid')}"


def _shown(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."


_NAMES: dict[Any, str] = {count: "a whole number from 0", number: "a finite number from 0",
                          positive: "a number above 0", text: "text"}
