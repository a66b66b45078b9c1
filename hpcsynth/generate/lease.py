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
lease judged stale. The holder's identity, the exclusive create and the takeover are hpcsynth/locks.py's,
shared with every other lock; what is the lease's own is the renewal and the timeout.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from hpcsynth.files import atomic_write_bytes
# The holder's identity and the O_EXCL file live on the ground floor (every lock is this one); the
# workers, status and tests import them from here too.
from hpcsynth.locks import (create_exclusive, gpu_slot, holder_gone, holder_record, new_owner,  # noqa: F401
                            process_start, read_holder, slurm_identity, slurm_task, take_over)


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
        return create_exclusive(self.path, holder_record(self.owner))

    def _take_over(self, stale: dict) -> bool:
        if not take_over(self.path, stale, self.owner, self.timeout):
            return False
        renewal_path(self.path, str(stale.get("owner", ""))).unlink(missing_ok=True)
        return True


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
    """The lease's holder; None when there is none. A lease torn mid-write (crash), damaged, or a symlink or
    FIFO planted there counts as long expired (read without following or blocking: locks.read_holder)."""
    return read_holder(path)
