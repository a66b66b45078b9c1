"""Who holds a file lock, and the one lock of the run directory (ground floor: every stage uses it).

No flock (unreliable over NFS, and open() of a planted FIFO blocks). A lock is a file created exclusively:
a hard link of a complete temporary file, so it appears whole or not at all, on NFS too. The file names
its holder: host, pid, the process's start time and a random token (`new_owner`), and where in Slurm it
runs (array task and restart count). It is never rewritten while held.

A holder is judged, never trusted to clean up: it is provably gone when it is a process of this host that
no longer exists (pid AND start time, so a reused pid does not keep a lock for ever), or an earlier
incarnation of this very Slurm array task (Slurm runs one at a time). A holder on another host cannot be
judged from here: the error names it and says to remove the file if it died. A lock file that names no
holder (damaged, empty, a symlink or FIFO planted there, a lock of an older hpcsynth that wrote none)
counts as gone; it is read with O_NOFOLLOW | O_NONBLOCK, so it is neither followed nor waited on.

A gone holder's lock is taken over under a takeover mutex (LOCK.takeover, itself O_EXCL): of several
racing takers one holds the mutex, re-reads the lock, and replaces it (rename over it, never unlink and
create, so no newcomer slips in between) only if it is still the very lock judged gone.
generate/lease.py builds the shard lease, which adds renewals and a timeout, on these same pieces.
"""

from __future__ import annotations

import os
import socket
import stat
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import orjson

from hpcsynth.errors import RunError
from hpcsynth.files import atomic_write_bytes

_PROCESS_START = ""
TAKEOVER_TIMEOUT_S = 60.0  # a takeover takes milliseconds: a mutex this old was left by a taker that died


def process_start(pid: int) -> str:
    """The kernel's start time of a process (clock ticks since boot), '' when unknown or gone."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # Field 22 counts from after the command name, which may itself hold spaces and parentheses.
    fields = stat_line[stat_line.rfind(")") + 2:].split()
    if not fields or fields[0] in ("Z", "X"):
        return ""  # a zombie (killed, not yet reaped: common where PID 1 reaps nothing) is gone
    return fields[19] if len(fields) > 19 else ""


def new_owner() -> str:
    """A holder identity unique on the cluster: host, pid, the process's start time and a random token."""
    global _PROCESS_START
    _PROCESS_START = _PROCESS_START or process_start(os.getpid()) or "0"
    return f"{socket.gethostname()}:{os.getpid()}:{_PROCESS_START}:{uuid.uuid4().hex[:12]}"


def slurm_task() -> str:
    """This process's Slurm array task ("JOB_TASK") or job id; '' outside Slurm."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if job:
        return f"{job}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    return os.environ.get("SLURM_JOB_ID", "")


def gpu_slot() -> str:
    """Which of its task's per-GPU workers this process is ('' for the only one); set by execute/local.py."""
    return os.environ.get("HPCSYNTH_GPU_SLOT", "")


def slurm_identity() -> dict[str, str]:
    """Where in Slurm this process runs: array task, its restart count, step and rank within the step."""
    env = os.environ
    return {"task": slurm_task(), "restart": env.get("SLURM_RESTART_COUNT", "0"),
            "step": env.get("SLURM_STEP_ID", ""), "procid": env.get("SLURM_PROCID", ""), "slot": gpu_slot()}


def holder_record(owner: str) -> bytes:
    """What a lock file holds: the holder's identity and when it took the lock."""
    return orjson.dumps({"owner": owner, "renewed": time.time(), **slurm_identity()})


def holder_gone(held: dict) -> bool:
    """Whether a lock's holder is provably no longer running (not merely slow)."""
    parts = str(held.get("owner", "")).split(":")
    host, pid = parts[0], parts[1] if len(parts) > 1 else ""
    start = parts[2] if len(parts) > 3 else ""
    if host == socket.gethostname() and pid.isdigit() and int(pid) != os.getpid():
        now_start = process_start(int(pid))
        if not now_start and not Path("/proc/self/stat").exists():
            try:  # no /proc: fall back to a signal-0 probe
                os.kill(int(pid), 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
            return False
        return not now_start or (bool(start) and start != "0" and now_start != start)
    task = held.get("task", "")
    if task and task == slurm_task():
        # The same array task in a later incarnation: the earlier one is gone (Slurm requeued it).
        try:
            return int(held.get("restart", "0")) < int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        except ValueError:
            return False
    return False


def describe_holder(held: dict) -> str:
    """A holder for a message: 'pid 123 on node7, Slurm task 456_3'."""
    parts = str(held.get("owner", "")).split(":")
    text = f"pid {parts[1]} on {parts[0]}" if len(parts) > 1 else "no holder named"
    return text + (f", Slurm task {held['task']}" if held.get("task") else "")


def read_holder(path: Path) -> dict | None:
    """The holder a lock file names; None when there is no file. Never follows a symlink nor blocks on a
    FIFO; a file that names no holder reads as {"owner": "", "damaged": ...}, which counts as gone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:  # ELOOP: a symlink; EACCES...: nothing we can read names a holder
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return None
        return {"owner": "", "renewed": 0, "damaged": f"{exc.errno}:{info.st_ino}:{info.st_mtime_ns}"}
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return {"owner": "", "renewed": 0, "damaged": f"mode {info.st_mode:o}:{info.st_ino}"}
        data = handle.read(1 << 16)
    try:
        held = orjson.loads(data)
    except orjson.JSONDecodeError:
        held = None
    if isinstance(held, dict) and "owner" not in held and "host" in held and "pid" in held:
        held = {**held, "owner": f"{held['host']}:{held['pid']}"}  # a reduce lock of hpcsynth before this one
    elif held is None and data.count(b":") == 1 and data.strip().rpartition(b":")[2].isdigit():
        held = {"owner": data.decode("utf-8", "replace").strip()}  # a plan lock of before: "HOST:PID\n"
    if not isinstance(held, dict):
        # Torn mid-write by a crash, or damaged: counts as long expired.
        return {"owner": "", "renewed": 0, "damaged": data[:64].hex()}
    return held


def create_exclusive(path: Path, payload: bytes) -> bool:
    """Create path holding payload, or return False if it exists; never visible empty or half written.

    O_EXCL alone leaves a moment in which the file exists but is empty, and a racing reader would judge
    that lock stale; a hard link of a complete temporary file appears all at once, and fails if the
    name is taken (on NFS too; a symlink there, even a dangling one, takes the name and is not followed).
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)


