"""One worker per shard at a time: a lease file with an owner and a renewal time.

No flock (unreliable over NFS). A lease is taken by creating the file exclusively (O_EXCL); the holder
rewrites it with a fresh time every heartbeat; one not renewed for `timeout` seconds is stale and may be
taken over: renamed aside under a name unique to the taker (only one rename of the same file can win),
checked to be the very lease judged stale, then created anew. Times come from the file's contents, so
nodes compare their own clocks (kept in step by NTP on any cluster) rather than a server's mtime.

A lease is also stale, without waiting for the timeout, when its holder is provably gone: a process of
this host that no longer exists, or an earlier run of this very Slurm array task (requeued after a
preemption or a time limit, possibly on another node).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import orjson

from hpcsynth.files import atomic_write_bytes


def new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def slurm_task() -> str:
    """This process's Slurm array task ("JOB_TASK") or job id; '' outside Slurm."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if job:
        return f"{job}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    return os.environ.get("SLURM_JOB_ID", "")


def gpu_slot() -> str:
    """Which of its task's per-GPU workers this process is ('' for the only one); set by execute/local.py."""
    return os.environ.get("HPCSYNTH_GPU_SLOT", "")


def holder_gone(held: dict) -> bool:
    host, _, rest = str(held.get("owner", "")).partition(":")
    pid = rest.partition(":")[0]
    if host == socket.gethostname() and pid.isdigit() and int(pid) != os.getpid():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
    task = held.get("task", "")
    # Same array task and slot, another process: an earlier run of this worker. Sibling workers of one
    # whole-node task share the array task but not the slot, and must not take each other's shards.
    same_worker = task == slurm_task() and held.get("slot", "") == gpu_slot()
    return bool(task) and same_worker and int(pid or -1) != os.getpid()


class LeaseLost(Exception):
    """Another worker holds this shard's lease now; stop without committing."""


@dataclass
class Lease:
    path: Path
    owner: str
    timeout: float

    def acquire(self) -> bool:
        """Take the lease; False when another live worker holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if self._create():
                return True
            held = _read(self.path)
            if held is None:
                continue  # vanished between create and read: try again
            if held.get("owner") == self.owner:
                return True
            if time.time() - held.get("renewed", 0) < self.timeout and not holder_gone(held):
                return False
            aside = self.path.with_name(f"{self.path.name}.stale-{uuid.uuid4().hex[:8]}")
            try:
                os.rename(self.path, aside)
            except FileNotFoundError:
                continue  # another taker won the rename
            if _read(aside) != held:
                # Renewed or retaken between our read and our rename: put it back and yield.
                if not self.path.exists():
                    os.rename(aside, self.path)
                return False
            aside.unlink(missing_ok=True)
        return False

    def renew(self) -> None:
        held = _read(self.path)
        if held is None or held.get("owner") != self.owner:
            raise LeaseLost(f"lease {self.path} is now held by {held and held.get('owner')}")
        atomic_write_bytes(self.path, _payload(self.owner))

    def release(self) -> None:
        held = _read(self.path)
        if held is not None and held.get("owner") == self.owner:
            self.path.unlink(missing_ok=True)

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as handle:
            handle.write(_payload(self.owner))
            handle.flush()
            os.fsync(handle.fileno())
        return True


def read_lease(path: Path) -> dict | None:
    return _read(path)


def _payload(owner: str) -> bytes:
    return orjson.dumps({"owner": owner, "renewed": time.time(), "task": slurm_task(), "slot": gpu_slot()})


def _read(path: Path) -> dict | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        # A lease torn mid-write (crash) counts as long expired.
        return {"owner": "", "renewed": 0}
