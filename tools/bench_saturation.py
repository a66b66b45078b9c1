"""How full does the worker keep an engine's slots? Ours against batch-synchronous feeding, one run.

A simulated engine has a fixed number of slots (sequences decoded together, like vLLM's max_num_seqs);
each step, every occupied slot emits one token, and a request leaves its slot after its output length
(lognormal, median ~280 tokens, mean ~360, clipped to 16..2048: FinePhrase averaged ~359). Time is
counted in steps, so the numbers do not depend on this machine.

Three feeders drive the same planned shards through the real WorkerSession:
  batch-sync      take `slots` requests, decode until the longest is done, take the next batch
                  (how a padded `generate()` loop or chunked `LLM.generate` calls behave)
  per-shard       refill slots as they free (the Feeder), but drain each shard before the next
  hpcsynth        refill slots as they free, one stream across shards (the worker's design)

Busy fraction = occupied slot-steps / (slots x steps), over each whole shard's span and over the run.

    python tools/bench_saturation.py [--shards 4] [--docs 1000] [--slots 256]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpcsynth.config import Config  # noqa: E402
from hpcsynth.generate.engines import Completion, Request  # noqa: E402
from hpcsynth.generate.engines.feed import Feeder  # noqa: E402
from hpcsynth.plan import plan_corpus  # noqa: E402
from hpcsynth.rundir import RunDir  # noqa: E402
from hpcsynth.generate.worker import WorkerSession  # noqa: E402


def output_length(record_id: str) -> int:
    """A deterministic draw from lognormal(median 280, sigma 0.7), clipped to 16..2048."""
    digest = hashlib.sha256(record_id.encode()).digest()
    u1 = (int.from_bytes(digest[:8], "little") + 1) / 2**64
    u2 = int.from_bytes(digest[8:16], "little") / 2**64
    normal = math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2)
    return min(2048, max(16, int(math.exp(math.log(280) + 0.7 * normal))))


class SlotEngine:
    """Simulated engine; `mode` decides how it takes requests from the stream."""

    model_id, revision = "simulated", ""

    def __init__(self, slots: int, mode: str) -> None:
        self.slots, self.mode = slots, mode
        self.steps = self.busy = 0
        self.trace: list[int] = []  # occupied slots per step

    def generate(self, requests: Iterable[Request]) -> Iterator[Completion]:
        feeder = Feeder(requests, self.slots)
        running: list[list] = []  # [remaining tokens, request]
        while True:
            if self.mode == "batch-sync":
                if not running:
                    running = [[output_length(r.record_id), r] for r in feeder.refill(0)]
            else:
                running += [[output_length(r.record_id), r] for r in feeder.refill(len(running))]
            if not running:
                return
            self.steps += 1
            self.busy += len(running)
            self.trace.append(len(running))
            still = []
            for slot in running:
                slot[0] -= 1
                if slot[0] == 0:
                    request = slot[1]
                    yield Completion(request.record_id, "x", "stop", 100, output_length(request.record_id))
                else:
                    still.append(slot)
            running = still

    def close(self) -> None:
        pass


class SpanTracker(WorkerSession):
    """The real session, noting at which engine step each shard opened and committed."""

    def __init__(self, *args, engine: SlotEngine, **kwargs) -> None:
        super().__init__(*args, engine=engine, **kwargs)
        self.spans: dict[int, list[int]] = {}

    def _feed(self, task):
        self.spans.setdefault(task.shard, [self.engine.steps, -1])
        yield from super()._feed(task)

    def _finish(self, task) -> None:
        self.spans[task.shard][1] = self.engine.steps
        super()._finish(task)


def plan(root: Path, shards: int, docs: int) -> RunDir:
    root.mkdir(parents=True, exist_ok=True)
    corpus = root / "corpus.jsonl"
    with open(corpus, "wb") as handle:
        for i in range(shards * docs):
            handle.write(orjson.dumps({"id": f"d{i}", "text": f"document {i}"}) + b"\n")
    config = Config()
    config = dataclasses.replace(
        config, model=dataclasses.replace(config.model, engine="fake", path="simulated"),
        plan=dataclasses.replace(config.plan, shard_docs=docs, inputs=(str(corpus),)),
        worker=dataclasses.replace(config.worker, flush_interval_s=3600, heartbeat_interval_s=3600))
    run = RunDir(root / "run")
    plan_corpus(config, run)
    return run


def measure(root: Path, shards: int, docs: int, slots: int, mode: str) -> dict:
    run = plan(root / mode, shards, docs)
    engine = SlotEngine(slots, "batch-sync" if mode == "batch-sync" else "continuous")
    config = run.config()
    session = SpanTracker(run, config=config, owner="bench", engine=engine)
    if mode == "per-shard":
        for shard in run.shard_ids():
            session.work([shard])
    else:
        session.work(run.shard_ids())
    per_shard = []
    for start, end in session.spans.values():
        window = engine.trace[start:end]
        per_shard.append(sum(window) / (slots * len(window)))
    return {"mode": mode, "steps": engine.steps, "overall": engine.busy / (slots * engine.steps),
            "shard_min": min(per_shard), "shard_median": sorted(per_shard)[len(per_shard) // 2]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--docs", type=int, default=1000, help="documents per shard (x4 prompts)")
    parser.add_argument("--slots", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(Path(tmp), args.shards, args.docs, args.slots, mode)
                for mode in ("batch-sync", "per-shard", "hpcsynth")]
    print(f"{args.shards} shards x {args.docs} documents x 4 prompts, {args.slots} slots")
    print(f"{'feeder':<12} {'steps':>8} {'busy overall':>13} {'busy/shard min':>15} {'median':>8}")
    for row in rows:
        print(f"{row['mode']:<12} {row['steps']:>8} {row['overall']:>13.1%} {row['shard_min']:>15.1%} "
              f"{row['shard_median']:>8.1%}")
    base, ours = rows[0], rows[-1]
    print(f"ratio hpcsynth/batch-sync busy fraction: {ours['overall'] / base['overall']:.2f}x; "
          f"steps (time) {base['steps'] / ours['steps']:.2f}x fewer")


if __name__ == "__main__":
    main()
