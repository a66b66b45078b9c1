"""Where a worker's time goes (start-up, generation, idle) and how fast it generates, for status.

A TaskClock rewrites RUN/tasks/NAME.json at each milestone and every heartbeat while the worker runs, so
status sees the split as it is now (not only once the worker ends) and a killed worker leaves its last
numbers behind. It is rewritten in place (InPlaceFile: one pwrite a tick, no temp file, no fsync), as
are the shards' heartbeats. Its rate comes from a window over the worker's recent completions, counted as they leave
the engine: it does not drop to zero when a shard commits and the next one starts.

At each tick it also asks the engine for its telemetry (KV-cache use, prefix-cache hits, speculative
acceptance, running and waiting requests, preemptions: engines/telemetry.py), once, from the clock's own
thread and outside its lock, so that a slow answer (a server's /metrics) never holds up a completion.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from hpcsynth.generate.engines import Completion, Request
from hpcsynth.generate.engines.telemetry import TelemetryLog
from hpcsynth.generate.lease import checked_record, rewrite_held, slurm_task
from hpcsynth.rundir import RunDir

# Long enough to span several batches and shard commits, so the rate holds steady while work flows;
# short enough that a slowdown shows within a minute.
RATE_WINDOW_S = 60.0


class TaskClock:
    def __init__(self, run: RunDir, name: str, tick_s: float = 10.0) -> None:
        self.path = run.task_path(name)
        self.file = InPlaceFile(self.path)
        self.started = time.time()
        self.generating_since: float | None = None
        self.tokens = self.records = 0
        self.samples: deque[tuple[float, int, int]] = deque()
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self.tick_s = tick_s
        self._read_telemetry: Callable[[], dict[str, Any] | None] | None = None
        self.telemetry: TelemetryLog | None = None
        self._telemetry_asked = 0.0
        self.data: dict[str, Any] = {"name": name, "task": slurm_task(), "host": socket.gethostname(), "pid": os.getpid(),
                     "gpus": 0, "device": "", "started": self.started, "startup_s": 0.0, "generation_s": 0.0,
                     "shards_done": 0, "state": "starting", "tokens": 0, "records": 0, "tokens_per_s": 0.0,
                     "records_per_s": 0.0, "rate_window_s": RATE_WINDOW_S}
        self.write()

    def engine_ready(self, device: str, gpus: int) -> None:
        """The engine is up: start-up ends, generation starts, and the clock ticks on its own."""
        now = time.time()
        self.generating_since = now
        self.samples.append((now, 0, 0))
        self.write(startup_s=round(now - self.started, 3), state="generating", device=device, gpus=gpus)
        threading.Thread(target=self._tick, daemon=True, name="hpcsynth-taskclock").start()

    def watch(self, engine) -> None:
        """Read the engine's telemetry at each tick: its `telemetry()` (one reading, or None when it has
        none now), `telemetry_source` and `telemetry_scope` (engines/telemetry.py TelemetryLog)."""
        read = getattr(engine, "telemetry", None)
        if not callable(read):
            return
        self._read_telemetry = read
        self.telemetry = TelemetryLog(str(getattr(engine, "telemetry_source", "") or ""),
                                      str(getattr(engine, "telemetry_scope", "engine") or "engine"),
                                      str(getattr(engine, "telemetry_server", "") or ""), self.tick_s)
        self.sample_telemetry()  # before the first request: a server's counters so far are its baseline

    def sample_telemetry(self) -> None:
        """One reading from the engine, folded into the task file's "telemetry" at the next write. The
        engine is asked outside the lock; a failing read is no reading (the last one stays)."""
        if self._read_telemetry is None or self.telemetry is None:
            return
        asked = time.time()
        try:
            reading = self._read_telemetry()
        except Exception:  # telemetry is for the eye: it never stops the worker
            return
        with self.lock:
            # The last tick's read and finish's may overlap: an older answer folded after a newer one
            # would look like a counter reset.
            if asked >= self._telemetry_asked and self.telemetry.add(reading, time.time()):
                self._telemetry_asked = asked
                self.data["telemetry"] = self.telemetry.to_json()

    def telemetry_now(self) -> dict[str, float] | None:
        """The worker's counters so far and the engine's gauges at the last tick (None before a reading): what
        a shard's done marker takes the difference of (engines/telemetry.py shard_window)."""
        with self.lock:
            log = self.telemetry
            if log is None or log.read_at is None:
                return None
            return {**log.totals, **log.gauges}

    def count(self, completion: Completion) -> None:
        with self.lock:
            self.records += 1
            self.tokens += completion.completion_tokens

    def finish(self, **changes) -> None:
        self._stop.set()
        self.sample_telemetry()  # the engine's last numbers (a closed engine keeps its final reading)
        if self.generating_since is not None:
            changes.setdefault("generation_s", round(time.time() - self.generating_since, 3))
        self.generating_since = None
        self.write(**changes)

    def write(self, **changes) -> None:
        with self.lock:
            now = time.time()
            self.data.update(changes)
            if self.generating_since is not None:
                self.data["generation_s"] = round(now - self.generating_since, 3)
                self._sample(now)
            self.data["updated"] = now
            self.data["wall_s"] = round(now - self.started, 3)
            self.data["idle_s"] = round(max(0.0, self.data["wall_s"] - self.data["startup_s"]
                                            - self.data["generation_s"]), 3)
            self.file.write(self.data)

    def _sample(self, now: float) -> None:
        self.samples.append((now, self.tokens, self.records))
        while len(self.samples) > 2 and now - self.samples[1][0] >= RATE_WINDOW_S:
            self.samples.popleft()
        first, tokens, records = self.samples[0]
        span = now - first
        self.data.update(tokens=self.tokens, records=self.records,
                         tokens_per_s=round((self.tokens - tokens) / span, 2) if span > 0 else 0.0,
                         records_per_s=round((self.records - records) / span, 4) if span > 0 else 0.0)

    def _tick(self) -> None:
        while not self._stop.wait(self.tick_s):
            self.sample_telemetry()
            try:
                self.write()
            except OSError:  # a full disk or a vanished run: the worker's own writes will say so
                pass


