"""How fast does `hpcsynth plan` go, per core, against the floor of the same work done bare?

Generates a corpus (default ~230 MB of text in 46k documents of ~5 KB, like FineWeb-Edu's, in 8 files)
as JSONL.zst and as Parquet, then times in one run (each timing the best of --repeat, interleaved, since
the machine is shared). Per-core ratios use CPU seconds (this process and its children): on a shared
machine wall time mostly measures the neighbours, CPU time measures the work.
  floor jsonl     zstd decompress + orjson parse + zstd level-3 compress of the same bytes, one thread
  ours jsonl      plan_corpus, --jobs 1, a filter evaluated on every document, token balancing, duplicate
                  ids, batched fsyncs
  floor parquet   pyarrow reads the text column + zstd level-3 compress of its bytes, one thread
  ours parquet    plan_corpus on the Parquet copy, same settings
  scaling         the CLI with --jobs 2 vs --jobs 1 (wall and CPU time), beside the floor run in one
                  process vs split over two (what the machine itself does to two busy processes)
  many shards     the CLI on a second corpus of 10^5 short documents: ~10 shards vs one shard per
                  document (10^5), in a child process: extra milliseconds per shard, the child's peak RSS
  instructions    (with valgrind installed) the jsonl ratio again, as instructions executed under
                  cachegrind on the first 4 files: counts the neighbours on a shared machine cannot change
                  (each side run once and twice in a child; the difference is one run). For comparing
                  versions of ours, not a time ratio: cachegrind has no SHA extensions, so the shards'
                  sha256 weighs ~10x more in instructions than in time

    python tools/bench_plan.py [--mb 230] [--docs 46000] [--repeat 3] [--many 100000]
                               [--parts jsonl,parquet,scaling,many,instructions]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpcsynth.config import load_config  # noqa: E402
from hpcsynth.files import FRAME_BYTES  # noqa: E402
from hpcsynth.plan import plan_corpus  # noqa: E402
from hpcsynth.rundir import RunDir  # noqa: E402

FILES = 8
CONFIG = """model: {engine: fake, path: fake-model}
plan:
  filter: 'int_score >= 0 and language != "xx"'
  keep_fields: [int_score]
  bytes_per_token: 4.2
  shard_tokens: %d
  shard_docs: %d
"""


def make_corpus(root: Path, mb: int, docs: int, name: str = "part") -> tuple[list[Path], list[Path], int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(0)
    words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 10))) for _ in range(5000)]
    per_doc = mb * 1_000_000 // docs // 7  # ~7 bytes a word with its space
    jsonl, parquet, text_bytes = [], [], 0
    compressor = zstandard.ZstdCompressor(level=3)
    for f in range(FILES):
        rows = {"id": [], "text": [], "int_score": [], "language": []}
        for i in range(f * docs // FILES, (f + 1) * docs // FILES):
            n = rng.randint(per_doc // 2, per_doc * 3 // 2)
            text = ".\n\n".join(" ".join(rng.choices(words, k=60)) for _ in range(max(1, n // 60)))
            rows["id"].append(f"doc-{i}")
            rows["text"].append(text)
            rows["int_score"].append(i % 5)
            rows["language"].append("en")
            text_bytes += len(text)
        lines = b"".join(orjson.dumps({k: v[j] for k, v in rows.items()}) + b"\n" for j in range(len(rows["id"])))
        jsonl.append(root / f"{name}-{f}.jsonl.zst")
        jsonl[-1].write_bytes(compressor.compress(lines))
        parquet.append(root / f"{name}-{f}.parquet")
        pq.write_table(pa.table(rows), parquet[-1], row_group_size=2000)
    return jsonl, parquet, text_bytes


def cpu_seconds() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def timed(fn) -> tuple[float, float]:
    """(wall, CPU) seconds of fn()."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    fn()
    return time.perf_counter() - wall, cpu_seconds() - cpu


def floor_jsonl(paths: list[Path]) -> int:
    size = 0
    compressor = zstandard.ZstdCompressor(level=3, write_checksum=True)
    for path in paths:
        with open(path, "rb") as raw:
            data = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True).read()
        for line in data.splitlines():
            orjson.loads(line)
        for start in range(0, len(data), FRAME_BYTES):
            compressor.compress(data[start:start + FRAME_BYTES])
        size += len(data)
    return size


