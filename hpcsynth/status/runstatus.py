"""What `collect_status` returns: a run's status as typed, frozen objects (status/collect.py fills them).

The fields are in the order `status --json` prints them, and `to_json()` gives exactly that JSON's
object (orjson writes these dataclasses the same way, so a grid's status prints its generators alike).
Worker clocks (`tasks`) and the timeline stay plain dicts: they are the run's files, read as they are.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ShardCounts:
    """Shards by state (status/collect.py STATES), and how many there are."""

    pending: int
    running: int
    requeued: int
    stale: int
    failed: int
    done: int
    total: int

    def of(self, state: str) -> int:
        """The count of a state named by a string (STATES)."""
        return int(getattr(self, state))


@dataclass(frozen=True)
class RunningShard:
    """A shard a live worker generates now, and which worker (Slurm array task, else host:pid)."""

    shard: int
    worker: str


@dataclass(frozen=True)
class FailedShard:
    shard: int
    reason: str
    log: str  # "" when the marker names no log in RUN/logs/
    log_tail: list[str]


@dataclass(frozen=True)
class RedoShard:
    """A done shard whose marker is damaged or whose output is missing or cut: launch redoes it."""

    shard: int
    reason: str


@dataclass(frozen=True)
class WorkerHours:
    """Hours of worker time by phase, from RUN/tasks/."""

    startup_s: float
    generation_s: float
    idle_s: float


@dataclass(frozen=True)
class SlurmSummary:
    jobs: list[str]
    array_tasks: dict[str, int]  # sacct state -> array tasks in it
    sacct_calls: int
    pending_reasons: dict[str, int]
    never_starts: str
    failed_tasks: list[dict[str, Any]]


@dataclass(frozen=True)
class RunStatus:
    run: str
    fingerprint: str
    shards: ShardCounts
    documents: int
    prompts: int
    docs_done: int
    records_done: int
    records_expected: int
    tokens_done: int
    tokens_per_s: float
    eta_s: float | None
    stale_shards: list[int]
    running_shards: list[RunningShard]
    failed_shards: list[FailedShard]
    redo_shards: list[RedoShard]
    gpu_hours: float
    # Worker time on CPU only (a transformers run without GPUs, the fake engine): not GPU-hours.
    cpu_worker_hours: float
    live_workers: int
    worker_hours: WorkerHours
    workers: int
    tasks: list[dict[str, Any]]  # each worker's clock (collect.TASK_KEYS, live, error), sorted by name
    # Tokens and shards committed per time bin since the first worker started (status/timeline.py).
    timeline: dict[str, Any]
    slurm: SlurmSummary
    # `hpcsynth repair`'s sub-runs (status/repair.py repair_progress): per attempt and prompt, shards done of
    # planned, records planned and their own cost, apart from the run's GPU-hours above; [] without repair.
    repair: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The object `status --json` prints (nested parts as dicts, fields in order)."""
        return dataclasses.asdict(self)
