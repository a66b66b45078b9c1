"""Launching 10,000 shards on a real Slurm: how many sbatch calls, how long?

Needs a running cluster (slurm/start-cluster.sh; SLURM_CONF set). Plans N shards, then submits one
array task per shard (slurm.shards_per_task=1, the worst case) with a counting `sbatch` first on PATH.
Jobs are submitted held (--hold) and cancelled at the end, so nothing runs. In the same run:
  anchor    plain submitit: one executor.batch() of N tasks, not split (fails past MaxArraySize)
  hpcsynth  hpcsynth.execute.launch.submit_workers: split at MaxArraySize, ceil(N / MaxArraySize) sbatch calls

    SLURM_CONF=/tmp/hpcsynth-slurm/etc/slurm.conf python tools/bench_launch.py [--shards 10000]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import counting_shim  # noqa: E402
from hpcsynth.config import Config  # noqa: E402
from hpcsynth.plan import plan_corpus  # noqa: E402
from hpcsynth.rundir import RunDir  # noqa: E402
from hpcsynth.execute.launch import plan_tasks, run_array_task, submit_workers  # noqa: E402
from hpcsynth.execute.slurm import Requeued, executor_parameters, max_array_size  # noqa: E402


def plan(root: Path, shards: int) -> tuple[RunDir, Config]:
    corpus = root / "corpus.jsonl"
    with open(corpus, "wb") as handle:
        for i in range(shards):
            handle.write(orjson.dumps({"id": f"d{i}", "text": f"document {i}"}) + b"\n")
    config = Config()
    slurm = dataclasses.replace(config.slurm, shards_per_task=1, partition="gpu", cpus_per_task=1, mem_gb=1,
                                sbatch=("hold",))
    config = dataclasses.replace(config, slurm=slurm,
                                 model=dataclasses.replace(config.model, engine="fake", path="fake"),
                                 plan=dataclasses.replace(config.plan, shard_docs=1, inputs=(str(corpus),)))
    run = RunDir(root / "run")
    plan_corpus(config, run)
    return run, config


def anchor(run: RunDir, config: Config, tasks: list) -> str:
    import submitit

    executor = submitit.SlurmExecutor(folder=run.root / "anchor" / "%A")
    executor.update_parameters(**executor_parameters(config.slurm))
    try:
        with executor.batch():
            jobs = [executor.submit(Requeued(run_array_task), str(run.root), shards, False) for shards in tasks]
    except Exception as exc:  # submitit raises its own error types around sbatch's
        return f"failed: {str(exc).strip().splitlines()[0][:90]}"
    subprocess.run(["scancel", jobs[0].job_id.split("_")[0]], check=False)
    return f"submitted {jobs[0].job_id.split('_')[0]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run, config = plan(root, args.shards)
        tasks = plan_tasks(config.slurm, run.shard_ids())
        limit = max_array_size(config.slurm)
        bin_dir, log = root / "bin", root / "calls"
        bin_dir.mkdir()
        counting_shim(bin_dir, "sbatch", log)
        os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"

        start = time.perf_counter()
        outcome = anchor(run, config, tasks)
        t_anchor = time.perf_counter() - start
        anchor_calls = len(log.read_text().splitlines()) if log.exists() else 0
        log.unlink(missing_ok=True)

        start = time.perf_counter()
        arrays = submit_workers(run, config.slurm, tasks, retry_failed=False)
        t_ours = time.perf_counter() - start
        calls = len(log.read_text().splitlines())
        subprocess.run(["scancel", *[a["job_id"] for a in arrays]], check=False)
    print(f"{args.shards:,} shards, one array task each, MaxArraySize {limit}")
    print(f"anchor   (submitit, one batch)  {t_anchor:6.2f} s, {anchor_calls} sbatch call(s): {outcome}")
    print(f"hpcsynth (submit_workers)       {t_ours:6.2f} s, {calls} sbatch calls "
          f"(ceil(N / MaxArraySize) = {math.ceil(len(tasks) / limit)}), {sum(a['tasks'] for a in arrays):,} tasks")


if __name__ == "__main__":
    main()
