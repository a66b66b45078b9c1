"""A worker process: start one engine, then claim and run unfinished shards until none remain.

This is what an executor starts, once per GPU (an array task, or one local process): the engine's
start-up is paid once, not per shard, and one request stream runs across all the shards it claims.
Its arguments are small and picklable (a run directory and optionally the shard ids to consider) so
that submitit can ship it anywhere. It records how its time went (start-up, generation, idle) in
RUN/tasks/NAME.json for status.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import sys
import time
from pathlib import Path

from hpcsynth.generate.clock import CountingEngine, TaskClock, engine_device
from hpcsynth.generate.engines import make_engine
from hpcsynth.errors import HpcsynthError
from hpcsynth.generate.lease import gpu_slot, new_owner, slurm_task
from hpcsynth.pool import die_with_parent
from hpcsynth.rundir import RunDir
from hpcsynth.generate.shard import check_routing
from hpcsynth.generate.worker import ShardResult, WorkerSession, WorkerStopped

log = logging.getLogger("hpcsynth.generate.worker")


def task_name() -> str:
    """This worker's name in RUN/tasks/ and RUN/logs/: the Slurm array task and its restart, or host-pid."""
    task = slurm_task()
    if task:
        slot = f"-gpu{gpu_slot()}" if gpu_slot() else ""  # one of several per-GPU workers of a whole-node task
        return f"{task}-r{os.environ.get('SLURM_RESTART_COUNT', '0')}{slot}"
    return f"{socket.gethostname()}-{os.getpid()}"


def pull_shards(run_root: str | Path, shard_ids: list[int] | None = None, retry_failed: bool = False,
                engine_factory=make_engine, position: tuple[int, int] | None = None) -> list[ShardResult]:
    """Run every unfinished shard (of `shard_ids`, default all) that no other worker holds. `position`:
    (this worker's index, how many start together), when the caller knows (else from the environment)."""
    run = RunDir(Path(run_root))
    config = run.config()
    owner = new_owner()
    listed = time.time()  # a shard another worker fails after this is left to --retry-failed
    todo = shards_to_try(run, shard_ids, retry_failed, owner, position or worker_position())
    if not todo:
        return []
    check_routing(run, config)  # before the engine starts: a config routing otherwise than the plan is refused
    # At least a second between rewrites: status refreshes no faster, and each rewrite is an fsync.
    clock = TaskClock(run, task_name(), tick_s=max(1.0, config.worker.heartbeat_interval_s))
    try:
        engine = engine_factory(config)
    except Exception as exc:
        clock.write(state="failed", error=f"engine start-up: {type(exc).__name__}: {exc}")
        raise
    device, gpus = engine_device(engine, config.model.engine)
    clock.engine_ready(device, gpus)
    log.info("engine %s ready in %.1fs on %s (owner %s, pid %d, CUDA_VISIBLE_DEVICES=%s)", config.model.engine,
             clock.data["startup_s"], device, owner, os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES", ""))
    def on_result(result: ShardResult) -> None:
        if result.state == "done":  # a skipped or busy shard changes nothing status shows
            clock.write(shards_done=clock.data["shards_done"] + 1)

    session = WorkerSession(run, CountingEngine(engine, clock), config, owner, on_result=on_result,
                            failed_since=listed)
    state = "finished"
    try:
        results = session.work(todo)
    except WorkerStopped:
        state = "failed"
        raise
    finally:
        engine.close()
        clock.finish(generation_s=round(session.generation_s, 3), state=state)
    return results


def worker_position(env: dict[str, str] | None = None) -> tuple[int, int] | None:
    """(this worker's index, how many workers start with it), from what its launcher set: the GPU slot of a
    multi-GPU task (execute/local.py), the Slurm array task, or the rank of an `srun -n N` step; None when
    nothing says (a worker started by hand)."""
    env = dict(os.environ) if env is None else env

    def number(name: str, default: int | None = None) -> int | None:
        value = env.get(name, "")
        return int(value) if value.isdigit() else default

    slot, slots = number("HPCSYNTH_GPU_SLOT", 0) or 0, number("HPCSYNTH_GPU_SLOTS", 1) or 1
    task, tasks = number("SLURM_ARRAY_TASK_ID"), number("SLURM_ARRAY_TASK_COUNT")
    if task is not None and tasks:
        task -= number("SLURM_ARRAY_TASK_MIN", 0) or 0
    else:
        task, tasks = number("SLURM_PROCID"), number("SLURM_NTASKS")
    if task is None or not tasks:
        task, tasks = (0, 1) if "HPCSYNTH_GPU_SLOTS" in env else (None, None)
    if task is None or tasks is None or not 0 <= task < tasks or not 0 <= slot < slots:
        return None
    return task * slots + slot, tasks * slots


def shards_to_try(run: RunDir, shard_ids: list[int] | None, retry_failed: bool, owner: str,
                  position: tuple[int, int] | None = None) -> list[int]:
    """The shards this worker will try, in the order it tries them: those of `shard_ids` (default all)
    without a done marker (nor a failed one, unless retry_failed), from one listing of done/ and one of
    failed/: names only, no marker opened, no output stat-ed, no manifest row read. done/ holds only
    markers of the run's fingerprint (launch sets the others aside: docs/run-directory.md), so a name
    is enough to skip; ShardTask.open checks the marker in full once it holds the lease.

    The list starts at an offset of the worker's own, going round: workers started together spread over
    the shards instead of each passing every shard the others just took. Worker i of n starts i/n of the
    way round (evenly, and a lone worker at the first shard, as a user expects); a worker that cannot
    tell its place starts where its owner token draws."""
    done = run.done_ids()
    failed = set() if retry_failed else run.failed_ids()
    # The plan numbers shards 0..N-1 (rundir.shard_ids); the count comes from the manifest's header.
    candidates = shard_ids if shard_ids is not None else range(run.shard_count())
    todo = [s for s in candidates if s not in done and s not in failed]
    if len(todo) > 1:
        if position is None:
            start = random.Random(owner).randrange(len(todo))
        else:
            start = position[0] * len(todo) // position[1]
        todo = todo[start:] + todo[:start]
    return todo


def main(argv: list[str] | None = None) -> int:
    """`python -m hpcsynth.generate.pull RUN`: one worker process, as a local executor or a job script starts it."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m hpcsynth.generate.pull", description=pull_shards.__doc__)
    parser.add_argument("run", help="a planned run directory")
    parser.add_argument("--shards", help="comma-separated shard ids to consider (default: all)")
    parser.add_argument("--retry-failed", action="store_true")
    parser.add_argument("--log", help="log file (default: stderr); named in failed markers for status")
    args = parser.parse_args(argv)
    parent = os.environ.get("HPCSYNTH_PARENT_PID", "")
    if parent.isdigit():  # started by a launch: end with it, even when it is killed with -9
        die_with_parent(int(parent))
    if args.log:
        from hpcsynth.logs import log_to

        log_to(Path(args.log))
    else:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    shards = [int(s) for s in args.shards.split(",")] if args.shards else None
    try:
        results = pull_shards(args.run, shards, retry_failed=args.retry_failed)
    except HpcsynthError as exc:  # a setup mistake: one line for launch to show, as the CLI would
        print(f"hpcsynth: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except WorkerStopped as exc:  # logged in full above; one line for launch to show
        print(f"hpcsynth: error: {exc}", file=sys.stderr, flush=True)
        return 1
    return 1 if any(r.state == "failed" for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