class InPlaceFile:
    """A small JSON file that one writer rewrites in place through a held descriptor: one pwrite of a record
    padded to the file's width (locks.checked_record), no temp file, rename or fsync. A status refresh or
    a kill between writes finds the last whole record; a reader racing a write may find it torn (it fails
    its "check", and status counts it absent for one refresh). The width only grows, so a reader never
    sees a shorter file with an old record's tail. Losing the last writes to a crash costs a few seconds
    of displayed progress, never data: the progress log and the markers are what resume and status trust."""

    SPARE = 64  # room to grow (counts gain digits) before the slot must widen

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None
        self.width = 0

    def write(self, record: dict) -> None:
        size = len(checked_record(record)) + 1
        fresh = self.fd is None
        if self.fd is None:
            self.fd = self._open()
        if size > self.width:
            self.width = size + self.SPARE
        rewrite_held(self.fd, checked_record(record, self.width))
        if fresh:
            os.ftruncate(self.fd, self.width)  # a longer file left by an earlier writer loses its tail once

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _open(self) -> int:
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            return os.open(self.path, flags, 0o666)
        except FileNotFoundError:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, flags, 0o666)


class CountingEngine:
    """An engine seen through the clock: every completion is counted as it leaves the engine."""

    def __init__(self, engine, clock: TaskClock) -> None:
        self._engine, self._clock = engine, clock
        clock.watch(engine)

    def generate(self, requests: Iterable[Request]) -> Iterator[Completion]:
        for completion in self._engine.generate(requests):
            self._clock.count(completion)
            yield completion

    def telemetry_now(self) -> dict[str, float] | None:
        """A fresh reading first (the clock's tick may be a minute away from a shard's open or commit)."""
        self._clock.sample_telemetry()
        return self._clock.telemetry_now()

    def __getattr__(self, name: str):  # model_id, revision, step_down, close: the engine's own
        return getattr(self._engine, name)


def engine_device(engine, kind: str) -> tuple[str, int]:
    """What the engine computes on ("cuda"/"cpu"/"remote") and how many GPUs that is, so that a CPU run
    reports CPU worker-hours and no GPU-hours."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    gpus = len([d for d in visible.split(",") if d.strip()]) if visible else 0
    device = str(getattr(engine, "device", ""))
    if kind in ("fake", "endpoint"):
        return ("remote" if kind == "endpoint" else "cpu"), 0
    if device:
        return ("cuda", max(gpus, 1)) if device.startswith("cuda") else (device, 0)
    return ("cuda", max(gpus, 1)) if kind == "vllm" and gpus else ("cpu", 0)