def floor_parquet(paths: list[Path]) -> None:
    import pyarrow.parquet as pq

    compressor = zstandard.ZstdCompressor(level=3, write_checksum=True)
    for path in paths:
        column = pq.read_table(path, columns=["text"]).column("text").combine_chunks()
        data = column.buffers()[2].to_pybytes()
        for start in range(0, len(data), FRAME_BYTES):
            compressor.compress(data[start:start + FRAME_BYTES])


def floor_processes(paths: list[Path], processes: int) -> None:
    """The floor over the files in `processes` child processes (what contention does to bare work)."""
    import multiprocessing

    children = [multiprocessing.Process(target=floor_jsonl, args=(paths[i::processes],)) for i in range(processes)]
    for child in children:
        child.start()
    for child in children:
        child.join()


def ours(root: Path, name: str, inputs: list[Path], jobs: int) -> None:
    config_path = root / f"{name}.yaml"
    config_path.write_text(CONFIG % (1_000_000, 10_000))
    config = load_config(config_path)
    plan_corpus(config, RunDir(root / name), [str(p) for p in inputs], jobs=jobs)


def clean(root: Path, name: str) -> None:
    """Remove an earlier run's output before the next is timed (deleting it is not planning)."""
    shutil.rmtree(root / name, ignore_errors=True)


def best(repeat: int, *runs, before=lambda: None) -> list[tuple[float, float]]:
    """Each run's best (wall, CPU) over `repeat` interleaved rounds (other users only add time);
    `before` runs untimed before each round."""
    times: list[list[tuple[float, float]]] = [[] for _ in runs]
    for _ in range(repeat):
        before()
        for i, run in enumerate(runs):
            times[i].append(timed(run))
    return [(min(w for w, _ in t), min(c for _, c in t)) for t in times]


def cli_plan(root: Path, name: str, inputs: list[Path], shard_docs: int, jobs: int = 1,
             peak: bool = False) -> tuple[float, int, int]:
    import shutil

    shutil.rmtree(root / name, ignore_errors=True)
    config_path = root / f"{name}.yaml"
    config_path.write_text(CONFIG % (1_000_000, shard_docs))
    command = [sys.executable, "-m", "hpcsynth", "plan", str(config_path), "--run", str(root / name),
               "--jobs", str(jobs)]
    for path in inputs:
        command += ["--input", str(path)]
    # Bytecode cached as an installed package has it (an environment that sets PYTHONDONTWRITEBYTECODE
    # would otherwise compile hpcsynth's modules in every run, ~0.06 s of serial start-up).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    started = time.perf_counter()
    if peak:  # through a small parent that reports the plan's own peak RSS (RUSAGE_CHILDREN here would give
        # the largest child this process ever had: a pool worker of the scaling runs)
        done = subprocess.run([sys.executable, "-c", PEAK] + command, check=True, stdout=subprocess.PIPE, env=env,
                              text=True)
    else:
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=env)
    seconds = time.perf_counter() - started
    shards = len(os.listdir(root / name / "shards"))
    return seconds, shards, int(done.stdout.split()[-1]) // 1024 if peak else 0


PEAK = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
import bench_plan as b
from pathlib import Path
root, what, times = Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
inputs = [Path(p) for p in sys.argv[5:]]
for _ in range(times):
    if what == "floor":
        b.floor_jsonl(inputs)
    else:
        b.clean(root, "instructions")
        b.ours(root, "instructions", inputs, 1)
