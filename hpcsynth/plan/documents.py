"""One corpus record -> the shard documents it becomes, or why it is dropped.

Order of the rules: a record without usable text is a reject (bad input, counted against
plan.max_reject_rate); then the filters the user chose (max_chars, min_chars, the predicate, sampling) drop
it by rule; then the prompts' conditions route it (`prompts: [{name, when}]`: the prompts whose condition
selects it, judged once here, listed in the document's "prompts"; a document routed to no prompt is still
planned, an original for the mix); then the long-document policy truncates or splits it. What happened is
kept in the document's "meta", which the worker copies into every output record.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from hpcsynth.config import PlanConfig
from hpcsynth.corpus.filters import MISSING, FieldWatch, compile_predicate, lookup, sampled
from hpcsynth.plan.routing import Router, kept_fields

# Cut points for a long document, coarsest first; a cut must keep at least half the budget.
BOUNDARIES = ("\n\n", "\n", ". ", " ")


class Part(NamedTuple):  # a tuple, not a dataclass: one is made per document of the corpus
    line: bytes  # the document's JSON without its key: {"id", "text", "meta"} (and "prompts", when routed)
    tokens: int
    chars: int
    pairs: int  # prompts the document is routed to (0 without routing: the worker then runs every prompt)


# Part(...) runs a Python-level __new__; tuple.__new__ makes the same Part in C (~0.3 us a document).
_part = tuple.__new__


@dataclass(frozen=True)
class Dropped:
    kind: str  # "reject" (bad input) or "filter" (a rule the user set)
    reason: str
    rule: str = ""
    listed: bool = True  # written to the rejects file (sampling and predicate drops are only counted)


class DocumentBuilder:
    """Runs on every document of the corpus: settings are hoisted into attributes once, and a document
    that needs no cut (nearly all) takes a path without the cutting bookkeeping."""

    def __init__(self, plan: PlanConfig, bytes_per_token: float, routes: tuple[tuple[str, str], ...] = ()) -> None:
        self.plan = plan
        self.bytes_per_token = bytes_per_token
        self.predicate: Callable[[dict], bool] | None = compile_predicate(plan.filter) if plan.filter else None
        self.budget = (int(plan.long_doc_tokens * bytes_per_token) if plan.long_doc_tokens
                       else plan.long_doc_chars)
        self.keep = [(f, "." not in f) for f in kept_fields(plan, routes)]
        self.text_key, self.id_key = plan.text_key, plan.id_key
        self.max_chars, self.min_chars = plan.max_chars, plan.min_chars
        self.sample = plan.sample_fraction < 1.0
        # The predicate's fields: a field no document has is a misspelling (planner.py refuses it).
        self.watch = FieldWatch(plan.filter)  # no filter: no fields
        self.judged = 0
        self.router = Router(routes) if routes else None

    def source_id(self, record: dict, name: str, position: int) -> str:
        value = record.get(self.id_key)
        # No id in the corpus: the file name and position are stable as long as the file is.
        return f"{name}:{position}" if value is None or value == "" else str(value)

    def build(self, record: dict, source_id: str, source: str, unit: str, position: int) -> list[Part] | Dropped:
        """The shard documents of one record; `unit` ("line" or "row") and `position` locate it in `source`."""
        text = record.get(self.text_key)
        if not isinstance(text, str):
            if text is None:
                return Dropped("reject", f"no string field {self.text_key!r}")
            return Dropped("reject", f"field {self.text_key!r} is {type(text).__name__}, not a string")
        if not text or text.isspace():
            return Dropped("reject", "empty text")
        chars = len(text)
        if self.max_chars and chars > self.max_chars:
            return Dropped("filter", f"{chars} characters, above plan.max_chars={self.max_chars}", "max_chars")
        if chars < self.min_chars:
            return Dropped("filter", f"{chars} characters, below plan.min_chars={self.min_chars}", "min_chars")
        if self.predicate is not None:
            self.judged += 1
            watch = self.watch
            if not self.predicate(record):
                watch.turned_away(record)
                return Dropped("filter", "plan.filter", "filter", listed=False)
            if watch.unseen:
                watch.note(record, watch.unseen)
        if self.sample and not sampled(source_id, self.plan.sample_seed, self.plan.sample_fraction):
            return Dropped("filter", "plan.sample_fraction", "sample", listed=False)
        router = self.router
        routed = None if router is None else router.route(record)
        fields = None
        if self.keep:
            fields = {}
            for key, top in self.keep:
                value = record.get(key, MISSING) if top else lookup(record, key)
                fields[key] = value if value.__class__ in _PLAIN else _plain(value)
        try:
            if chars <= self.budget:  # nearly every document: its meta in one go, keys in _parts()'s order
                meta = ({"source": source, unit: position, "chars": chars, "truncated": False, "kept_fraction": 1.0,
                         "parts": 1, "part": 0} if fields is None else
                        {"source": source, unit: position, "fields": fields, "chars": chars, "truncated": False,
                         "kept_fraction": 1.0, "parts": 1, "part": 0})
                size = chars if text.isascii() else len(text.encode("utf-8", "surrogatepass"))  # estimate_tokens
                tokens = max(1, round(size / self.bytes_per_token))
                if router is None or routed is None:
                    line = orjson.dumps({"id": source_id, "text": text, "meta": meta})
                    return [_part(Part, (line, tokens, chars, 0))]
                line = orjson.dumps({"id": source_id, "text": text, "meta": meta, "prompts": routed[0]})
                router.tally(routed[1], tokens)
                return [_part(Part, (line, tokens, chars, len(routed[0])))]
            meta = {"source": source, unit: position}
            if fields is not None:
                meta["fields"] = fields
            return self._parts(text, source_id, meta, routed)
        except orjson.JSONEncodeError as exc:  # lone surrogates from "\ud800" escapes
            return Dropped("reject", f"text cannot be written as UTF-8 JSON ({exc})")

    def filter_fields(self) -> dict[str, list[int]]:
        """{field: [1 if a judged document had it else 0, documents the predicate removed lacking it]}."""
        return self.watch.fields()

    def _parts(self, text: str, source_id: str, meta: dict[str, Any],
               routed: tuple[list[str], list[int]] | None = None) -> list[Part]:
        chars = len(text)
        texts = [text]
        if chars > self.budget and self.plan.long_docs == "truncate":
            texts = [text[:cut_point(text, self.budget)]]
        elif chars > self.budget and self.plan.long_docs == "split":
            texts = split_text(text, self.budget)
        meta["chars"] = chars
        meta["truncated"] = len(texts) == 1 and len(texts[0]) < chars
        meta["kept_fraction"] = 1.0 if texts[0] is text else round(sum(map(len, texts)) / chars, 4)
        meta["parts"] = len(texts)
        parts = []
        doc: dict[str, Any] = {"id": source_id, "text": text, "meta": meta}
        router = self.router
        if routed is not None:
            doc["prompts"] = routed[0]
        for index, part in enumerate(texts):
            meta["part"] = index
            doc["text"] = part
            tokens = estimate_tokens(part, self.bytes_per_token)
            parts.append(Part(orjson.dumps(doc), tokens, len(part), 0 if routed is None else len(routed[0])))
            if router is not None and routed is not None:
                router.tally(routed[1], tokens)
        return parts


def estimate_tokens(text: str, bytes_per_token: float) -> int:
    # isascii() is O(1) in CPython: most web text skips the encode.
    size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    return max(1, round(size / bytes_per_token))


def cut_point(text: str, budget: int) -> int:
    """Where to cut `text` to at most `budget` characters: the last paragraph, line, sentence or word end."""
    for boundary in BOUNDARIES:
        at = text.rfind(boundary, budget // 2, budget)
        if at > 0:
            return at + (1 if boundary == ". " else 0)
    return budget


def split_text(text: str, budget: int) -> list[str]:
    parts = []
    while len(text) > budget:
        cut = cut_point(text, budget)
        parts.append(text[:cut])
        text = text[cut:].lstrip("\n ")
    if text:
        parts.append(text)
    return parts


_PLAIN = frozenset((str, int, float, bool, list, dict, type(None)))  # kept as they are by _plain()


def _plain(value: Any) -> Any:
    """A kept field as JSON can hold it (a missing field is null)."""
    if value is MISSING:
        return None
    if value is None or isinstance(value, (str, int, float, bool, list, dict)):
        return value
    return str(value)
