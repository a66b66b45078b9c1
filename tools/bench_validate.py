"""What validation by format costs, next to what reduce pays anyway: tokenizing the same texts.

In one invocation, on one core, over the same texts: records of each format built from the real Common
Crawl sample in ../shared/data/web (each web document laid out as a table, an FAQ, a math solution, a
tutorial and free prose, so every check does its full work; a word list when the sample is absent):

  anchor   `tokenizers` encode_batch of the texts (what every reduce part does to them; GPT-NeoX vocab)
  ours     validate_record on each text with its format (generic checks + the format's check)

It prints records/s and MB/s of both and their ratio (validation time per tokenizing time), plus how
real web text scores on the repetition ratios (the margin under validate.max_repetition).

  run      `hpcsynth validate` over a committed run of --run-docs records: CPU seconds, peak RSS

    python tools/bench_validate.py [--repeat 5] [--run-docs 12000] [--tokenizer PATH/tokenizer.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))
os.environ.update(OMP_NUM_THREADS="1", RAYON_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")

from hpcsynth.config import Config  # noqa: E402
from hpcsynth.reduce.validate import validate_record  # noqa: E402
from hpcsynth.reduce.validate.ngrams import repetition_ratio, words  # noqa: E402

SHARED = REPO.parent / "shared" / "data"


def web_documents() -> list[str]:
    import gzip

    docs = []
    for path in sorted((SHARED / "web").glob("*.jsonl*")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            docs += [orjson.loads(line)["text"] for line in handle if line.strip()]
    return docs or [" ".join(f"word{(i * 7 + j) % 500}" for j in range(400)) for i in range(30)]


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="passes over the texts; the fastest counts")
    parser.add_argument("--tokenizer", default=str(SHARED / "tokenizers" / "gpt-neox-20b.tokenizer.json"))
    parser.add_argument("--run-docs", type=int, default=12000, help="records of the whole-run measurement (0: skip)")
    args = parser.parse_args()
    from tokenizers import Tokenizer

    docs = web_documents()
    records = [{"text": text, "finish_reason": "stop", "input_chars": len(doc)} | {"fmt": fmt}
               for doc in docs for fmt, text in as_formats(doc)]
    texts = [r["text"] for r in records]
    megabytes = sum(len(t.encode()) for t in texts) / 1e6
    tokenizer = Tokenizer.from_file(args.tokenizer)
    config = Config()

    def best(work) -> float:
        times = []
        for _ in range(args.repeat):
            started = time.process_time()
            work()
            times.append(time.process_time() - started)
        return min(times)

    anchor = best(lambda: tokenizer.encode_batch(texts, add_special_tokens=False))
    ours = best(lambda: [validate_record(r, r["fmt"], config) for r in records])
    refused = [(r["fmt"], validate_record(r, r["fmt"], config)[1]) for r in records]
    print(f"{len(records)} records ({len(docs)} web documents x 5 formats), {megabytes:.2f} MB, best of {args.repeat}, "
          f"CPU seconds, load {os.getloadavg()[0]:.1f}")
    print(f"  anchor tokenizers encode_batch: {anchor:.3f} s  {len(records) / anchor:,.0f} records/s  "
          f"{megabytes / anchor:.1f} MB/s")
    print(f"  ours   validate_record:         {ours:.3f} s  {len(records) / ours:,.0f} records/s  "
          f"{megabytes / ours:.1f} MB/s")
    print(f"  ratio validate/tokenize: {ours / anchor:.2f}")
    free = [repetition_ratio(words(d), 4) for d in docs]
    tails = [repetition_ratio(words(d)[-120:], 4) for d in docs]
    print(f"  real web text, repeated 4-gram share: median {statistics.median(free):.3f}, max {max(free):.3f} "
          f"(limit {config.validate.max_repetition}); last 120 words: max {max(tails):.3f} "
          f"(limit {config.validate.max_tail_repetition})")
    failed = [f"{fmt}: {reason}" for fmt, reason in refused if reason]
    print(f"  refused: {len(failed)} of {len(records)}" + "".join(f"\n    {line[:150]}" for line in failed[:8]))
    if args.run_docs:
        whole_run(args.run_docs, args.tokenizer)


def whole_run(count: int, tokenizer: str) -> None:
    """`hpcsynth validate` over a committed run of `count` web-like records (bench_reduce's runs)."""
    import subprocess
    import tempfile

    from bench_reduce import ENV, make_documents, make_run

    with tempfile.TemporaryDirectory() as tmp:
        docs = make_documents(count)
        run = make_run(Path(tmp), docs, tokenizer)
        megabytes = sum(len(d.encode()) for d in docs) / 1e6
        started = time.monotonic()
        # /usr/bin/time, a small parent: a child forked from this process would count the memory it
        # inherits from us (the documents) in its own peak RSS.
        proc = subprocess.run(["/usr/bin/time", "-f", "%M %U %S", sys.executable, "-m", "hpcsynth", "validate",
                               str(run)], env=ENV, capture_output=True, text=True, check=True)
        wall = time.monotonic() - started
        peak_kb, user, system = proc.stderr.strip().splitlines()[-1].split()
        cpu, peak = float(user) + float(system), int(peak_kb)
        print(f"  hpcsynth validate on a run of {count:,} records ({megabytes:.1f} MB): {cpu:.2f} CPU s, "
              f"{wall:.2f} s wall, peak RSS {peak / 1024:.0f} MB, {megabytes / cpu:.1f} MB per CPU s")


if __name__ == "__main__":
    main()
