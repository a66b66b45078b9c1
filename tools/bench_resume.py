"""What does a restart cost? Recovering finished record ids from a shard's progress log.

Writes a progress log of N finished records shaped like real ones (~1.5 kB of text, FinePhrase's
~359 output tokens), then times, in the same run:
  anchor    parse every line with the standard library's json (a straightforward resume)
  hpcsynth  hpcsynth.generate.progress.recover (what the worker runs on restart)
and prints seconds per 100k records and the ratio. The goal is < 1 s per 100k records; a replaying
resume (FinePhrase's case) would instead regenerate every record: hours of GPU time.

    python tools/bench_resume.py [--records 100000]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpcsynth.generate.progress import header, recover  # noqa: E402

FINGERPRINT = "0" * 64

WORDS = "the of and to in is that for it as with was on be by this are from at or an which".split()


def write_log(path: Path, count: int) -> int:
    rng = random.Random(0)
    with open(path, "wb") as handle:
        handle.write(header(FINGERPRINT))
        for i in range(count):
            text = " ".join(rng.choice(WORDS) for _ in range(300))
            record = {"id": f"{i // 4000:06d}-{i % 4000:06d}/faq", "source_id": f"https://example.org/{i}",
                      "prompt": "faq", "template_hash": "cee8bcbf8ed6e8f6", "text": text,
                      "model": "SmolLM2-1.7B-Instruct", "revision": "", "engine": "vllm",
                      "sampling": {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_tokens": 2048},
                      "seed": rng.getrandbits(31), "finish_reason": "stop", "error": "", "prompt_tokens": 1150,
                      "completion_tokens": 359, "input_chars": 5000, "input_truncated": False,
                      "generate_s": 12.5, "finished_at": 1795513501.432}
            handle.write(orjson.dumps(record) + b"\n")
    return path.stat().st_size


def anchor(path: Path) -> tuple[set[str], int]:
    ids: set[str] = set()
    tokens = 0
    with open(path, encoding="utf-8") as handle:
        next(handle)  # the fingerprint header
        for line in handle:
            record = json.loads(line)
            ids.add(record["id"])
            tokens += record["completion_tokens"]
    return ids, tokens


def timed(fn, path: Path) -> tuple[float, tuple[set[str], int]]:
    best, out = float("inf"), None
    for _ in range(3):
        start = time.perf_counter()
        out = fn(path)
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "records.jsonl"
        size = write_log(path, args.records)
        t_anchor, a = timed(anchor, path)
        t_ours, got = timed(lambda p: recover(p, FINGERPRINT, Path(tmp) / "aside"), path)
        b = (got.finished, got.tokens)
        assert a == b, "both must recover the same ids and token count"
    per = 100_000 / args.records
    print(f"{args.records:,} records, {size / 1e6:.0f} MB progress log")
    print(f"anchor   (json per line)        {t_anchor * per:6.3f} s per 100k records")
    print(f"hpcsynth (progress.recover)     {t_ours * per:6.3f} s per 100k records")
    print(f"ratio anchor/hpcsynth: {t_anchor / t_ours:.1f}x")


if __name__ == "__main__":
    main()
