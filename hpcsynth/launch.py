"""Launch: run the workers of a planned run on an executor.

The local executor runs one worker in this process (tests, small users, `hpcsynth demo`). Only shards
without a done marker for the run's fingerprint are worked on, so a relaunch picks up where the last
one stopped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from hpcsynth.errors import HpcsynthError
from hpcsynth.pull import pull_shards
from hpcsynth.rundir import RunDir
from hpcsynth.worker import ShardResult

EXECUTORS = ("local",)


@dataclass(frozen=True)
class LaunchReport:
    executor: str
    results: list[ShardResult] = field(default_factory=list)

    def count(self, state: str) -> int:
        return sum(1 for r in self.results if r.state == state)


def launch_run(run: RunDir, executor: str = "local", retry_failed: bool = False) -> LaunchReport:
    run.require_planned()
    run.config()  # a broken resolved config should fail here, not inside a worker
    if executor not in EXECUTORS:
        raise HpcsynthError(f"--executor {executor!r} is not available; choose one of {', '.join(EXECUTORS)}")
    _log_to(run.log_path("launch-local"))
    results = pull_shards(str(run.root), retry_failed=retry_failed)
    return LaunchReport(executor, results)


def _log_to(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger("hpcsynth")
    if not any(getattr(h, "baseFilename", None) == str(path) for h in logger.handlers):
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
