"""Time `status --json`, a `--watch` refresh and `estimate RUN` at 10k and 339k done shards (fabricated).

    python tools/bench_status_index.py WORKDIR [--shards 339000] [--steps 10000,339000] [--workers 1000]

Plans WORKDIR/run from a corpus of one-document shards (a real plan), then commits shards the way a
worker's _commit does (tiny output, done marker, one index line in one of --workers index files) and, at
each step, runs `status --json` and `estimate RUN --json` as fresh processes (CPU seconds and peak memory
from /usr/bin/time; cold: no status cache; warm: the cache a previous call left) and times an in-memory
--watch refresh after 100 more commits. A step below the done shards WORKDIR already holds is skipped
(give it another WORKDIR). The user cache folder is WORKDIR/user-cache (XDG_CACHE_HOME), so no cache of
yours takes part.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson

from hpcsynth.generate.index import index_line
from hpcsynth.rundir import RunDir


def commit_range(run: RunDir, first: int, last: int, workers: int, digest: str) -> None:
    index = run.root / "index"
    index.mkdir(exist_ok=True)
    run.done_dir.mkdir(exist_ok=True)
    run.outputs_dir.mkdir(exist_ok=True)
    handles = {}
    for shard in range(first, last):
        run.output_path(shard).write_bytes(b"x" * 11)
        marker = {"shard": shard, "fingerprint": digest, "output": run.output_path(shard).name, "sha256": "0" * 64,
                  "bytes": 11, "records": 4, "rejected": 0, "documents": 1, "completion_tokens": 900,
                  "prompt_tokens": 1200, "step_downs": [], "resumed_records": 0,
                  "committed": time.time() - (last - shard) * 0.01,
                  "by_prompt": {p: {"records": 1, "rejected": 0, "completion_tokens": 225}
                                for p in ("faq", "math", "table", "tutorial")}}
        path = run.done_path(shard)
        path.write_bytes(orjson.dumps(marker, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")
        worker = shard % workers
        if worker not in handles:
            handles[worker] = open(index / f"done-bench-{worker}.jsonl", "ab")
        handles[worker].write(index_line(marker, os.stat(path).st_ino))
    for handle in handles.values():
        handle.close()


def measured(*args: str, cache_home: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(cache_home)}  # no user cache of ours
    proc = subprocess.run(["/usr/bin/time", "-f", "%U %S %M", sys.executable, "-m", "hpcsynth", *args],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    user, system, peak = proc.stderr.strip().splitlines()[-1].split()
    return {"cpu_s": round(float(user) + float(system), 2), "peak_mb": round(int(peak) / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--shards", type=int, default=339_000)
    parser.add_argument("--steps", default="10000,339000")
    parser.add_argument("--workers", type=int, default=1000)
    args = parser.parse_args()
    work = args.workdir
    run = RunDir(work / "run")
    if not run.manifest_path.exists():
        work.mkdir(parents=True, exist_ok=True)
        with open(work / "corpus.jsonl", "w") as handle:
            for i in range(args.shards):
                handle.write(json.dumps({"id": f"d{i}", "text": f"document {i} body"}) + "\n")
        (work / "one.yaml").write_text("prompts: [faq, math, table, tutorial]\nplan: {shard_docs: 1}\n"
                                       "model: {engine: fake, path: fake-model}\n")
        subprocess.run([sys.executable, "-m", "hpcsynth", "plan", str(work / "one.yaml"), "--run", str(run.root),
                        "--input", str(work / "corpus.jsonl")], check=True, stdout=subprocess.DEVNULL)
    digest = run.fingerprint()
    run.tasks_dir.mkdir(exist_ok=True)  # a launched run: estimate adds its account
    (run.tasks_dir / "w.json").write_bytes(orjson.dumps({"name": "w", "state": "finished", "generation_s": 3600.0,
                                                         "tokens": 10**7, "wall_s": 3700.0, "gpus": 1}))
    done = len(os.listdir(run.done_dir)) if run.done_dir.exists() else 0
    from hpcsynth.status.collect import Watch, collect_run

    cache_home = work / "user-cache"
    for step in (int(s) for s in args.steps.split(",")):
        if step < done:  # a WORKDIR kept from a bigger run: use another WORKDIR for this step
            print(json.dumps({"done": step, "skipped": f"WORKDIR already has {done} done shards"}), flush=True)
            continue
        began = time.time()
        commit_range(run, done, step - 100, args.workers, digest)
        done = step - 100
        made = time.time() - began
        (run.root / "index" / "status-cache").unlink(missing_ok=True)
        cold = measured("status", str(run.root), "--json", cache_home=cache_home)
        warm = measured("status", str(run.root), "--json", cache_home=cache_home)
        estimate = measured("estimate", str(run.root), "--json", "--tokens-per-second", "9200",
                            cache_home=cache_home)
        watch = Watch()
        collect_run(run, slurm=False, watch=watch)
        commit_range(run, done, step, args.workers, digest)
        done = step
        cpu = time.process_time()
        status = collect_run(run, slurm=False, watch=watch).status
        refresh = time.process_time() - cpu
        assert status.shards.done == step, status.shards
        print(json.dumps({"done": step, "fabricated_s": round(made, 1), "status_cold": cold, "status_warm": warm,
                          "estimate_warm": estimate, "watch_refresh_cpu_s_after_100_commits": round(refresh, 3)}),
              flush=True)


if __name__ == "__main__":
    main()
