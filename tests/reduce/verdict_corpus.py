"""A corpus of outputs on which validation's verdicts must never change when only its speed does.

The hand-written samples, and (when ../shared/data/web is present) the 30 real Common Crawl documents
laid out in each format, each in variants that reach every check: a chatty preamble and closer, CRLF
line breaks, a looping tail, a text repeated whole, Greek capitals and a Turkish dotted I (whose
lowercase depends on context or has two code points), a refusal, a cut-short text; under four
configs. tests/reduce/verdicts.json holds what the code gave before the fast word split (issue 13
follow-up); `python tests/reduce/verdict_corpus.py OUT` writes it again from whatever hpcsynth it imports.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

SAMPLES = Path(__file__).parent / "samples"
WEB = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "web"
CONFIGS = {
    "default": {},
    "reject-keep": {"preamble": "reject", "action": "keep"},
    "loose": {"preamble": "keep", "skip": ("repetition", "too_short"), "min_faq_pairs": 1,
              "max_tail_repetition": 0.2, "min_tutorial_steps": 1},
    "bigrams": {"repetition_n": 2, "tail_words": 30, "max_repetition": 0.1, "min_faq_pairs": 4},
}


def web_documents() -> list[str]:
    docs = []
    for path in sorted(WEB.glob("*.jsonl*")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as handle:
            docs += [json.loads(line)["text"] for line in handle if line.strip()]
    return docs


def as_formats(doc: str) -> list[tuple[str, str]]:
    """One web document laid out in each format, its sentences as the content."""
    sentences = [s.strip() for s in doc.replace("\n", " ").split(". ") if len(s.strip()) > 20][:40] or [doc[:200]]
    table = "| # | fact | length |\n|---|---|---|\n" + "\n".join(
        f"| {i} | {s[:120]} | {len(s)} |" for i, s in enumerate(sentences))
    table += "\n\nQuestion: How long is fact 1?\nAnswer: 42."
    faq = "\n\n".join(f"Q: What does part {i} say?\nA: {s}." for i, s in enumerate(sentences))
    math = (f"A shop sells {len(sentences)} items at $4 each and {len(doc) % 97} more at $3. What is the total?\n\n"
            + "\n".join(f"Step {i}: {s[:80]} gives {i} + {i} = {2 * i}." for i, s in enumerate(sentences))
            + "\nFinal answer: $7.")
    tutorial = "You will learn the subject.\n\n" + "\n".join(f"{i}. {s}." for i, s in enumerate(sentences, 1))
    return [("table", table), ("faq", faq), ("math", math), ("tutorial", tutorial), ("free", doc)]


def variants(text: str) -> Iterator[tuple[str, str, str]]:
    """(name, text, finish_reason)."""
    yield "plain", text, "stop"
    yield "chatter", "Sure! Here is the FAQ you asked for:\n\n" + text + "\n\nI hope this helps!", "stop"
    yield "crlf", text.replace("\n", "\r\n"), "stop"
    yield "tail_loop", text + "\n" + " ".join(["and then it goes on"] * 40), "stop"
    yield "tail_near", text + "\n" + " ".join(f"and then {i % 7} goes on" for i in range(30)), "stop"
    yield "repeated", text * 3, "stop"
    yield "greek", "ΣΟΦΙΑ ΌΣΟΣ İstanbul ΣΑΣ σας\n" + text.replace("the ", "ΤΗΣ "), "stop"
    yield "refusal", "I'm sorry, but I cannot turn this into the format you asked for.\n" + text, "stop"
    yield "short", text[:len(text) // 40], "length"


def cases() -> Iterator[tuple[str, dict, str]]:
    """(key, record, format) over every base text and variant."""
    bases = [(f"sample:{p.stem}", p.stem.split("_")[0] if p.stem != "loop" else "faq", p.read_text())
             for p in sorted(SAMPLES.glob("*.md"))]
    bases += [(f"web:{i}:{fmt}", fmt, text) for i, doc in enumerate(web_documents()) for fmt, text in as_formats(doc)]
    for base, fmt, text in bases:
        for name, variant, finish in variants(text):
            yield f"{base}:{name}", {"text": variant, "finish_reason": finish, "input_chars": len(text)}, fmt


def configs():  # type: ignore[no-untyped-def]
    from hpcsynth.config import Config

    base = Config()
    return {name: dataclasses.replace(base, validate=dataclasses.replace(base.validate, **changes))
            for name, changes in CONFIGS.items()}


def digest(ok: bool, reason: str, text: str) -> str:
    return hashlib.sha256(json.dumps([ok, reason, text]).encode()).hexdigest()[:16]


def verdicts() -> dict[str, str]:
    """base text -> one digest of (ok, reason, text to use) over its variants and the configs, one
    record at a time through validate_record."""
    from hpcsynth.reduce.validate import validate_record

    out: dict[str, hashlib._Hash] = {}
    for config_name, config in configs().items():
        for key, record, fmt in cases():
            base = key.rsplit(":", 1)[0]
            out.setdefault(base, hashlib.sha256()).update(digest(*validate_record(record, fmt, config)).encode())
    return {base: h.hexdigest()[:16] for base, h in out.items()}


if __name__ == "__main__":
    Path(sys.argv[1]).write_text(json.dumps(verdicts(), indent=0, sort_keys=True) + "\n")
