"""Which documents a plan keeps: the metadata predicate language, character bounds and seeded sampling.

The predicate language is deliberately small, enough for the subsets studies rephrase:

    int_score >= 3 and language == "en"
    (score > 0.5 or source == 'wiki') and not metadata.lang in ["de", "fr"]

Comparisons (== != < <= > >=, `in [..]`) of a field (dotted for nested objects) with a literal (number,
quoted string, true, false, null), joined by and / or / not and parentheses. A missing field or a value
of another type makes its comparison false, never an error: web metadata is ragged. But a field that no
document has is a misspelling, not ragged metadata: the plan refuses a filter that removed documents by one
(and warns where a field is missing from some documents the filter removed; plan/planner.py).
The same language routes documents to prompts (`prompts: [{name: faq, when: "int_score >= 3"}]`): each
condition is judged once per planned document, by plan/documents.py, under the same field checks.
"""

from __future__ import annotations

import hashlib
import operator
import re
from collections.abc import Callable
from typing import Any

from hpcsynth.errors import ConfigError

Predicate = Callable[[dict], bool]

_TOKEN = re.compile(r"""\s*(?:(?P<num>-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)|(?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')"""
                    r"""|(?P<op>==|!=|<=|>=|<|>|\(|\)|\[|\]|,)|(?P<name>[A-Za-z_][A-Za-z0-9_.]*))""")
_COMPARE = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
            ">=": operator.ge}
_WORDS = {"true": True, "false": False, "null": None}
MISSING = object()


def compile_predicate(text: str, bad: Callable[[str, str], Exception] | None = None,
                      key: str = "plan.filter") -> Predicate:
    """A function record -> bool for `text`; a syntax error raises bad(key, why). `key` names the setting the
    text came from: plan.filter, or a prompt's condition (prompts[i].when), which routes documents to it."""
    try:
        parser = _Parser(_tokenize(text))
        predicate = parser.expression()
        extra = parser.peek()
        if extra is not None:
            raise ValueError(f"unexpected {extra[1]!r} at column {extra[2] + 1}")
        return predicate
    except ValueError as exc:
        kind = "filter" if key == "plan.filter" else "condition"
        why = f"is not a valid {kind} ({exc}); e.g. 'int_score >= 3 and language == \"en\"'"
        if bad is None:
            raise ConfigError(f"'{key}' {why}") from None
        raise bad(key, why) from None


def predicate_fields(text: str) -> list[str]:
    """Top-level field names the predicate reads (a columnar reader loads just these)."""
    return sorted({path.split(".")[0] for path in predicate_paths(text)})


def predicate_paths(text: str) -> list[str]:
    """The fields the predicate reads, dotted as written ('metadata.lang'), sorted."""
    return sorted({value for kind, value, _ in _tokenize(text)
                   if kind == "name" and value not in ("and", "or", "not", "in") and value not in _WORDS})


def lookup(record: dict, dotted: str) -> Any:
    value: Any = record
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return MISSING
        value = value[part]
    return value


class FieldWatch:
    """A predicate's fields against the documents it judges: per field, whether a judged document had it, and
    how many documents the predicate turned away lacking it. A field no document has is a misspelling
    (plan/planner.py refuses it, for plan.filter and for each prompt's condition alike)."""

    def __init__(self, text: str) -> None:
        self.watched = [(f, "." not in f) for f in predicate_paths(text)]
        self.seen = [False] * len(self.watched)
        self.unseen = list(range(len(self.watched)))  # fields no judged document has shown yet
        self.lacking_removed = [0] * len(self.watched)

    def turned_away(self, record: dict) -> None:
        """A document the predicate did not select: count the fields it lacks."""
        self.note(record, range(len(self.watched)), True)

    def note(self, record: dict, fields: Any, removed: bool = False) -> None:
        """Which of `fields` the record has (seen) or lacks (counted, if the predicate removed it). A kept
        document is looked at only while some field is unseen: nearly every one skips this."""
        for i in fields:
            name, top = self.watched[i]
            if (name not in record) if top else (lookup(record, name) is MISSING):
                self.lacking_removed[i] += removed
            else:
                self.seen[i] = True
        if self.unseen:
            self.unseen = [i for i in self.unseen if not self.seen[i]]

    def fields(self) -> dict[str, list[int]]:
        """{field: [1 if a judged document had it else 0, documents the predicate removed lacking it]}."""
        return {name: [int(self.seen[i]), self.lacking_removed[i]] for i, (name, _) in enumerate(self.watched)}


