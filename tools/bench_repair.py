"""What `hpcsynth repair` costs against the GPU time of the records it recovers (fake engine).

Plans a run of --docs generated documents x 2 free-format prompts on the fake engine, whose completions take
--delay-ms each (a stand-in for GPU time: the repair is priced in the same unit as the run) and reach
sampling.max_tokens about 45% of the time; reduce.drop_truncated refuses those. Launches it, then runs
`hpcsynth repair RUN --attempts N` as a process, and prints from RUN/repair/report.json: the records refused,
recovered by each attempt and still refused, the main run's and the repair's generation seconds (the
workers' clocks) and wall seconds, and two ratios per recovered record against a first generation:

  generation  repair generation seconds / (recovered x the main run's generation seconds per record)
  wall        repair wall seconds (scans, sub-run plans, engine starts included) / the same

    python tools/bench_repair.py [--docs 400] [--delay-ms 5] [--attempts 2] [--work DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "tests"))
os.environ.update(OMP_NUM_THREADS="1", RAYON_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")

from hpcsynth.files import read_json  # noqa: E402
from hpcsynth.plan import plan_corpus  # noqa: E402
from hpcsynth.rundir import RunDir  # noqa: E402


def hpcsynth(*args: str, faults: dict) -> float:
    started = time.monotonic()
    env = {**os.environ, "HPCSYNTH_FAKE_FAULTS": json.dumps(faults), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "hpcsynth", *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"hpcsynth {' '.join(args)} failed:\n{proc.stderr}")
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=400)
    parser.add_argument("--delay-ms", type=float, default=5.0, help="seconds a fake completion takes, in ms")
    parser.add_argument("--attempts", type=int, default=2)
    parser.add_argument("--work", type=Path, help="where the run goes (default: a new temporary directory)")
    args = parser.parse_args()
    from conftest import fake_config, write_corpus

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-repair-"))
    corpus = write_corpus(work / "corpus.jsonl", args.docs)
    config = fake_config(corpus, plan={"shard_docs": 50}, sampling={"max_tokens": 30},
                         reduce={"drop_truncated": True, "min_chars": 1}, validate={"action": "drop"},
                         worker={"flush_interval_s": 1.0, "heartbeat_interval_s": 1.0})
    config = dataclasses.replace(config, prompts=("distill", "extract_knowledge"))
    run = RunDir(work / "run")
    plan_corpus(config, run)
    faults = {"delay_s": args.delay_ms / 1000}
    main_wall = hpcsynth("launch", str(run.root), faults=faults)
    repair_wall = hpcsynth("repair", str(run.root), "--attempts", str(args.attempts), faults=faults)
    report = read_json(run.repair_report_path)
    main, repair = report["cost"]["main"], report["cost"]["repair"]
    recovered = report["cost"]["recovered_records"]
    refused = sum(p["refused"] for p in report["prompts"].values())
    still = sum(p["still_refused"] for p in report["prompts"].values())
    by_attempt: dict[str, int] = {}
    for row in report["prompts"].values():
        for attempt, n in row["recovered"].items():
            by_attempt[attempt] = by_attempt.get(attempt, 0) + n
    per_record_gen = main["generation_seconds"] / main["records"]
    per_record_wall = main_wall / main["records"]
    print(f"run: {main['records']:,} records, {main['generation_seconds']:.2f} s generation, {main_wall:.2f} s wall "
          f"(launch); {refused:,} refused ({refused / main['records']:.1%})")
    print(f"repair --attempts {args.attempts}: {repair['records']:,} records generated again, "
          f"{repair['generation_seconds']:.2f} s generation, {repair_wall:.2f} s wall; recovered "
          f"{', '.join(f'attempt {k}: {n:,}' for k, n in sorted(by_attempt.items()))}; {still:,} still refused")
    yield_before = 1 - refused / main["records"]
    yield_after = 1 - still / main["records"]
    print(f"yield {yield_before:.1%} -> {yield_after:.1%}")
    if recovered:
        print(f"ratio per recovered record: generation {repair['generation_seconds'] / (recovered * per_record_gen):.2f}x,"
              f" wall {repair_wall / (recovered * per_record_wall):.2f}x a first generation")
    print(f"(work: {work})")


if __name__ == "__main__":
    main()