"""


def instructions(root: Path, what: str, inputs: list[Path]) -> int:
    """Instructions of one run of `what` (floor or ours) under cachegrind: twice minus once."""
    counts = []
    for times in (1, 2):
        command = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
                   sys.executable, "-c", CHILD, str(Path(__file__).parent), str(root), what, str(times)]
        done = subprocess.run(command + [str(p) for p in inputs], capture_output=True, text=True, check=True)
        counts.append(int(re.search(r"I\s+refs:\s+([\d,]+)", done.stderr).group(1).replace(",", "")))
    return counts[1] - counts[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=230)
    parser.add_argument("--docs", type=int, default=46_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--many", type=int, default=100_000,
                        help="documents (and shards) of the many-shard run; 0 skips it")
    parser.add_argument("--parts", default="jsonl,parquet,scaling,many,instructions",
                        help="which measurements to run")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    with tempfile.TemporaryDirectory(prefix="bench-plan-", dir=os.environ.get("BENCH_DIR")) as tmp:
        root = Path(tmp)
        jsonl, parquet, text_bytes = make_corpus(root, args.mb, args.docs)
        size = floor_jsonl(jsonl)
        print(f"corpus: {args.docs:,} documents, {text_bytes / 1e6:.0f} MB of text, {size / 1e6:.0f} MB of JSONL, "
              f"{sum(p.stat().st_size for p in jsonl) / 1e6:.0f} MB as JSONL.zst; load {os.getloadavg()[0]:.1f}")
        mb = size / 1e6
        if "jsonl" in parts:
            floor, mine = best(args.repeat, lambda: floor_jsonl(jsonl), lambda: ours(root, "jsonl-1", jsonl, 1),
                               before=lambda: clean(root, "jsonl-1"))
            print(f"jsonl per core (CPU s): floor {mb / floor[1]:.0f} MB/s, ours {mb / mine[1]:.0f} MB/s of JSONL, "
                  f"ratio {floor[1] / mine[1]:.2f} (goal >= 0.85); wall {floor[0]:.1f} vs {mine[0]:.1f} s", flush=True)
        if "parquet" in parts:
            floor, mine = best(args.repeat, lambda: floor_parquet(parquet), lambda: ours(root, "parquet-1", parquet, 1),
                               before=lambda: clean(root, "parquet-1"))
            print(f"parquet per core (CPU s): floor {text_bytes / 1e6 / floor[1]:.0f} MB/s of text, ours "
                  f"{text_bytes / 1e6 / mine[1]:.0f} MB/s, ratio {floor[1] / mine[1]:.2f}; wall {floor[0]:.1f} vs "
                  f"{mine[0]:.1f} s", flush=True)
        if "scaling" in parts:  # in child processes: a pool forked from this big process pays for its pages
            one, two, f1, f2 = best(args.repeat, lambda: cli_plan(root, "cli-1", jsonl, 10_000, jobs=1),
                                    lambda: cli_plan(root, "cli-2", jsonl, 10_000, jobs=2),
                                    lambda: floor_processes(jsonl, 1), lambda: floor_processes(jsonl, 2))
            tiny = root / "tiny.jsonl"
            document = {"id": "t", "text": "a tiny corpus " * 40, "int_score": 3, "language": "en"}
            tiny.write_bytes(orjson.dumps(document) + b"\n")
            serial = min(cli_plan(root, "tiny", [tiny], 10_000)[0] for _ in range(args.repeat))
            print(f"serial part: the CLI planning one document takes {serial:.2f} s (start-up, config, commit); "
                  f"--jobs 1 takes {one[0]:.2f} s, so --jobs 2 can be at most "
                  f"{one[0] / (serial + (one[0] - serial) / 2):.2f}x", flush=True)
            print(f"scaling: --jobs 2 wall {one[0] / two[0]:.2f}x --jobs 1 (goal >= 1.7; "
                  f"load {os.getloadavg()[0]:.1f}, "
                  f"{len(os.sched_getaffinity(0))} CPUs ours); CPU {two[1] / one[1]:.2f}x the work of --jobs 1, so "
                  f"{2 * one[1] / two[1]:.2f}x on two free cores; anchor: the floor split over two processes "
                  f"takes {f2[1] / f1[1]:.2f}x its CPU and {f1[0] / f2[0]:.2f}x its speed here", flush=True)
        if "instructions" in parts and shutil.which("valgrind"):
            floor_i, ours_i = instructions(root, "floor", jsonl[:4]), instructions(root, "ours", jsonl[:4])
            print(f"jsonl by instructions (cachegrind, 4 files): floor {floor_i / 1e6:,.0f} M, ours "
                  f"{ours_i / 1e6:,.0f} M, ratio {floor_i / ours_i:.3f}", flush=True)
        if args.many and "many" in parts:
            small, _, _ = make_corpus(root, args.many * 600 // 1_000_000 or 1, args.many, "small")
            few_s, few, _ = cli_plan(root, "few", small, 10_000)
            many_s, many, rss = cli_plan(root, "many", small, 1, peak=True)
            print(f"many shards: {few:,} shards {few_s:.1f} s, {many:,} shards {many_s:.1f} s: "
                  f"{(many_s - few_s) / (many - few) * 1e3:.3f} ms per extra shard (goal < 0.3); "
                  f"peak RSS {rss} MB (goal < 1024)")


if __name__ == "__main__":
    main()
