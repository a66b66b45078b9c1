"""Routing documents to prompts (`prompts: [{name: faq, when: "int_score >= 3"}, math]`): decided at plan time.

Each prompt's condition (corpus/filters.py's language, as plan.filter) is judged once per planned document,
by the Router DocumentBuilder holds (plan/documents.py), after plan.filter and sampling: the document's
shard line lists the prompts it is routed to ("prompts"), each shard's manifest row its routed (document,
prompt) pairs ("pairs"), and the manifest header the totals (`totals` here; read back by
manifest.planned_routing). Workers generate exactly the listed pairs (generate/shard.py) and never judge a
condition; a document routed to no prompt is still planned, an original for the mix.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hpcsynth.config import Config, PlanConfig
from hpcsynth.corpus.filters import FieldWatch, compile_predicate, predicate_paths


def routes_of(config: Config) -> tuple[tuple[str, str], ...]:
    """(prompt, its condition or "") for every prompt of a Config, in order; () when none has a condition,
    and the plan is then the one it was before routing existed, byte for byte."""
    if not config.prompt_when:
        return ()
    return tuple((name, config.prompt_when.get(name, "")) for name in config.prompts)


def kept_fields(plan: PlanConfig, routes: tuple[tuple[str, str], ...]) -> list[str]:
    """plan.keep_fields, then the fields the prompts' conditions read: each shard document's meta shows what
    routed it."""
    keep = list(plan.keep_fields)
    for _, when in routes:
        keep += [path for path in predicate_paths(when) if path not in keep] if when else []
    return keep


class Router:
    """The prompts' conditions, judged once per planned document: which prompts it is routed to. Counts, per
    prompt, the shard documents and their estimated tokens routed to it, and those routed to none; per
    condition, its fields against the documents (FieldWatch), so a misspelled field fails the plan."""

    def __init__(self, routes: tuple[tuple[str, str], ...]) -> None:
        self.names = [name for name, _ in routes]
        self.tests: list[tuple[int, Callable[[dict], bool], FieldWatch] | None] = [
            (i, compile_predicate(when, key=f"prompts[{i}].when"), FieldWatch(when)) if when else None
            for i, (_, when) in enumerate(routes)]
        self.judged = 0
        self.documents = [0] * len(routes)
        self.est_tokens = [0] * len(routes)
        self.unrouted = 0

    def route(self, record: dict) -> tuple[list[str], list[int]]:
        """(names, indexes) of the prompts `record` is routed to, in the config's order."""
        self.judged += 1
        names, indexes = [], []
        for i, test in enumerate(self.tests):
            if test is not None:
                _, predicate, watch = test
                if not predicate(record):
                    watch.turned_away(record)
                    continue
                if watch.unseen:
                    watch.note(record, watch.unseen)
            names.append(self.names[i])
            indexes.append(i)
        return names, indexes

    def tally(self, indexes: list[int], tokens: int) -> None:
        """One shard document routed to `indexes`."""
        if not indexes:
            self.unrouted += 1
        for i in indexes:
            self.documents[i] += 1
            self.est_tokens[i] += tokens

    def counts(self) -> dict[str, Any]:
        """What a group adds to the plan's routing: {"judged", "unrouted", "documents", "est_tokens",
        "fields": {"prompts[i].when": FieldWatch.fields()}}."""
        return {"judged": self.judged, "unrouted": self.unrouted, "documents": list(self.documents),
                "est_tokens": list(self.est_tokens),
                "fields": {f"prompts[{test[0]}].when": test[2].fields() for test in self.tests if test is not None}}


def totals(groups: list[dict[str, Any]], routes: tuple[tuple[str, str], ...],
           removed: list[tuple[dict, int]]) -> dict[str, Any]:
    """The manifest's "routing" ({} without it) from the groups' Router.counts(): each prompt's condition, the
    routed pairs (status's records expected), the documents routed to no prompt, and per prompt its documents
    and their estimated tokens (estimate's rows). `removed`: the shard documents a duplicate id took out, with
    their estimated tokens."""
    if not routes:
        return {}
    documents, est_tokens, unrouted = [0] * len(routes), [0] * len(routes), 0
    for counts in groups:
        documents = [a + b for a, b in zip(documents, counts["documents"])]
        est_tokens = [a + b for a, b in zip(est_tokens, counts["est_tokens"])]
        unrouted += counts["unrouted"]
    index = {name: i for i, (name, _) in enumerate(routes)}
    for doc, tokens in removed:
        unrouted -= not doc.get("prompts")
        for name in doc.get("prompts", ()):
            documents[index[name]] -= 1
            est_tokens[index[name]] -= tokens
    return {"prompts": [{"name": name, **({"when": when} if when else {})} for name, when in routes],
            "pairs": sum(documents), "unrouted": unrouted,
            "by_prompt": {name: {"documents": documents[i], "est_tokens": est_tokens[i]}
                          for i, (name, _) in enumerate(routes)}}
