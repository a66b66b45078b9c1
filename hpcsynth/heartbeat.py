"""A shard's heartbeat thread: renews the lease, writes progress for status, and runs the watchdog.

It runs beside the worker so that an engine busy on a long batch keeps its lease. The watchdog fails
the shard when the engine holds requests but has finished none for `watchdog_s`: it interrupts the
worker (KeyboardInterrupt in the main thread), and if the worker does not return within a grace period
(an engine stuck in native code), it records the failure itself and ends the process, so the executor
can start a fresh one.
"""

from __future__ import annotations

import _thread
import os
import threading
import time

import orjson

from hpcsynth.files import atomic_write_bytes, atomic_write_json
from hpcsynth.lease import Lease
from hpcsynth.progress import ProgressLog
from hpcsynth.rundir import RunDir

WATCHDOG_EXIT_CODE = 75  # EX_TEMPFAIL: the shard failed for now; a new worker may take it


class Heartbeat:
    def __init__(self, run: RunDir, shard: int, lease: Lease, progress: ProgressLog, interval: float,
                 watchdog_s: float, grace_s: float = 30.0) -> None:
        self.run, self.shard, self.lease, self.progress = run, shard, lease, progress
        self.interval, self.watchdog_s, self.grace_s = interval, watchdog_s, grace_s
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name=f"heartbeat-{shard}")
        self.error: BaseException | None = None
        self.tripped = ""
        self.started = time.time()

    def start(self) -> None:
        self.beat()
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join()

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def _loop(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.beat()
                if not self.tripped:
                    self._watch()
            except BaseException as exc:  # surfaced in the worker's thread by check()
                self.error = exc
                return

    def _watch(self) -> None:
        progress = self.progress
        quiet = time.time() - progress.last_completion
        if progress.in_flight <= 0 or quiet < self.watchdog_s:
            return
        self.tripped = (f"watchdog: no completion for {quiet:.0f}s while {progress.in_flight} requests were in "
                        f"flight (worker.watchdog_s={self.watchdog_s:g})")
        _thread.interrupt_main()
        if not self.stopped.wait(self.grace_s):
            atomic_write_json(self.run.failed_path(self.shard), {
                "shard": self.shard, "reason": self.tripped + "; the engine did not return, process ended",
                "owner": self.lease.owner, "time": time.time()})
            self.lease.release()
            os._exit(WATCHDOG_EXIT_CODE)

    def beat(self) -> None:
        self.lease.renew()
        progress = self.progress
        elapsed = max(time.time() - self.started, 1e-9)
        atomic_write_bytes(self.run.heartbeat_path(self.shard), orjson.dumps({
            "shard": self.shard, "owner": self.lease.owner, "updated": time.time(), "started": self.started,
            "pid": os.getpid(), "records_done": len(progress.finished), "records_expected": progress.expected,
            "resumed_records": progress.resumed, "in_flight": progress.in_flight,
            "completion_tokens": progress.tokens,
            "tokens_per_s": round((progress.tokens - progress.resumed_tokens) / elapsed, 2),
            "step_downs": progress.step_downs,
        }))
