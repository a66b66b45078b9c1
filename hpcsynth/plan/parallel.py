"""Running the input groups: in this process (--jobs 1) or a pool of processes, same bytes either way.

Shard ids are fixed in input order. A group handed out when every earlier group is already counted knows
its first shard id and writes its shards at once; one handed out earlier spills, and its shards are
written by a second pool task as soon as the groups before it are counted.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import queue
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpcsynth.plan.readers import ByteCounter
from hpcsynth.plan.scan import GroupJob, GroupResult, count_spilled_shards, scan_group, write_spilled

_SHARED: Any = None  # the pool's byte counter, set in each worker process


def default_jobs() -> int:
    """The CPUs Slurm gave this task, else those this process may run on."""
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        return int(slurm)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def run_groups(jobs: list[GroupJob], workers: int, counter: ByteCounter,
               tick: Callable[[], None]) -> tuple[list[GroupResult], list[dict[str, Any]]]:
    """Results per group and every shard row, in shard id order."""
    if workers <= 1 or len(jobs) <= 1:
        return _sequential(jobs, _TickingCounter(counter, tick), tick)
    return _Pool(jobs, workers, counter, tick).run()


def run_groups_on_slurm(jobs: list[GroupJob], run_root: Path,
                       slurm: Any) -> tuple[list[GroupResult], list[dict[str, Any]]]:
    """A plan too big for one machine: the groups as one CPU array, their shards as a second, after
    the counts between them fix every shard id (the same ids as a local plan)."""
    from hpcsynth.execute.slurm import map_plan_array

    results = map_plan_array(run_root, slurm, _scan_alone, [dataclasses.replace(j, first_shard=-1) for j in jobs],
                             "plan-scan")
    writes, first = [], 0
    for job in jobs:
        job = dataclasses.replace(job, first_shard=first)
        first += count_spilled_shards(Path(job.tmp), job)
        writes.append(job)
    rows = map_plan_array(run_root, slurm, _write, writes, "plan-write")
    return results, [row for group in rows for row in group]


def _scan_alone(job: GroupJob) -> GroupResult:
    return scan_group(job)


def _sequential(jobs: list[GroupJob], counter: ByteCounter,
                tick: Callable[[], None]) -> tuple[list[GroupResult], list[dict[str, Any]]]:
    results: list[GroupResult] = []
    rows: list[dict[str, Any]] = []
    planned = 0
    for job in jobs:
        if job.limit:  # what the earlier groups left of plan.limit; none left: read nothing
            left = job.limit - planned
            job = dataclasses.replace(job, limit=left) if left > 0 else dataclasses.replace(job, files=())
        result = scan_group(dataclasses.replace(job, first_shard=len(rows)), counter)
        planned += result.sources
        results.append(result)
        rows += result.rows
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


def _init(shared: Any) -> None:
    global _SHARED
    _SHARED = shared


def _scan(job: GroupJob) -> GroupResult:
    return scan_group(job, _SharedCounter(_SHARED))


def _write(job: GroupJob) -> list[dict[str, Any]]:
    return write_spilled(Path(job.tmp), job)


class _Pool:
    def __init__(self, jobs: list[GroupJob], workers: int, counter: ByteCounter, tick: Callable[[], None]) -> None:
        self.jobs, self.workers, self.counter, self.tick = jobs, workers, counter, tick
        self.events: queue.Queue = queue.Queue()
        self.results: dict[int, GroupResult] = {}
        self.rows: dict[int, list[dict[str, Any]]] = {}
        self.counted = 0  # groups whose shard ids are fixed
        self.next_shard = 0
        self.in_flight = 0

    def run(self) -> tuple[list[GroupResult], list[dict[str, Any]]]:
        # fork: workers start at once and import nothing; the only parent thread (rich's refresh) is never
        # touched by a child.
        context = multiprocessing.get_context("fork")
        shared = context.Value("q", 0)
        with context.Pool(self.workers, initializer=_init, initargs=(shared,)) as pool:
            handed = 0
            while self.counted < len(self.jobs) or self.in_flight:
                while self.in_flight < self.workers and handed < len(self.jobs):
                    first = self.next_shard if handed == self.counted else -1
                    self._submit(pool, "scan", _scan, dataclasses.replace(self.jobs[handed], first_shard=first))
                    handed += 1
                self._wait(pool, shared)
        return [self.results[i] for i in range(len(self.jobs))], [r for i in range(len(self.jobs)) for r in self.rows[i]]

    def _submit(self, pool: Any, kind: str, fn: Callable, job: GroupJob) -> None:
        self.in_flight += 1
        pool.apply_async(fn, (job,), callback=lambda r: self.events.put((kind, job, r, None)),
                         error_callback=lambda e: self.events.put((kind, job, None, e)))

    def _wait(self, pool: Any, shared: Any) -> None:
        try:
            kind, job, result, error = self.events.get(timeout=0.25)
        except queue.Empty:
            self.counter.done = shared.value
            self.tick()
            return
        self.in_flight -= 1
        if error is not None:
            raise error
        if kind == "scan":
            self.results[job.index] = result
        else:
            self.rows[job.index] = result
        self._count(pool)

    def _count(self, pool: Any) -> None:
        """Fix the shard ids of every group, in order, whose documents are known."""
        while self.counted in self.results:
            result = self.results[self.counted]
            job = dataclasses.replace(self.jobs[self.counted], first_shard=self.next_shard)
            if result.rows is not None:
                self.rows[self.counted] = result.rows
                self.next_shard += len(result.rows)
            else:
                self.next_shard += count_spilled_shards(Path(job.tmp), job)
                self._submit(pool, "write", _write, job)
            self.counted += 1