def take_mutex(mutex: Path, owner: str, timeout: float) -> bool:
    """O_EXCL-create a takeover mutex; clear one left by a taker that died mid-takeover."""
    for _ in range(2):
        if not create_exclusive(mutex, holder_record(owner)):
            held = read_holder(mutex) or {}
            if time.time() - float(held.get("renewed", 0) or 0) < timeout and not holder_gone(held):
                return False
            aside = mutex.with_name(f"{mutex.name}.stale-{uuid.uuid4().hex[:8]}")
            try:
                os.rename(mutex, aside)
            except FileNotFoundError:
                continue
            if read_holder(aside) != held:  # another taker's fresh mutex: put it back
                try:
                    os.link(aside, mutex)
                except FileExistsError:
                    pass
                aside.unlink(missing_ok=True)
                return False
            aside.unlink(missing_ok=True)
            continue
        return True
    return False


def take_over(path: Path, stale: dict, owner: str, timeout: float = TAKEOVER_TIMEOUT_S) -> bool:
    """Replace the lock judged stale with one naming owner; False when it changed since it was judged."""
    mutex = path.with_name(path.name + ".takeover")
    if not take_mutex(mutex, owner, timeout):
        return False
    try:
        if read_holder(path) != stale:
            return False  # renewed, released or retaken since we judged it: not ours to take
        atomic_write_bytes(path, holder_record(owner))  # a rename over it: replaces a symlink, never follows
        return True
    finally:
        mutex.unlink(missing_ok=True)


class LockHeld(RunError):
    """A live process holds the lock."""


@dataclass
class Lock:
    """A lock file this process holds; as a context manager it is released on the way out."""

    path: Path
    owner: str

    def held(self) -> bool:
        held = read_holder(self.path)
        return held is not None and held.get("owner") == self.owner

    def release(self) -> None:
        if self.held():  # a live holder's lock is never taken over, so nobody replaces it in between
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire_lock(path: Path, what: str, writing: Path | None = None, wait_s: float = 0.0) -> Lock:
    """Hold the lock at path, taking it over from a holder that is gone; LockHeld (one line naming the
    holder, the lock file and the fix) when a live one holds it, at once or after polling wait_s seconds.

    what: who else would hold it ("reduce"), for the message: "another reduce is writing DIR (pid ...)".
    """
    path = Path(path)
    owner, deadline, pause = new_owner(), time.monotonic() + wait_s, 0.002
    while True:
        try:
            held = _try_lock(path, owner)
        except OSError as exc:  # a directory planted at the lock path, a read-only run directory...
            raise RunError(f"cannot lock {path} ({exc.strerror or exc}); remove whatever is there, "
                           f"or check the directory's permissions, and retry") from None
        if held is None:
            return Lock(path, owner)
        if time.monotonic() >= deadline:
            still = f", still after {wait_s:g} s" if wait_s else ""
            raise LockHeld(f"another {what} is writing {writing or path.parent} ({describe_holder(held)}{still}); "
                           f"wait for it, or if that process is gone, remove {path}")
        time.sleep(pause)
        pause = min(pause * 2, 0.05)  # short critical sections (a record's rewrite): poll soon, then calmly


def lock_holder(path: Path) -> dict | None:
    """The live holder of the lock at path; None when it is free, or its holder is gone."""
    held = read_holder(path)
    return None if held is None or _gone(held) else held


def _try_lock(path: Path, owner: str) -> dict | None:
    """None when this owner now holds the lock, else the live holder."""
    held: dict = {"owner": ""}
    for _ in range(3):
        if create_exclusive(path, holder_record(owner)):
            return None
        current = read_holder(path)
        if current is None:
            continue  # released between our create and our read: try again
        held = current
        if not _gone(held):
            return held
        if take_over(path, held, owner):
            return None
    return held  # others raced us for it each time: report the last holder seen


def _gone(held: dict) -> bool:
    return "damaged" in held or holder_gone(held)
