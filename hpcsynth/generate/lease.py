"""One worker per shard at a time: a lease file naming its holder, and a renewal file the holder rewrites.

No flock (unreliable over NFS). The lease (work/ID/lease.json) is created exclusively (O_EXCL) and never
rewritten while held, so nothing a holder does can overwrite a lease another worker took over. The
holder proves it is alive by rewriting its own renewal file (work/ID/renewed.TOKEN), which no other
worker writes. Times come from the files' contents, so nodes compare their own clocks (kept in step by
NTP on any cluster) rather than a file server's mtime.

A lease is stale when its holder's renewal is older than `timeout`, or at once when the holder is
provably gone: a process of this host that no longer exists (pid and start time, so a reused pid does
not fool us), or an earlier incarnation of this very Slurm array task (requeued after a preemption or a
time limit: Slurm runs one incarnation of an array task at a time). Workers inside one job (`srun -n N`,
`launch --workers N` under salloc) share a job id but never count as each other's ghosts.

A stale lease is taken over under a takeover mutex (work/ID/lease.json.takeover, O_EXCL): of several
racing takers one holds the mutex, re-reads the lease, and replaces it only if it is still the very
lease judged stale.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from hpcsynth.files import atomic_write_bytes

_PROCESS_START = ""


def process_start(pid: int) -> str:
    """The kernel's start time of a process (clock ticks since boot), '' when unknown or gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # Field 22 counts from after the command name, which may itself hold spaces and parentheses.
    fields = stat[stat.rfind(")") + 2:].split()
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


def holder_gone(held: dict) -> bool:
    """Whether a lease's holder is provably no longer running (not merely slow)."""
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


class LeaseLost(Exception):
    """Another worker holds this shard's lease now; stop without committing."""


@dataclass
class Lease:
    path: Path
    owner: str
    timeout: float
    lost: bool = field(default=False, init=False)

    @property
    def renewal_path(self) -> Path:
        return renewal_path(self.path, self.owner)

    def acquire(self) -> bool:
        """Take the lease; False when another live worker holds it."""
        for _ in range(3):
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                created = self._create()
            except FileNotFoundError:
                # The holder committed and removed the shard's work directory between our mkdir and our
                # create: look again (the shard is most likely done now, which the caller checks).
                continue
            if created:
                self.lost = False
                return True
            held = read_lease(self.path)
            if held is None:
                continue  # vanished between create and read: try again
            if held.get("owner") == self.owner:
                self.renew()
                return True
            if not is_stale(self.path, held, self.timeout):
                return False
            if self._take_over(held):
                self.lost = False
                return True
        return False

    def held(self) -> bool:
        held = read_lease(self.path)
        return held is not None and held.get("owner") == self.owner

    def renew(self) -> None:
        """Prove this holder alive; LeaseLost when the lease names another worker now."""
        if not self.held():
            self.lost = True
            raise LeaseLost(f"lease {self.path} is no longer held by this worker")
        atomic_write_bytes(self.renewal_path, orjson.dumps({"owner": self.owner, "renewed": time.time()}))

    def release(self) -> None:
        if self.held():
            self.path.unlink(missing_ok=True)
        self.renewal_path.unlink(missing_ok=True)

    def _create(self) -> bool:
        return create_exclusive(self.path, _payload(self.owner))

    def _take_over(self, stale: dict) -> bool:
        mutex = self.path.with_name(self.path.name + ".takeover")
        if not _create_mutex(mutex, self.owner, self.timeout):
            return False
        try:
            if read_lease(self.path) != stale:
                return False  # renewed, released or retaken since we judged it: not ours to take
            atomic_write_bytes(self.path, _payload(self.owner))
            renewal_path(self.path, str(stale.get("owner", ""))).unlink(missing_ok=True)
            return True
        finally:
            mutex.unlink(missing_ok=True)


def renewal_path(lease_path: Path, owner: str) -> Path:
    token = hashlib.sha256(owner.encode()).hexdigest()[:16]
    return lease_path.with_name(f"renewed.{token}.json")


def last_renewed(lease_path: Path, held: dict) -> float:
    """When the holder last proved itself alive: its renewal file, else the lease's own time."""
    renewed = float(held.get("renewed", 0) or 0)
    try:
        data = orjson.loads(renewal_path(lease_path, str(held.get("owner", ""))).read_bytes())
        if data.get("owner") == held.get("owner"):
            renewed = max(renewed, float(data.get("renewed", 0)))
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    return renewed


def is_stale(lease_path: Path, held: dict, timeout: float) -> bool:
    return time.time() - last_renewed(lease_path, held) >= timeout or holder_gone(held)


def read_lease(path: Path) -> dict | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        held = orjson.loads(data)
    except orjson.JSONDecodeError:
        held = None
    if not isinstance(held, dict):
        # A lease torn mid-write (crash) or damaged counts as long expired.
        return {"owner": "", "renewed": 0, "damaged": data[:64].hex()}
    return held


def _payload(owner: str) -> bytes:
    return orjson.dumps({"owner": owner, "renewed": time.time(), **slurm_identity()})


def _create_mutex(mutex: Path, owner: str, timeout: float) -> bool:
    """O_EXCL-create the takeover mutex; clear one left by a taker that died mid-takeover."""
    for _ in range(2):
        if not create_exclusive(mutex, _payload(owner)):
            held = read_lease(mutex) or {}
            if time.time() - float(held.get("renewed", 0) or 0) < timeout and not holder_gone(held):
                return False
            aside = mutex.with_name(f"{mutex.name}.stale-{uuid.uuid4().hex[:8]}")
            try:
                os.rename(mutex, aside)
            except FileNotFoundError:
                continue
            if read_lease(aside) != held:  # another taker's fresh mutex: put it back
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


def create_exclusive(path: Path, payload: bytes) -> bool:
    """Create path holding payload, or return False if it exists; never visible empty or half written.

    O_EXCL alone leaves a moment in which the file exists but is empty, and a racing reader would judge
    that lease stale; a hard link of a complete temporary file appears all at once, and fails if the
    name is taken (on NFS too).
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
