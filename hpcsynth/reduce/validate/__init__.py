"""Validation by format: does an output have the shape its prompt asked for, and is it worth training on.

Sits in reduce, between reading a shard's committed outputs and tokenizing them (reduce/select.py
calls it), and runs alone in `hpcsynth validate RUN` (quality.py). Generic checks (generic.py) run on
every record; then the check of the prompt's declared format (table.py, faq.py, math_problem.py,
tutorial.py; "free" has none). Every check returns a reason "name: detail" or None; the name is what
reports count by, the detail is for a person.

Records are checked in batches (validate_records): the word split and n-gram hashing behind the
repetition checks run once over a batch in numpy, not once per record, which was most of their cost.
With reduce.decontaminate, the same word ids are looked up in the benchmark table (contamination.py): a
record holding benchmark text is refused with check `contaminated`, whatever validate.action says.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import TYPE_CHECKING, Any, NamedTuple

from hpcsynth.config import Config
from hpcsynth.reduce.validate import faq, generic, math_problem, table, tutorial
from hpcsynth.reduce.validate.ngrams import ngram_hashes
from hpcsynth.reduce.validate.wordids import word_ids_many

if TYPE_CHECKING:
    from hpcsynth.reduce.validate.contamination import Hit, Screen

# Each yields its format's failures in order, so that a check named in validate.skip lets the next speak.
FORMAT_CHECKS: dict[str, Callable[[str, Config], Iterator[str]]] = {
    "table": table.problems, "faq": faq.problems, "math": math_problem.problems, "tutorial": tutorial.problems,
}
BATCH_RECORDS = 128  # records whose words are split in one numpy pass: past ~100 the per-call cost is paid
BATCH_CHARS = 250_000  # and about this much text at most, so the tables and arrays of a batch stay small


class Verdict(NamedTuple):
    ok: bool  # the record goes in
    reason: str  # why not, or what was flagged (validate.action: keep); "" when every check passed
    text: str  # the text to use: a chatty preamble or closing line stripped (validate.preamble: strip)
    ids: Any  # the word ids (wordids.word_ids) of `text` where the checks computed them, else None
    hit: Hit | None = None  # the benchmark text it holds (reduce.decontaminate), with its cause


def reason_code(reason: str) -> str:
    """The check's name, what reports count by ("table_no_separator: ..." -> "table_no_separator")."""
    return reason.split(":", 1)[0]


def validate_record(record: dict, fmt: str, config: Config) -> tuple[bool, str, str]:
    """(goes in, why not or what was flagged, the text to use): reason is "" when every check passed.

    A record failing a basic check (no text, engine error, reduce.min_chars, reduce.drop_truncated)
    never goes in; one failing a quality check goes in only under validate.action: keep.
    """
    return next(validate_records([(record, fmt)], config))[1][:3]  # type: ignore[return-value]


def validate_records(items: Iterable[tuple[dict, str]], config: Config,
                     screen: Screen | None = None) -> Iterator[tuple[dict, Verdict]]:
    """(record, its Verdict) for each (record, its prompt's format), in order, checked a batch at a time;
    `screen`: the benchmarks to refuse (reduce.decontaminate), None for none."""
    items = iter(items)
    while True:
        batch, chars = [], 0
        for item in islice(items, BATCH_RECORDS):
            batch.append(item)
            text = item[0].get("text")
            chars += len(text) if isinstance(text, str) else 0
            if chars >= BATCH_CHARS:
                break
        if not batch:
            return
        yield from zip((record for record, _ in batch), _validate_batch(batch, config, screen))


class _Pending(NamedTuple):
    record: dict
    fmt: str
    body: str  # what the quality checks read
    cleaned: str  # the text to use
    same_words: bool  # body and cleaned have the same words


def _validate_batch(batch: list[tuple[dict, str]], config: Config, screen: Screen | None = None) -> list[Verdict]:
    strip = config.validate.preamble == "strip"
    verdicts: list[Verdict | _Pending] = []
    for record, fmt in batch:
        reason = generic.basic(record, config)
        if reason:
            verdicts.append(Verdict(False, reason, "", None))
            continue
        text = record["text"]
        stripped, chatter = generic.split_chatter(text)
        # Untouched unless chatter went: the text's own spaces and newlines are what the model wrote.
        cleaned = stripped if strip and chatter and stripped else text
        if chatter and config.validate.preamble == "reject" and "preamble" not in config.validate.skip:
            verdicts.append(_verdict(f"preamble: {chatter.splitlines()[0][:60]!r}", cleaned, None, config))
            continue
        body = stripped if strip else text
        # The body differs from the text used only by surrounding space and line breaks, which are no
        # words, unless chatter went from it; then the ids are the cleaned text's only if that is the body.
        verdicts.append(_Pending(record, fmt, body, cleaned, not (strip and chatter) or cleaned is body))
    pending = [v for v in verdicts if isinstance(v, _Pending)]
    ids, bounds = word_ids_many([p.body for p in pending])
    n = config.validate.repetition_n
    grams = ngram_hashes(ids, n)  # a record's n-grams are a slice: those running into the next go unused
    found = screen.find(ids, bounds) if screen is not None else [None] * len(pending)
    out, k = [], 0
    for verdict in verdicts:
        if not isinstance(verdict, _Pending):
            out.append(verdict)
            continue
        first, end = int(bounds[k]), int(bounds[k + 1])
        k += 1
        if found[k - 1] is not None and screen is not None:  # benchmark text: refused under any action
            hit = screen.record_hit(verdict.record, verdict.body, found[k - 1])  # type: ignore[arg-type]
            out.append(Verdict(False, hit.reason(screen.n), verdict.cleaned, None, hit))
            continue
        repeats = generic.Repeats(end - first, grams[first:max(first, end - n + 1)])
        reason = _quality(verdict.record, verdict.body, verdict.fmt, repeats, config)
        out.append(_verdict(reason, verdict.cleaned, ids[first:end] if verdict.same_words else None, config))
    return out


def _verdict(reason: str | None, cleaned: str, ids: Any, config: Config) -> Verdict:
    return Verdict(not reason or config.validate.action == "keep", reason or "", cleaned, ids)


def _quality(record: dict, body: str, fmt: str, repeats: generic.Repeats, config: Config) -> str | None:
    skip = set(config.validate.skip)
    checks = (
        lambda: generic.refusal(body),
        lambda: generic.too_short(body, record, config),
        lambda: generic.repetition(repeats, config),
        lambda: generic.degenerate(repeats, config),
    )
    for check in checks:
        reason = check()
        if reason and reason_code(reason) not in skip:
            return reason
    for reason in FORMAT_CHECKS[fmt](body, config) if fmt in FORMAT_CHECKS else ():
        if reason_code(reason) not in skip:
            return reason
    return None


__all__ = ["FORMAT_CHECKS", "Verdict", "reason_code", "validate_record", "validate_records"]
