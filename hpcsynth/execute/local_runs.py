"""The local launches of a run: who runs workers on which host, under which pid, on which GPUs.

A local launch writes RUN/local/HOST.PID.json while it runs: its own pid and start time, its workers'
(pid, start time, GPU) once they start, and the GPUs it holds. That is what lets
- `hpcsynth cancel RUN` stop a local run's workers, as it stops Slurm jobs: every process is found by
  host, pid and the kernel's start time, so a pid the system has since given to another process is
  never signalled, and nothing is looked up by name;
- a second `launch` on this host see the first: it refuses, or with --add-workers starts more workers
  on GPUs no live launch holds (a GPU is never handed out twice: the choice is made under
  RUN/local/.lock, and the record is written before the lock is let go).
A command that records no launch but holds a lock while it works (`hpcsynth repair`: RUN/repair/.lock) is
stopped the same way through the holder its lock names (cancel_holder).
A record whose launcher has ended (kill -9, a reboot) is simply stale: it is ignored and removed by the
next reader on its host. Records of other hosts (a run directory on a shared file system) are shown, not
judged: only their own host can tell whether they still run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from hpcsynth.errors import RunError
from hpcsynth.files import atomic_write_bytes
from hpcsynth.locks import acquire_lock, process_start, read_holder
from hpcsynth.rundir import RunDir

log = logging.getLogger("hpcsynth.execute.local_runs")

MAX_RECORD_BYTES = 1 << 20  # a record names a few pids and GPUs; anything larger is not ours
STOP_WAIT_S = 20.0  # how long cancel waits for SIGTERM to end a process before SIGKILL


@dataclass
class LocalLaunch:
    """One local launch, as its record says."""

    path: Path
    host: str
    pid: int
    start: str
    started: float = 0.0
    gpus: list[str] = field(default_factory=list)
    workers: list[dict[str, Any]] = field(default_factory=list)  # {"pid", "start", "gpu"}
    uid: int = -1  # who wrote the record: only processes of that user are ever signalled for it

    @property
    def here(self) -> bool:
        return self.host == socket.gethostname()

    def alive(self) -> bool:
        """Its launcher still runs (on this host; one of another host counts as alive: we cannot tell)."""
        return not self.here or _same_process(self.pid, self.start)

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.started)) if self.started else "?"
        workers = f"{len(self.workers)} worker process(es)" if self.workers else "its worker in-process"
        gpus = f" on GPU(s) {','.join(self.gpus)}" if self.gpus else ""
        return f"pid {self.pid} on {self.host}, started {when}, {workers}{gpus}"

    def write(self) -> None:
        atomic_write_bytes(self.path, orjson.dumps({
            "host": self.host, "pid": self.pid, "start": self.start, "started": self.started,
            "gpus": self.gpus, "workers": self.workers}))


def local_dir(run: RunDir) -> Path:
    return run.root / "local"


def live_launches(run: RunDir) -> list[LocalLaunch]:
    """The run's local launches still running (and those of other hosts); stale records of this host go."""
    found = []
    directory = local_dir(run)
    try:
        names = sorted(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    for name in names:
        if not name.endswith(".json"):
            continue
        launch = _read(directory / name)
        if launch is None or not launch.alive():
            if launch is None or launch.here:
                with contextlib.suppress(OSError):
                    (directory / name).unlink()
            continue
        found.append(launch)
    return found


@contextlib.contextmanager
def registered(run: RunDir, want: int, pool: list[str] | None, add: bool) -> Iterator[LocalLaunch]:
    """This process as a local launch of `run` holding `want` GPUs of `pool` (None: a machine without
    GPUs, where any number of worker slots may run); the record goes when the launch ends.

    Refused in one line when a live launch of this host runs and `add` is not set, and when fewer GPUs
    than asked are free."""
    directory = local_dir(run)
    directory.mkdir(parents=True, exist_ok=True)
    me = LocalLaunch(directory / f"{_safe(socket.gethostname())}.{os.getpid()}.json", socket.gethostname(),
                     os.getpid(), process_start(os.getpid()), time.time())
    with acquire_lock(directory / ".lock", "launch", writing=run.root, wait_s=30.0):
        others = [launch for launch in live_launches(run) if launch.here]
        if others and not add:
            raise RunError(f"{run.root} already has a local launch running ({others[0].describe()}); its workers "
                           f"will finish the run. Stop it with `hpcsynth cancel {run.root}`, or pass --add-workers "
                           f"to start more workers beside it on GPUs it does not use")
        held = {gpu for launch in others for gpu in launch.gpus}
        if pool is None:
            free = [str(i) for i in range(want + len(held)) if str(i) not in held][:want]
        else:
            free = [gpu for gpu in pool if gpu not in held]
            if len(free) < want:
                busy = f"; {len(held)} held by {', '.join(str(o.pid) for o in others)}" if held else ""
                raise RunError(f"{want} GPU(s) asked for, but {len(free)} of the {len(pool)} this machine lists "
                               f"({','.join(pool)}) are free{busy}; ask for --workers {max(len(free), 1)}"
                               f"{' or cancel a launch' if held else ''}")
            free = free[:want]
        me.gpus = free
        me.write()
    try:
        yield me
    finally:
        with contextlib.suppress(OSError):
            me.path.unlink()


def machine_gpus() -> list[str] | None:
    """The GPUs this process may hand out: CUDA_VISIBLE_DEVICES where set, else those the NVIDIA driver
    lists (/proc/driver/nvidia/gpus, no CUDA import); None on a machine without any."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip()]
    try:
        count = len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return None
    return [str(i) for i in range(count)] if count else None


def cancel_local(run: RunDir, wait_s: float = STOP_WAIT_S) -> tuple[list[str], list[str]]:
    """Stop the run's local launches on this host: SIGTERM to each launcher and worker (a launcher ends its
    workers and removes its record; a worker stops where it is, its committed shards and checkpointed
    records kept), SIGKILL to what still runs after wait_s. Returns (what was stopped, launches of other
    hosts that must be cancelled there)."""
    stopped, elsewhere = [], []
    for launch in live_launches(run):
        if not launch.here:
            elsewhere.append(f"a local launch on {launch.host} (pid {launch.pid}) can only be stopped there: "
                             f"run `hpcsynth cancel {run.root}` on {launch.host}")
            continue
        processes = [(launch.pid, launch.start)] + [(_int(w.get("pid")), str(w.get("start", "")))
                                                    for w in launch.workers]
        processes = [(pid, start) for pid, start in processes if pid > 0 and pid != os.getpid() and start]
        strangers = [pid for pid, _ in processes if _owner(pid) not in (launch.uid, None)]
        if strangers:  # a record planted (a run directory others may write) to have us signal their pick
            elsewhere.append(f"{launch.path} names pid {strangers[0]}, which another user than the record's "
                             f"writer runs: left alone; remove {launch.path} if it is not yours")
            continue
        _stop(processes, wait_s)
        with contextlib.suppress(OSError):
            launch.path.unlink()
        stopped.append(f"stopped the local launch {launch.describe()}")
    return stopped, elsewhere


def cancel_holder(lock: Path, what: str, wait_s: float = STOP_WAIT_S) -> tuple[list[str], list[str]]:
    """Stop the process of this host that holds `lock` while it works (`hpcsynth repair` holds RUN/repair/.lock),
    as cancel_local stops a launch: SIGTERM, SIGKILL after wait_s. The lock names its holder's host, pid and
    start time (locks.py), so a pid given since to another process is never signalled; a lock file that names
    no holder (damaged, a link, a FIFO) stops nothing, and one whose writer is not the user running the pid
    it names (planted where others may write) is named, not obeyed. Returns (stopped, what only its host or
    its user can stop)."""
    held = read_holder(lock)
    parts = str((held or {}).get("owner", "")).split(":")
    if len(parts) < 4 or not parts[1].isdigit():
        return [], []  # no lock, or one that names no holder
    host, pid, start = parts[0], int(parts[1]), parts[2]
    if host != socket.gethostname():
        return [], [f"{what} holds {lock} on {host} (pid {pid}); it can only be stopped there: run `hpcsynth "
                    f"cancel` on {host} (or remove {lock} if that process is gone)"]
    if pid == os.getpid() or not _same_process(pid, start):
        return [], []  # gone: the next one to take the lock takes it over
    try:
        writer = os.lstat(lock).st_uid
    except OSError:
        return [], []  # released meanwhile
    if _owner(pid) not in (writer, None):
        return [], [f"{lock} names pid {pid}, which another user than the lock's writer runs: left alone; remove "
                    f"{lock} if it is not yours"]
    _stop([(pid, start)], wait_s)
    return [f"stopped {what} (pid {pid} on {host})"], []


def _stop(processes: list[tuple[int, str]], wait_s: float) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid, start in processes:
            if _same_process(pid, start):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
        deadline = time.monotonic() + (wait_s if sig == signal.SIGTERM else 10.0)
        while time.monotonic() < deadline and any(_same_process(pid, start) for pid, start in processes):
            time.sleep(0.1)
        if not any(_same_process(pid, start) for pid, start in processes):
            return
    left = [str(pid) for pid, start in processes if _same_process(pid, start)]
    if left:
        raise RunError(f"processes {', '.join(left)} did not end after SIGKILL; check them with `ps -p {left[0]}`")


def _same_process(pid: int, start: str) -> bool:
    """pid still names the process that started at `start` (never a later process given the same pid)."""
    return bool(start) and process_start(pid) == start


def _owner(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None  # gone


def _read(path: Path) -> LocalLaunch | None:
    """A record, read without following a link or blocking on a FIFO, and bounded; None if not one."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_RECORD_BYTES:
            return None
        data = orjson.loads(os.read(fd, MAX_RECORD_BYTES))
    except (OSError, ValueError):
        return None  # damaged, or something planted there: not a launch we can stop
    finally:
        os.close(fd)
    if not isinstance(data, dict):
        return None
    workers = data.get("workers")
    gpus = data.get("gpus")
    launch = LocalLaunch(path, str(data.get("host", "")), _int(data.get("pid")), str(data.get("start", "")),
                         float(data["started"]) if isinstance(data.get("started"), (int, float)) else 0.0,
                         [str(g) for g in gpus] if isinstance(gpus, list) else [],
                         [w for w in workers if isinstance(w, dict)] if isinstance(workers, list) else [],
                         info.st_uid)
    return launch if launch.host and launch.pid > 0 else None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else -1


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:64] or "host"
