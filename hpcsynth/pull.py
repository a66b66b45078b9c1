"""A worker process: start one engine, then claim and run unfinished shards until none remain.

This is what an executor starts, once per GPU (an array task, or one local process): the engine's
start-up is paid once, not per shard, and one request stream runs across all the shards it claims. Its arguments are small and picklable (a run directory and
optionally the shard ids to consider) so that submitit can ship it anywhere.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from hpcsynth.engines import make_engine
from hpcsynth.lease import new_owner
from hpcsynth.rundir import RunDir
from hpcsynth.worker import ShardResult, WorkerSession

log = logging.getLogger("hpcsynth.worker")


def pull_shards(run_root: str | Path, shard_ids: list[int] | None = None, retry_failed: bool = False,
                engine_factory=make_engine) -> list[ShardResult]:
    """Run every unfinished shard (of `shard_ids`, default all) that no other worker holds."""
    run = RunDir(Path(run_root))
    config = run.config()
    digest = run.fingerprint()
    owner = new_owner()
    candidates = shard_ids if shard_ids is not None else run.shard_ids()
    todo = [s for s in candidates if not run.is_done(s, digest)
            and (retry_failed or not run.failed_path(s).exists())]
    if not todo:
        return []
    started = time.monotonic()
    engine = engine_factory(config)
    log.info("engine %s ready in %.1fs (owner %s, pid %d, CUDA_VISIBLE_DEVICES=%s)", config.model.engine,
             time.monotonic() - started, owner, os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES", ""))
    try:
        results = WorkerSession(run, engine, config, owner).work(todo)
    finally:
        engine.close()
    return results


def main(argv: list[str] | None = None) -> int:
    """`python -m hpcsynth.pull RUN`: one worker process, as a local executor or a job script starts it."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m hpcsynth.pull", description=pull_shards.__doc__)
    parser.add_argument("run", help="a planned run directory")
    parser.add_argument("--shards", help="comma-separated shard ids to consider (default: all)")
    parser.add_argument("--retry-failed", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    shards = [int(s) for s in args.shards.split(",")] if args.shards else None
    results = pull_shards(args.run, shards, retry_failed=args.retry_failed)
    return 1 if any(r.state == "failed" for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
