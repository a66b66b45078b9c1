"""Running the input groups: in this process (--jobs 1) or a pool of processes, same bytes either way.

Shard ids are fixed in input order. With --jobs 1 each group knows its first shard id when it starts and
writes its shards as it reads. In a pool, a group's first id depends on the groups before it, so each
worker reads its group holding the documents (in memory up to HOLD_BYTES, the rest spilled to disk),
publishes its shard count, waits for the groups before it to publish theirs (they started earlier: the
pool takes tasks in order, so the wait is short and never circular), then writes its shards. On Slurm
the two halves are separate array tasks (run_groups_mapped, with the map the caller hands in).
A worker that dies (the OOM killer, kill -9) fails the plan at once, and the workers die with a killed
planner: no process is left waiting for ever on a group nobody plans.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import wait as futures_wait
from pathlib import Path
from typing import Any

from hpcsynth.errors import RunError
from hpcsynth.pool import process_pool
from hpcsynth.plan.heap import keep_freed_memory
from hpcsynth.corpus.readers import ByteCounter
from hpcsynth.plan.shards import finish_syncs, forget_syncers
from hpcsynth.plan.scan import GroupJob, GroupResult, count_spilled_shards, scan_group, write_spilled

_SHARED: Any = None  # the pool's byte counter, set in each worker process
_COUNTS: Any = None  # shard count of each group once scanned (UNKNOWN before, FAILED if it failed)
_BARRIER: Any = None  # the pool's workers meet here once, each having waited for its own fsyncs
BARRIER_S = 3600  # a worker that never arrives (killed) fails the plan instead of hanging it
UNKNOWN, FAILED = -1, -2
# Documents a pool worker keeps in memory while it waits for its group's first shard id; past this they
# go to disk and are read back, so memory stays bounded by --jobs x HOLD_BYTES whatever the file sizes.
HOLD_BYTES = 256 << 20


def default_jobs() -> int:
    """The CPUs Slurm gave this task, else those this process may run on."""
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        return int(slurm)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def run_groups(jobs: list[GroupJob], workers: int, counter: ByteCounter, tick: Callable[[], None],
               meanwhile: Callable[[], None] = lambda: None) -> tuple[list[GroupResult], list[dict[str, Any]]]:
    """Results per group and every shard row, in shard id order. `meanwhile` is the caller's own work,
    done while a pool's workers run (this process is idle then): off the serial part of the plan."""
    if workers <= 1 or len(jobs) <= 1:
        done = _sequential(jobs, _TickingCounter(counter, tick), tick)
        meanwhile()
        return done
    return _Pool(jobs, workers, counter, tick).run(meanwhile)


# map_groups(fn, items, name) -> [fn(item), ...]: how a plan too big for one machine runs its groups
# elsewhere (`plan --executor slurm`: execute/plan_array.py's Slurm arrays); fn and items pickle.
MapGroups = Callable[[Callable[[Any], Any], list[Any], str], list[Any]]


def run_groups_mapped(jobs: list[GroupJob], map_groups: MapGroups) -> tuple[list[GroupResult], list[dict[str, Any]]]:
    """A plan too big for one machine: the groups as one map (on Slurm, a CPU array), their shards as a
    second, after the counts between them fix every shard id (the same ids as a local plan)."""
    results = map_groups(_scan_alone, [dataclasses.replace(j, first_shard=-1) for j in jobs], "plan-scan")
    writes, first = [], 0
    for job in jobs:
        job = dataclasses.replace(job, first_shard=first)
        first += count_spilled_shards(Path(job.tmp), job)
        writes.append(job)
    rows = map_groups(_write, writes, "plan-write")
    return results, [row for group in rows for row in group]


def _scan_alone(job: GroupJob) -> GroupResult:
    keep_freed_memory()  # a Slurm task: its own process
    return scan_group(job)


def _sequential(jobs: list[GroupJob], counter: ByteCounter,
                tick: Callable[[], None]) -> tuple[list[GroupResult], list[dict[str, Any]]]:
    try:
        done = _each_group(jobs, counter, tick)
    except BaseException:
        with contextlib.suppress(OSError):  # the error that stopped the plan is the one to tell
            finish_syncs()
        raise
    finish_syncs()  # every shard on disk before the caller writes the manifest
    return done


def _each_group(jobs: list[GroupJob], counter: ByteCounter,
                tick: Callable[[], None]) -> tuple[list[GroupResult], list[dict[str, Any]]]:
    results: list[GroupResult] = []
    rows: list[dict[str, Any]] = []
    planned = 0
    for job in jobs:
        if job.limit:  # what the earlier groups left of plan.limit; none left: read nothing
            left = job.limit - planned
            job = dataclasses.replace(job, limit=left) if left > 0 else dataclasses.replace(job, files=())
        result = scan_group(dataclasses.replace(job, first_shard=len(rows), defer_sync=True), counter)
        planned += result.sources
        results.append(result)
        rows += result.rows or []
        tick()
    return results, rows