def sampled(source_id: str, seed: int, fraction: float) -> bool:
    """Keep a document with probability `fraction`, decided by its id alone (order and --jobs don't matter)."""
    if fraction >= 1.0:
        return True
    digest = hashlib.blake2b(f"{seed}:{source_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") < fraction * 2**64


def _tokenize(text: str) -> list[tuple[str, Any, int]]:
    tokens: list[tuple[str, Any, int]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise ValueError(f"cannot read {text[pos:].strip()[:20]!r} at column {pos + 1}")
        kind = match.lastgroup or ""  # every alternative of _TOKEN is a named group
        raw = match.group(kind)
        start = match.start(kind)
        if kind == "num":
            value: Any = float(raw) if any(c in raw for c in ".eE") else int(raw)
        elif kind == "str":
            value = re.sub(r"\\(.)", r"\1", raw[1:-1])
        else:
            value = raw
        tokens.append((kind, value, start))
        pos = match.end()
    return tokens


class _Parser:
    def __init__(self, tokens: list[tuple[str, Any, int]]) -> None:
        self.tokens, self.pos = tokens, 0

    def peek(self) -> tuple[str, Any, int] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, Any, int]:
        token = self.peek()
        if token is None:
            raise ValueError("it ends too early")
        self.pos += 1
        return token

    def word(self, word: str) -> bool:
        token = self.peek()
        if token is not None and token[0] == "name" and token[1] == word:
            self.pos += 1
            return True
        return False

    # Predicates run on every document of a corpus: the closures below avoid generators and extra calls.
    def expression(self) -> Predicate:
        left = self.conjunction()
        while self.word("or"):
            left = _either(left, self.conjunction())
        return left

    def conjunction(self) -> Predicate:
        left = self.negation()
        while self.word("and"):
            left = _both(left, self.negation())
        return left

    def negation(self) -> Predicate:
        if self.word("not"):
            inner = self.negation()
            return lambda r: not inner(r)
        token = self.peek()
        if token is not None and token[1] == "(" and token[0] == "op":
            self.take()
            inner = self.expression()
            if self.peek() is None or self.take()[1] != ")":
                raise ValueError("a '(' is not closed")
            return inner
        return self.comparison()

    def comparison(self) -> Predicate:
        kind, field, column = self.take()
        if kind != "name" or field in _WORDS or field in ("and", "or", "not", "in"):
            raise ValueError(f"expected a field name at column {column + 1}, got {field!r}")
        if self.word("in"):
            options = self.options()
            return lambda r: _safe(lambda: lookup(r, field) in options)
        kind, op, column = self.take()
        if kind != "op" or op not in _COMPARE:
            raise ValueError(f"expected one of {' '.join(_COMPARE)} or 'in' after {field!r} at column {column + 1}")
        literal = self.literal()
        compare = _COMPARE[op]
        is_bool = isinstance(literal, bool)
        nested = "." in field

        def check(record: dict) -> bool:
            value = lookup(record, field) if nested else record.get(field, MISSING)
            if value is MISSING or isinstance(value, bool) is not is_bool:
                return False
            try:
                return bool(compare(value, literal))
            except TypeError:  # "abc" >= 3: a value of another type does not match
                return False
        return check

    def options(self) -> tuple:
        if self.take()[1] != "[":
            raise ValueError("'in' takes a list, e.g. language in [\"en\", \"de\"]")
        values = [self.literal()]
        while (token := self.take())[1] == ",":
            values.append(self.literal())
        if token[1] != "]":
            raise ValueError(f"expected ',' or ']' at column {token[2] + 1}")
        return tuple(values)

    def literal(self) -> Any:
        kind, value, column = self.take()
        if kind in ("num", "str"):
            return value
        if kind == "name" and value in _WORDS:
            return _WORDS[value]
        raise ValueError(f"expected a number, a quoted string, true, false or null at column {column + 1}, "
                         f"got {value!r}")


def _either(a: Predicate, b: Predicate) -> Predicate:
    return lambda r: a(r) or b(r)


def _both(a: Predicate, b: Predicate) -> Predicate:
    return lambda r: a(r) and b(r)


def _safe(test: Callable[[], bool]) -> bool:
    try:
        return bool(test())
    except TypeError:  # "abc" >= 3: a value of another type does not match
        return False
