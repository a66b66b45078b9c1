"""A valid 10 MB document kept whole by the plan (plan.long_docs: keep) costs the reduce about what reading
it costs, not gigabytes: the backend's parity sample takes each text's first PARITY_CHARS, and a text cut
at reduce.mix.max_doc_tokens is tokenized from growing prefixes, never whole.

Before: the parity gate encoded the whole page with both backends (`tokenizers` holds ~400 bytes per token:
1.4 GB and 4.5 s of a reduce for one 10 MB page, 6.1 GB for 50 MB), and a page of more than 8 characters a
token (long runs of spaces) was encoded whole only to be cut (630 MB for 10 MB under `tokenizers`).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

from hpcsynth.generate.pull import pull_shards
from hpcsynth.plan import plan_corpus
from hpcsynth.reduce.mix.feed import PREFIX_CHARS_PER_TOKEN, MixFeed
from hpcsynth.reduce.select import Document
from hpcsynth.rundir import RunDir

from conftest import fake_config, write_corpus

BIG = 10 << 20
# The reduce of the run with the 10 MB page may use this much more memory than that of the same run without
# it. Reading the page's shard line holds it ~3 times (the line's bytes while it is read, joined, and the
# parsed text): ~30 MB; measured +40 to +60 MB in all. Before, +1,250 to +1,700 MB.
GROWTH_MB = 150

PEAK = """
import resource, subprocess, sys
proc = subprocess.run([sys.executable, "-m", "hpcsynth", "reduce", *sys.argv[1:]], capture_output=True, text=True)
sys.stderr.write(proc.stderr)
print(proc.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def huge_run(root: Path, tokenizer: Path, big: bool) -> RunDir:
    corpus = write_corpus(root / "c.jsonl", 16)
    if big:  # first, so the parity sample of the first shard meets it too
        unit = "A very long page. " + " ".join(f"token{j % 997}" for j in range(4000))
        page = orjson.dumps({"id": "big", "text": unit * (BIG // len(unit) + 1)}) + b"\n"
        corpus.write_bytes(page + corpus.read_bytes())
    config = fake_config(corpus, reduce={"tokenizer": str(tokenizer), "min_chars": 1, "part_shards": 1,
                                         "bucket_docs": 8})
    config = dataclasses.replace(config, plan=dataclasses.replace(config.plan, shard_docs=4, long_docs="keep"))
    run = RunDir(root / "run")
    plan_corpus(config, run)
    pull_shards(run.root)
    return run


def reduce_peak_mb(run: RunDir, out: Path) -> float:
    """Peak RSS of `hpcsynth reduce RUN` as a process of its own, measured by a parent that runs nothing else."""
    proc = subprocess.run([sys.executable, "-c", PEAK, str(run.root), "--out", str(out)], capture_output=True,
                          text=True, timeout=300)
    rc, peak_kb = proc.stdout.split()
    assert rc == "0", proc.stderr
    return int(peak_kb) / 1024


def test_a_10_mb_document_costs_the_reduce_what_reading_it_costs(tmp_path: Path, tiny_model: Path) -> None:
    small = huge_run(tmp_path / "small", tiny_model, big=False)
    big = huge_run(tmp_path / "big", tiny_model, big=True)
    assert max(len(d["text"]) for d in _originals(big)) >= BIG
    base = reduce_peak_mb(small, tmp_path / "small-out")
    peak = reduce_peak_mb(big, tmp_path / "big-out")
    assert peak - base < GROWTH_MB, f"peak RSS {peak:.0f} MB with the 10 MB page, {base:.0f} MB without"
    report = orjson.loads((tmp_path / "big-out" / "report.json").read_bytes())
    originals = next(s for s in report["mix"]["sources"] if s["name"] == "run_originals")
    assert originals["cut_documents"] == 1  # cut at reduce.mix.max_doc_tokens, and counted


def _originals(run: RunDir) -> list[dict]:
    from hpcsynth.files import read_jsonl_zst

    return [d for shard in range(run.shard_count()) for d in read_jsonl_zst(run.shard_path(shard))]


class _Encoder:
    """One token per `chars` characters, then EOS (0); remembers the longest text it was given."""

    def __init__(self, chars: int) -> None:
        self.chars, self.longest = chars, 0

    def encode(self, texts: list[str], kind: str = "") -> list[np.ndarray]:
        self.longest = max([self.longest, *map(len, texts)])
        return [np.append(np.arange(1, len(t) // self.chars + 1, dtype=np.uint32), np.uint32(0)) for t in texts]


MIX = {"sources": [{"name": "run_originals", "kind": "original", "weight": 1.0}], "max_doc_tokens": 100,
       "oversize": "cut", "total_tokens": 0}


@pytest.mark.parametrize("chars, length, tokens", [(20, BIG, 100), (20, 1500, 76), (4, BIG, 100)])
def test_a_text_past_the_cap_is_never_tokenized_whole(chars: int, length: int, tokens: int) -> None:
    """20 characters a token: the first prefix (8 a token) gives fewer tokens than the cap, and the whole
    10 MB text was encoded to learn that it is over. Prefixes twice as long now: the 10 MB text is cut
    from one of 3,200 characters, exactly as from the whole; a 1,500-character one is still encoded whole."""
    encoder = _Encoder(chars)
    feed = MixFeed(MIX, encoder, seed=0)
    feed.originals = 0
    feed._add([Document("original", "k", "id", "x" * length, source=0)], "original")
    (_, array), = feed.docs
    whole = _Encoder(chars).encode(["x" * length])[0]
    expected = whole if len(whole) <= 100 else np.append(whole[:99], whole[-1:])
    assert len(array) == tokens and np.array_equal(array, expected)
    assert encoder.longest <= min(length, 4 * MIX["max_doc_tokens"] * PREFIX_CHARS_PER_TOKEN)
    assert feed.counts[0]["cut"] == (length // chars + 1 > 100)
