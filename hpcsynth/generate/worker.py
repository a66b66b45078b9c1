"""The worker: one engine, fed one continuous stream of requests across the shards it claims.

A WorkerSession walks its shard list lazily: it claims the next shard (generate/shard.py) only when the
engine asks for more requests than the open shards hold, so the engine never drains at a shard's end,
and commits each shard the moment its last record arrives. A heartbeat thread renews the leases of the
open shards, writes their heartbeats for status, and runs the watchdog. On restart, what the progress
logs hold is skipped: no request is replayed and none is produced twice. The worker knows nothing of
Slurm; launch decides where it runs.
"""

from __future__ import annotations

import _thread
import logging
import os
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterator


from hpcsynth.config import Config, fingerprint
from hpcsynth.generate.engines import Completion, Engine, Request
from hpcsynth.generate.engines.telemetry import shard_window
from hpcsynth.files import atomic_write_json
from hpcsynth.generate.lease import LeaseLost
from hpcsynth.generate.progress import DamagedLog
from hpcsynth.generate.shard import ShardResult, ShardTask, check_routing, record_seed, shard_of, truncate_document
from hpcsynth.prompts import load_prompts
from hpcsynth.rundir import RunDir

__all__ = ["ShardResult", "WorkerSession", "WorkerStopped", "run_shard", "record_seed", "truncate_document", "is_out_of_memory"]

log = logging.getLogger("hpcsynth.generate.worker")

# A progress log that keeps breaking (a failing disk) fails its shard rather than looping.
MAX_MENDS = 3
# Shards found done before the done names are listed again, at least (more where done/ is big).
RELIST_MIN_SKIPS = 16
WATCHDOG_EXIT_CODE = 75  # EX_TEMPFAIL: the shards failed for now; a new worker may take them


class WorkerStopped(RuntimeError):
    """The engine's request stream ended on an error while no shard was open: the worker's remaining
    shards are left to other workers, and this one must not exit as if it had finished."""


class ConfigChanged(Exception):
    """The run's config (its fingerprint) changed under this worker: stop, and let a new worker go on."""


