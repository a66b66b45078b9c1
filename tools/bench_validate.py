"""What validation by format costs per token, next to what reduce pays anyway: tokenizing the same texts.

In one invocation, on one core, CPU seconds (best of --repeat), over two sets of texts:

  formats  the real Common Crawl sample in ../shared/data/web, each document laid out as a table, an FAQ,
           a math solution, a tutorial and free prose, so every check does its full work
  reduce   bench_reduce.py's web-like documents (--reduce-docs of them), validated as FAQs as that
           benchmark's reduce does: the lengths and mix of a real reduce

For each: the tokenizer's own cost (DocumentTokenizer.documents, as a reduce part calls it, with the
`tokenizers` backend and with gigatoken) and validation's (validate_records, the reduce path; and
validate_record one record at a time), each in Mtok per CPU second, and validation's time per
tokenizing time. Then how real web text scores on the repetition ratios, and `hpcsynth validate` over
a committed run of --run-docs records (CPU seconds, peak RSS).

    python tools/bench_validate.py [--repeat 5] [--reduce-docs 3000] [--run-docs 12000] [--tokenizer PATH]
    python tools/bench_validate.py --code OLD_CHECKOUT   # the validation of another checkout's hpcsynth
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
if "--code" in sys.argv:  # before anything imports hpcsynth: the other checkout's package wins
    sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--code") + 1]).resolve()))
sys.path.insert(1 if "--code" in sys.argv else 0, str(REPO))
sys.path.insert(1, str(REPO / "tools"))
os.environ.update(OMP_NUM_THREADS="1", RAYON_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")

from hpcsynth.config import Config  # noqa: E402
from hpcsynth.reduce import validate  # noqa: E402

sys.path.insert(1, str(REPO / "tests" / "reduce"))  # the verdict tests' corpus: one layout of each format
from verdict_corpus import as_formats  # noqa: E402

SHARED = REPO.parent / "shared" / "data"


def web_documents() -> list[str]:
    import gzip

    docs = []
    for path in sorted((SHARED / "web").glob("*.jsonl*")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            docs += [orjson.loads(line)["text"] for line in handle if line.strip()]
    return docs or [" ".join(f"word{(i * 7 + j) % 500}" for j in range(400)) for i in range(30)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="passes over the texts; the fastest counts")
    parser.add_argument("--tokenizer", default=str(SHARED / "tokenizers" / "gpt-neox-20b.tokenizer.json"))
    parser.add_argument("--reduce-docs", type=int, default=3000, help="bench_reduce documents validated as FAQs")
    parser.add_argument("--run-docs", type=int, default=12000, help="records of the whole-run measurement (0: skip)")
    parser.add_argument("--code", help="a checkout whose hpcsynth does the validating (before/after comparisons)")
    args = parser.parse_args()
    from bench_reduce import make_documents

    from hpcsynth.reduce.fast import choose_backend
    from hpcsynth.reduce.tokenize import load_tokenizer

    config = Config()
    docs = web_documents()
    sets = {
        "formats": [({"text": text, "finish_reason": "stop", "input_chars": len(doc)}, fmt)
                    for doc in docs for fmt, text in as_formats(doc)],
        "reduce": [({"text": text, "finish_reason": "stop"}, "faq") for text in make_documents(args.reduce_docs)],
    }
    hf = load_tokenizer(args.tokenizer)
    fast, note = choose_backend(hf, "auto", [r["text"] for r, _ in sets["formats"]][:20])
    print(f"validation from {Path(validate.__file__).parents[2]}; CPU seconds, best of {args.repeat}; "
          f"load {os.getloadavg()[0]:.1f}; {note or 'gigatoken: ' + str(fast.fast is not None)}")
    for name, items in sets.items():
        texts = [r["text"] for r, _ in items]
        tokens = sum(len(d) - 1 for d in hf.documents(texts))  # without the EOS each document gets
        print(f"{name}: {len(items):,} records, {sum(map(len, texts)) / 1e6:.2f} M chars, {tokens / 1e6:.2f} M tokens")
        rows = {"tokenize, tokenizers backend": lambda: _batches(hf.documents, texts)}
        if fast.fast is not None:
            rows["tokenize, gigatoken backend"] = lambda: _batches(fast.documents, texts)
        if hasattr(validate, "validate_records"):
            rows["validate_records (reduce's path)"] = lambda: list(validate.validate_records(items, config))
        rows["validate_record, one at a time"] = lambda: [validate.validate_record(r, f, config) for r, f in items]
        seconds = {row: best(work, args.repeat) for row, work in rows.items()}
        for row, cpu in seconds.items():
            print(f"  {row:<34} {cpu:7.3f} s  {tokens / cpu / 1e6:6.2f} Mtok per CPU-s")
        ours = min(cpu for row, cpu in seconds.items() if row.startswith("validate"))
        print("  validation time per tokenizing time: " + ", ".join(
            f"{ours / cpu:.2f} ({row.split(', ')[1]})" for row, cpu in seconds.items() if row.startswith("tokenize")))
    refused = [(f, validate.validate_record(r, f, config)[1]) for r, f in sets["formats"]]
    failed = [f"{fmt}: {reason}" for fmt, reason in refused if reason]
    print(f"  formats refused: {len(failed)} of {len(refused)}" + "".join(f"\n    {line[:150]}" for line in failed[:8]))
    repetition_margin(docs, config)
    if args.run_docs:
        whole_run(args.run_docs, args.tokenizer)


def best(work, repeat: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        started = time.process_time()
        work()
        times.append(time.process_time() - started)
    return min(times)


def _batches(encode, texts: list[str], size: int = 256) -> None:  # type: ignore[no-untyped-def]
    for start in range(0, len(texts), size):  # as a reduce part hands them over
        encode(texts[start:start + size])


def repetition_margin(docs: list[str], config: Config) -> None:
    """How far real web text stays under the repetition limits."""
    from hpcsynth.reduce.validate.ngrams import repetition_ratio, words

    def ratio(tokens: list[str]) -> float:
        if hasattr(validate, "validate_records"):
            from hpcsynth.reduce.validate.ngrams import word_ids

            return repetition_ratio(word_ids(" ".join(tokens)), 4)
        return repetition_ratio(tokens, 4)

    free = [ratio(words(d)) for d in docs]
    tails = [ratio(words(d)[-120:]) for d in docs]
    print(f"  real web text, repeated 4-gram share: median {statistics.median(free):.3f}, max {max(free):.3f} "
          f"(limit {config.validate.max_repetition}); last 120 words: max {max(tails):.3f} "
          f"(limit {config.validate.max_tail_repetition})")


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
