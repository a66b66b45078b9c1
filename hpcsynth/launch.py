"""Launch: run the workers of a planned run on an executor.

The local executor runs one worker in this process, or with `workers > 1` one worker process per GPU,
each pinned through CUDA_VISIBLE_DEVICES; the workers share the shards through their leases. Only
shards without a done marker for the run's fingerprint are worked on, so a relaunch picks up where
the last one stopped. What happened is read back from the run directory, not from the workers.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hpcsynth.errors import HpcsynthError
from hpcsynth.files import read_json
from hpcsynth.pull import pull_shards
from hpcsynth.rundir import RunDir

EXECUTORS = ("local",)


@dataclass(frozen=True)
class LaunchReport:
    executor: str
    done: int = 0
    total: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)


def launch_run(run: RunDir, executor: str = "local", retry_failed: bool = False, workers: int = 1) -> LaunchReport:
    run.require_planned()
    run.config()  # a broken resolved config should fail here, not inside a worker
    if executor not in EXECUTORS:
        raise HpcsynthError(f"--executor {executor!r} is not available; choose one of {', '.join(EXECUTORS)}")
    if workers < 1:
        raise HpcsynthError(f"--workers must be 1 or more, got {workers}")
    if workers == 1:
        _log_to(run.log_path("worker-local"))
        pull_shards(str(run.root), retry_failed=retry_failed)
    else:
        _run_worker_processes(run, workers, retry_failed)
    return _report(run, executor)


def _run_worker_processes(run: RunDir, workers: int, retry_failed: bool) -> None:
    procs = []
    for index in range(workers):
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(index)}
        command = [sys.executable, "-m", "hpcsynth.pull", str(run.root)] + (["--retry-failed"] if retry_failed else [])
        log_path = run.log_path(f"worker-local-{index}")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            procs.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
    try:
        for proc in procs:
            proc.wait()
    except KeyboardInterrupt:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait()
        raise


def _report(run: RunDir, executor: str) -> LaunchReport:
    digest = run.fingerprint()
    shards = run.shard_ids()
    done = sum(1 for s in shards if run.is_done(s, digest))
    failed = []
    for shard in shards:
        path = run.failed_path(shard)
        if path.is_file() and not run.is_done(shard, digest):
            failed.append((shard, read_json(path).get("reason", "")))
    return LaunchReport(executor, done, len(shards), failed)


def _log_to(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger("hpcsynth")
    if not any(getattr(h, "baseFilename", None) == str(path) for h in logger.handlers):
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