class FingerprintWatch:
    """Whether the run's fingerprint is still this worker's, at one stat a look: RUN/fingerprint is read
    again only when its inode, size, mtime or ctime change (launch --config replaces it by a rename, so
    its inode changes). A missing or unreadable fingerprint counts as changed."""

    def __init__(self, run: RunDir, digest: str) -> None:
        self.run, self.digest = run, digest
        self.key: tuple[int, ...] | None = None
        self.same = True

    def changed(self) -> bool:
        try:
            info = os.stat(self.run.fingerprint_path)
        except OSError:
            return True
        key = (info.st_ino, info.st_dev, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        if key != self.key:
            try:
                self.same = self.run.fingerprint() == self.digest
            except Exception:  # damaged or gone between the stat and the read
                self.same = False
            self.key = key
        return not self.same


def run_shard(run: RunDir, shard: int, engine: Engine, config: Config, owner: str) -> ShardResult:
    """Generate every missing record of one shard and commit it; safe to call again after any crash."""
    results = WorkerSession(run, engine, config, owner).work([shard])
    return results[0]


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or "OutOfMemory" in type(exc).__name__ or "out of memory" in str(exc).lower()


class WorkerSession:
    def __init__(self, run: RunDir, engine: Engine, config: Config, owner: str, grace_s: float = 30.0,
                 on_result=None, failed_since: float | None = None) -> None:
        self.run, self.engine, self.config, self.owner = run, engine, config, owner
        self.prompts = load_prompts(config)
        check_routing(run, config)  # the pairs each shard holds are the plan's: refuse other conditions
        # The fingerprint of the config this worker generates with, not the file's: should the run's
        # config change between loading and here, the two differ and the worker stops at its first check.
        self.digest = fingerprint(config, {p.name: p.template_hash for p in self.prompts})
        # The manifest is not held: ShardTask.open looks up the one row of each shard it opens.
        self.watch = FingerprintWatch(run, self.digest)
        self.config_changed = False
        self.last_config_check = 0.0
        self.skips = 0  # shards found done since the done names were last listed (see _skipped)
        self.listed = 0  # how many done names that listing held
        self.mended: dict[int, int] = {}
        self.pending: deque[int] = deque()
        self.open: dict[int, ShardTask] = {}
        self.results: list[ShardResult] = []
        self.step_downs: list[str] = []
        self.lock = threading.RLock()  # between the main loop's commits and the heartbeat thread
        self.submitted = self.completed = 0
        # The shard each request in flight was fed from: a repair sub-run's documents keep the main run's keys,
        # whose shard number (shard_of) is not the sub-run's shard (hpcsynth/repair/subrun.py).
        self.fed: dict[str, int] = {}
        self.last_completion = time.time()
        self.tripped = ""
        self.grace_s = grace_s
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self.on_result = on_result
        self.generation_s = 0.0  # wall time with the engine working, for the task's time split
        # Shards failed after this moment (by other workers) are not opened again: see ShardTask.open.
        self.failed_since = time.time() if failed_since is None else failed_since

    @property
    def in_flight(self) -> int:
        return self.submitted - self.completed

    def work(self, shards: list[int]) -> list[ShardResult]:
        pending = deque(shards)
        thread = threading.Thread(target=self._beat_loop, daemon=True, name="hpcsynth-heartbeat")
        thread.start()
        started = time.monotonic()
        try:
            self._generate(pending)
        finally:
            self.generation_s += time.monotonic() - started
            self._stop.set()
            thread.join()
            for task in self.open.values():
                task.close()
        return self.results

    def _generate(self, pending: deque[int]) -> None:
        self.pending = pending
        while True:
            self.submitted = self.completed = 0
            self.last_completion = time.time()
            try:
                for completion in self.engine.generate(self._stream(pending)):
                    self._on_completion(completion)
                if not pending:
                    return
                # Shards handed back after their log was mended: another pass over them.
            except ConfigChanged:
                self._abandon_open()
                return
            except KeyboardInterrupt:
                if not self.tripped:
                    raise
                self._fail_open(self.tripped)
                return
            except Exception as exc:
                if not self._step_down(exc):
                    reason, trace = f"{type(exc).__name__}: {exc}", traceback.format_exc()
                    if not self.open:
                        # Nothing open to fail (the error came while claiming): say so, and exit non-zero.
                        log.error("worker stopped with %d shard(s) unclaimed: %s\n%s", len(pending), reason, trace)
                        raise WorkerStopped(f"worker stopped with {len(pending)} shard(s) unclaimed: {reason}") from exc
                    self._fail_open(reason, trace)
                    return  # the engine may be broken: leave the remaining shards to a fresh worker

    def _stream(self, pending: deque[int]) -> Iterator[Request]:
        for task in list(self.open.values()):  # after a step-down: what the failed engine held
            yield from self._feed(task)
        # Shards another worker held when we passed them get a second try at the end: if that worker
        # died meanwhile (its lease expired or its process is gone), this one takes them over.
        for second_pass in (False, True):
            busy: list[int] = []
            while pending:
                self._check_config(at_most_every_s=1.0)  # a claim is not a commit: a stat a second will do
                shard = pending.popleft()
                try:
                    opened = ShardTask.open(self.run, shard, self.config, self.owner, self.prompts, self.digest,
                                            None, self.failed_since)
                except BaseException:
                    pending.appendleft(shard)  # not claimed: it counts among the shards left to others
                    raise
                if isinstance(opened, ShardResult):
                    if opened.state == "busy" and not second_pass:
                        busy.append(shard)
                    else:
                        self._record(opened)
                    if opened.state == "skipped":
                        self._skipped(pending)
                    continue
                with self.lock:
                    self.open[shard] = opened
                opened.engine_at_open = self._telemetry_now()
                self._beat_once(opened)
                if opened.complete:  # everything was on disk already: commit without the engine
                    self._finish(opened)
                    continue
                yield from self._feed(opened)
            # Before looking at the busy shards again, drop those committed meanwhile, by name.
            pending.extend(self._unlisted(busy) if busy else busy)

    def _feed(self, task: ShardTask) -> Iterator[Request]:
        for request in task.requests():
            if task.lost or self.open.get(task.shard) is not task:
                return  # lost to another worker: not one more request for it
            self.submitted += 1
            self.fed[request.record_id] = task.shard
            yield request

    def _on_completion(self, completion: Completion) -> None:
        self.completed += 1
        self.last_completion = time.time()
        if self._error is not None:
            raise self._error
        if self.config_changed:
            raise ConfigChanged()
        shard = self.fed.pop(completion.record_id, None)
        task = self.open.get(shard_of(completion.record_id) if shard is None else shard)
        if task is None:
            return
        if task.lost:
            self._drop_lost(task)
            return
        task.add(completion, self.engine.model_id, self.engine.revision)
        if task.complete:
            self._finish(task)

    def _telemetry_now(self) -> dict[str, float] | None:
        """The engine's telemetry so far as the worker's clock last read it (None without a clock or a reading)."""
        read = getattr(self.engine, "telemetry_now", None)
        try:
            return read() if callable(read) else None
        except Exception:  # telemetry is for the eye: it never stops the worker
            return None

    def _finish(self, task: ShardTask) -> None:
        self._check_config()  # never commit under a fingerprint that is no longer the run's
        with self.lock:
            del self.open[task.shard]
            task.telemetry = shard_window(task.engine_at_open, self._telemetry_now())
            try:
                result = task.commit(self.digest, self.step_downs)
            except LeaseLost as exc:
                task.close()
                result = ShardResult(task.shard, "busy", error=str(exc))
            except DamagedLog as exc:
                # The log was mended (damaged lines dropped): reopen the shard to generate exactly those.
                self.mended[task.shard] = self.mended.get(task.shard, 0) + 1
                if self.mended[task.shard] > MAX_MENDS:
                    result = task.fail(f"progress log damaged {MAX_MENDS + 1} times in a row: {exc}")
                else:
                    log.warning("shard %d: %s", task.shard, exc)
                    task.close()
                    task.lease.release()
                    self.pending.append(task.shard)
                    return
            except Exception as exc:
                result = task.fail(f"commit failed: {type(exc).__name__}: {exc}", traceback.format_exc())
        if result.state == "done":
            log.info("shard %d committed: %d records, %d rejected, %d completion tokens, %.1fs", task.shard,
                     result.records, result.rejected, result.completion_tokens, result.seconds)
        else:
            log.info("shard %d: %s %s", task.shard, result.state, result.error)
        self._record(result)

    def _drop_lost(self, task: ShardTask) -> None:
        with self.lock:
            if self.open.get(task.shard) is task:
                del self.open[task.shard]
        task.close()
        self._record(ShardResult(task.shard, "busy", error="lease lost to another worker"))

    def _check_config(self, at_most_every_s: float = 0.0) -> None:
        """ConfigChanged when the run's fingerprint is no longer this worker's (one stat: FingerprintWatch)."""
        now = time.monotonic()
        if not self.config_changed and now - self.last_config_check < at_most_every_s:
            return
        self.last_config_check = now
        if self.config_changed or self.watch.changed():
            self.config_changed = True
            raise ConfigChanged()

    # --- the worker's view of done/: names listed once, listed again only when it has gone stale
    def _skipped(self, pending: deque[int]) -> None:
        """A shard of the list was done: others commit ahead of this worker. Past a number of such finds
        that costs about what a listing does (a listing reads some 500 names a call; a find costs a few
        calls), list the done names again and drop them from the list."""
        self.skips += 1
        if self.skips >= max(RELIST_MIN_SKIPS, self.listed // 512):
            kept = self._unlisted(list(pending))
            pending.clear()
            pending.extend(kept)

    def _unlisted(self, shards: list[int]) -> list[int]:
        """shards less those with a done marker now (one listing of done/: names only); the dropped ones
        are recorded as skipped."""
        done = self.run.done_ids()
        self.skips, self.listed = 0, len(done)
        for shard in shards:
            if shard in done:
                self._record(ShardResult(shard, "skipped"))
        return [shard for shard in shards if shard not in done]

    def _abandon_open(self) -> None:
        """The config changed: leave open shards to a worker of the new config (their logs are set aside)."""
        log.warning("the run's config changed under this worker (fingerprint %s is no longer the run's); "
                    "stopping: relaunch to go on under the new config", self.digest[:12])
        with self.lock:
            for shard, task in list(self.open.items()):
                del self.open[shard]
                task.close()
                task.lease.release()

    def _record(self, result: ShardResult) -> None:
        self.results.append(result)
        if self.on_result is not None:
            self.on_result(result)

    def _step_down(self, exc: Exception) -> bool:
        step = getattr(self.engine, "step_down", None)
        if not is_out_of_memory(exc) or step is None or len(self.step_downs) >= self.config.worker.oom_retries:
            return False
        change = step()
        if not change:
            return False
        self.step_downs.append(change)
        log.warning("out of memory (%s); stepped down: %s", exc, change)
        return True

    def _fail_open(self, reason: str, trace: str = "") -> None:
        with self.lock:
            for shard, task in list(self.open.items()):
                del self.open[shard]
                self._record(task.fail(reason, trace))

    # --- the heartbeat thread
    def _beat_loop(self) -> None:
        interval = self.config.worker.heartbeat_interval_s
        while not self._stop.wait(interval):
            # One bad beat (a full disk for a moment, a file server hiccup) must not end the renewals
            # and the watchdog for the rest of the run: log it and beat again.
            try:
                with self.lock:
                    for task in list(self.open.values()):
                        self._write_heartbeat(task)
                try:
                    if self.watch.changed():  # a stat; the file is read only when it changed
                        self.config_changed = True
                except Exception:
                    self.config_changed = True
            except Exception as exc:
                log.warning("heartbeat failed (%s: %s); trying again in %gs", type(exc).__name__, exc, interval)
            if not self.tripped:
                self._watch()

    def _beat_once(self, task: ShardTask) -> None:
        try:
            self._write_heartbeat(task)
        except Exception as exc:  # status shows the shard a beat later; the work goes on
            log.warning("heartbeat of shard %d failed (%s: %s)", task.shard, type(exc).__name__, exc)

    def _write_heartbeat(self, task: ShardTask) -> None:
        if task.lost:
            return
        try:
            task.write_heartbeat(self.in_flight, self.step_downs)
        except LeaseLost:
            # Another worker took over: no more requests, completions dropped, never committed.
            log.warning("shard %d: lease lost to another worker", task.shard)

    def _watch(self) -> None:
        quiet = time.time() - self.last_completion
        if self.in_flight <= 0 or quiet < self.config.worker.watchdog_s:
            return
        self.tripped = (f"watchdog: no completion for {quiet:.0f}s while {self.in_flight} requests were in "
                        f"flight (worker.watchdog_s={self.config.worker.watchdog_s:g})")
        _thread.interrupt_main()
        if self._stop.wait(self.grace_s):
            return
        # The engine is stuck in native code and ignores the interrupt: record and end the process.
        with self.lock:
            for task in self.open.values():
                atomic_write_json(self.run.failed_path(task.shard), {
                    "shard": task.shard, "reason": self.tripped + "; the engine did not return, process ended",
                    "owner": self.owner, "time": time.time()})
                task.lease.release()
        os._exit(WATCHDOG_EXIT_CODE)