class _TickingCounter(ByteCounter):
    """In-process counting that moves the progress bar as input is read (a file may be the whole input)."""

    def __init__(self, total: ByteCounter, tick: Callable[[], None]) -> None:
        self.total, self.tick = total, tick  # no super().__init__(): its `done = 0` would go to the setter

    @property  # type: ignore[override]
    def done(self) -> int:
        return self.total.done

    @done.setter
    def done(self, value: int) -> None:
        self.total.done = value
        self.tick()


class _SharedCounter(ByteCounter):
    """A worker's byte counter that also adds to the parent's shared total."""

    def __init__(self, shared: Any) -> None:
        self._local, self.shared = 0, shared  # no super().__init__(): its `done = 0` would go to the setter

    @property  # type: ignore[override]
    def done(self) -> int:
        return self._local

    @done.setter
    def done(self, value: int) -> None:
        with self.shared.get_lock():
            self.shared.value += value - self._local
        self._local = value


def _init(shared: Any, counts: Any, barrier: Any) -> None:
    global _SHARED, _COUNTS, _BARRIER, _PARENT
    _SHARED, _COUNTS, _BARRIER, _PARENT = shared, counts, barrier, os.getppid()
    forget_syncers()


_PARENT = 0  # the planner that forked this pool worker


def _scan_write(job: GroupJob) -> GroupResult:
    """Scan a group holding its documents, publish its shard count, wait for the groups before it to
    publish theirs (they started earlier: the pool takes tasks in order), then write its shards."""
    held: list = []
    try:
        result = scan_group(job, _SharedCounter(_SHARED), held)
        spill = held[0]
        _COUNTS[job.index] = spill.shards()
    except BaseException:
        _COUNTS[job.index] = FAILED
        raise
    first = _first_shard(job.index)
    result.rows = write_spilled(Path(job.tmp), dataclasses.replace(job, first_shard=first), spill)
    return result


def _finish_syncs() -> None:
    """Wait for this worker's fsyncs; then hold at the barrier, so that each worker takes one of these (a
    worker that dies before is a lost worker: the pool fails the plan)."""
    finish_syncs()
    _BARRIER.wait(BARRIER_S)


def _first_shard(index: int) -> int:
    while True:
        counts = _COUNTS[:index]
        if FAILED in counts:
            raise RuntimeError("an earlier input group failed; see its error")
        if all(count >= 0 for count in counts):
            return sum(counts)
        if os.getppid() != _PARENT:  # the planner is gone: nobody will count the groups before this one
            os._exit(1)
        time.sleep(0.005)


def _write(job: GroupJob) -> list[dict[str, Any]]:
    keep_freed_memory()
    return write_spilled(Path(job.tmp), job)


class _Pool:
    def __init__(self, jobs: list[GroupJob], workers: int, counter: ByteCounter, tick: Callable[[], None]) -> None:
        self.jobs, self.workers, self.counter, self.tick = jobs, workers, counter, tick

    def run(self, meanwhile: Callable[[], None]) -> tuple[list[GroupResult], list[dict[str, Any]]]:
        # fork: workers start at once and import nothing; the only parent thread (rich's refresh) is never
        # touched by a child.
        context = multiprocessing.get_context("fork")
        shared = context.Value("q", 0)
        counts = context.RawArray("q", [UNKNOWN] * len(self.jobs))
        workers = min(self.workers, len(self.jobs))
        barrier = context.Barrier(workers)
        # defer_sync: a worker goes on to its next group while the last one's files reach the disk (waiting
        # in each group left a core idle for the disk); the fsyncs are all waited for at the end.
        jobs = [dataclasses.replace(job, first_shard=-1, hold_bytes=HOLD_BYTES, defer_sync=True) for job in self.jobs]
        # Objects that exist now are moved out of the collector's reach: a collection in a worker would
        # otherwise write to every one of them and copy each page the parent shares with it.
        gc.freeze()
        try:
            return self._run(context, workers, jobs, (shared, counts, barrier), meanwhile)
        finally:
            gc.unfreeze()

    def _run(self, context: Any, workers: int, jobs: list[GroupJob], shared_state: tuple,
             meanwhile: Callable[[], None]) -> tuple[list[GroupResult], list[dict[str, Any]]]:
        shared = shared_state[0]
        lost = RunError(f"a plan worker process ended without a word (killed, or out of memory?); nothing was "
                        f"planned: plan again, with fewer --jobs than {workers} if memory is short")
        with process_pool(workers, context, lost, _init, shared_state) as pool:
            pending = [pool.submit(_scan_write, job) for job in jobs]  # taken in this order
            meanwhile()
            results = []
            for task in pending:
                while not task.done():
                    futures_wait([task], 0.25)
                    self.counter.done = shared.value
                    self.tick()
                results.append(task.result())
            # Every shard on disk before the caller writes the manifest: one wait per worker process.
            for sync in [pool.submit(_finish_syncs) for _ in range(workers)]:
                sync.result()
        return results, [row for result in results for row in result.rows or []]
