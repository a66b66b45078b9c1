"""How long does `hpcsynth status` take over 10,000 shards, and how often does it ask Slurm?

Builds a run directory of N shards in mixed states (done, failed, running, stale, pending) with a
recorded Slurm launch, puts a counting `sacct` first on PATH (it logs each call and then runs the real
sacct if there is one), and times, in the same run:
  anchor    per-shard probing: three existence checks and a JSON read per shard (the straightforward
            way; submitit-style watchers also ask sacct per job or per refresh of each task)
  hpcsynth  hpcsynth.status.collect.collect_status (each directory listed once, one sacct call)

    python tools/bench_status.py [--shards 10000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import counting_shim  # noqa: E402
from hpcsynth.config import Config, fingerprint  # noqa: E402
from hpcsynth.prompts import load_prompts  # noqa: E402
from hpcsynth.plan.manifest import write_manifest  # noqa: E402
from hpcsynth.rundir import LAYOUT_VERSION, RunDir  # noqa: E402
from hpcsynth.status.collect import collect_status  # noqa: E402


def build_run(root: Path, shards: int) -> RunDir:
    run = RunDir(root / "run")
    for name in ("done", "failed", "work", "launches", "outputs"):
        (run.root / name).mkdir(parents=True)
    # A config whose fingerprint is its own: status refuses a config.yaml that no longer matches it.
    config = Config()
    digest = fingerprint(config, {p.name: p.template_hash for p in load_prompts(config)})
    run.write_config(config, digest)
    header = {"layout_version": LAYOUT_VERSION, "fingerprint": digest, "documents": shards * 1000,
              "prompts": [{"name": p, "template_hash": "x"} for p in ("faq", "math", "table", "tutorial")]}
    write_manifest(run.root, header, [{"id": i, "path": f"shards/{i:06d}.jsonl.zst", "documents": 1000,
                                       "est_tokens": 250_000, "chars": 1_000_000, "bytes": 0, "sha256": "0" * 64}
                                      for i in range(shards)])
    now = time.time()
    for i in range(shards):
        kind = i % 20
        if kind < 12:
            marker = {"fingerprint": digest, "documents": 1000, "records": 4000, "rejected": 0,
                      "completion_tokens": 1_436_000, "bytes": 0}
            run.done_path(i).write_bytes(orjson.dumps(marker))
            run.output_path(i).write_bytes(b"")  # status stats each done shard's output
        elif kind == 12:
            run.failed_path(i).write_bytes(orjson.dumps({"reason": "injected", "log": ""}))
        elif kind < 17:
            run.work_dir(i).mkdir()
            updated = now if kind < 16 else now - 3600
            beat = {"updated": updated, "records_done": 2000, "completion_tokens": 718_000,
                    "tokens_per_s": 9000.0, "task": f"1000_{i % 64}"}
            run.heartbeat_path(i).write_bytes(orjson.dumps(beat))
    (run.launches_dir / "launch.json").write_bytes(orjson.dumps(
        {"executor": "slurm", "arrays": [{"job_id": "1000", "tasks": 64}], "gpus_per_task": 1}))
    return run


def probe_each_shard(run: RunDir) -> dict[str, int]:
    counts = {"done": 0, "failed": 0, "running": 0, "pending": 0}
    for shard in run.shard_ids():
        if run.done_path(shard).exists():
            orjson.loads(run.done_path(shard).read_bytes())
            run.output_path(shard).stat()  # as status does: the output a done marker names is there
            counts["done"] += 1
        elif run.failed_path(shard).exists():
            counts["failed"] += 1
        elif run.heartbeat_path(shard).exists():
            orjson.loads(run.heartbeat_path(shard).read_bytes())
            counts["running"] += 1
        else:
            counts["pending"] += 1
    return counts


def best_of(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run = build_run(root, args.shards)
        bin_dir, log = root / "bin", root / "sacct.calls"
        bin_dir.mkdir()
        counting_shim(bin_dir, "sacct", log)
        os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
        t_anchor = best_of(lambda: probe_each_shard(run))
        log.unlink(missing_ok=True)
        start = time.perf_counter()
        status = collect_status(run)
        t_first = time.perf_counter() - start
        calls = len(log.read_text().splitlines()) if log.exists() else 0
        t_ours = best_of(lambda: collect_status(run))
    print(f"{args.shards:,} shards: {status.shards}")
    print(f"anchor   (probe each shard)     {t_anchor:6.3f} s")
    print(f"hpcsynth (collect_status)       {t_ours:6.3f} s (first call {t_first:.3f} s, "
          f"{calls} sacct call{'s' if calls != 1 else ''} per refresh)")
    print(f"ratio anchor/hpcsynth: {t_anchor / t_ours:.2f}x")


if __name__ == "__main__":
    main()
