"""One worker per shard at a time: a lease file naming its holder, which the holder renews in place.

No flock (unreliable over NFS). The lease (work/ID/lease.json) is created exclusively: a hard link of a
complete temporary file, so it appears whole or not at all (locks.create_held). It names its holder
(host, pid, process start, random token; Slurm task, restart, step, rank, GPU slot) and when it last
renewed. Times come from the contents, so nodes compare their own clocks (kept in step by NTP on any
cluster) rather than a file server's mtime.

Probing. A worker reads the lease before it creates anything: one open (no-follow, non-blocking), one
bounded read, one close (locks.read_holder). No file: it checks the shard is not done and creates the
lease. A live holder: the shard is busy, and the probe has created, written and removed nothing. A stale
holder: it takes the lease over (below).

Renewing. The holder keeps a read-write descriptor of the file it created and renews by overwriting the
record through it (os.pwrite at offset 0: no temp file, no rename, no fsync), with a payload padded to the
file's fixed width, so the file never changes size and a reader never sees it shorter. A renewal first
reads the lease by its path: if it names another holder, the lease is lost (LeaseLost). Because renewals
go through the descriptor, never the path, a renewal cannot overwrite a takeover: a taker renames a new
file over the path, and the old holder's late writes land in the old, now nameless, file. No fsync: a
renewal lost to a crash only makes the lease stale, which is what a crash should do.

Torn reads. A reader may read the lease while its holder rewrites it and see part old record, part new.
Each record ends with a crc32 of the rest ("check"): a read that fails it is torn, never taken for a
record. (Mixed digits of two times could otherwise read as an old time and judge a live holder stale.)
The reader then reads again after 2, 20 and 100 ms; a write takes microseconds and comes once per
heartbeat, so the second read sees a whole record. A record torn on every read was left so by a crash
mid-write (a live holder rewrites it whole within a heartbeat): it is dated by the file's mtime, the
file server's time of that last write. So a torn read never judges a live holder stale: either a reread
gives its true (recent) time, or the mtime of its write in progress is recent; a dead holder's torn
record ages like any other and is taken over after `timeout`.

A lease is stale when its holder's last renewal is older than `timeout`, or at once when the holder is
provably gone: a process of this host that no longer exists (pid and start time, so a reused pid does
not fool us), or an earlier incarnation of this very Slurm array task (requeued after a preemption or a
time limit: Slurm runs one incarnation of an array task at a time). Workers inside one job (`srun -n N`,
`launch --workers N` under salloc) share a job id but never count as each other's ghosts.

A stale lease is taken over under a takeover mutex (work/ID/lease.json.takeover, O_EXCL): of several
racing takers one holds the mutex, re-reads the lease, and replaces it (a rename over it) only if it is
still the very record judged stale, so a holder that renewed meanwhile keeps it. The holder's identity,
the exclusive create and the takeover are hpcsynth/locks.py's, shared with every other lock; what is the
lease's own is the renewal in place and the timeout.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

# The holder's identity and the O_EXCL file live on the ground floor (every lock is this one); the
# workers, status and tests import them from here too.
from hpcsynth.locks import (checked_record, create_exclusive, create_held, gpu_slot, holder_gone,  # noqa: F401
                            holder_of, holder_record, new_owner, process_start, read_holder, replace_held, rewrite_held,
                            slurm_identity, slurm_task, take_over)

# Room in a lease's fixed-width slot beyond its first record: renewals change only the time's digits.
SLOT_SPARE = 32


class LeaseLost(Exception):
    """Another worker holds this shard's lease now; stop without committing."""


@dataclass
class Lease:
    path: Path
    owner: str
    timeout: float
    lost: bool = field(default=False, init=False)
    _fd: int | None = field(default=None, init=False, repr=False)
    _record: dict = field(default_factory=dict, init=False, repr=False)
    _width: int = field(default=0, init=False, repr=False)

    def probe(self) -> dict | None:
        """The lease's holder as it reads now (None: no lease): open, bounded read, close; creates nothing."""
        return read_lease(self.path)

    def busy(self, held: dict | None) -> bool:
        """Whether a probed holder keeps this worker out: another holder, alive and renewing."""
        return held is not None and held.get("owner") != self.owner and not is_stale(self.path, held, self.timeout)

    def acquire(self, absent: bool = False) -> bool:
        """Take the lease; False when another live worker holds it. absent: a probe just found no lease,
        so the first try creates without reading again."""
        for attempt in range(3):
            held = None if absent and attempt == 0 else read_lease(self.path)
            if held is None:
                if self._create():
                    self.lost = False
                    return True
                continue  # taken between our read and our create, or the work directory came and went
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
        """Prove this holder alive; LeaseLost when the lease names another worker now. One read by path
        and one write in place through the held descriptor (see the module docstring)."""
        if not self.held():
            self.lost = True
            self.close()
            raise LeaseLost(f"lease {self.path} is no longer held by this worker")
        if self._fd is None:
            try:
                self._adopt()
            except (LeaseLost, FileNotFoundError):
                self.lost = True
                raise LeaseLost(f"lease {self.path} is no longer held by this worker") from None
        assert self._fd is not None
        self._record["renewed"] = time.time()
        rewrite_held(self._fd, checked_record(self._record, self._width))

    def release(self) -> None:
        if self.held():
            self.path.unlink(missing_ok=True)
        self.close()

    def close(self) -> None:
        """Let go of the descriptor (the lease file itself stays as it is)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _new_record(self) -> bytes:
        self._record = {"owner": self.owner, "renewed": time.time(), **slurm_identity()}
        first = checked_record(self._record)
        self._width = len(first) + SLOT_SPARE
        return checked_record(self._record, self._width)

    def _create(self) -> bool:
        payload = self._new_record()
        try:
            fd = create_held(self.path, payload)
        except FileNotFoundError:
            # No work directory: never created, or its holder committed and removed it since we looked.
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = create_held(self.path, payload)
            except FileNotFoundError:
                return False  # removed again between our mkdir and our create: look again
        if fd is None:
            return False
        self.close()
        self._fd = fd
        return True

    def _adopt(self) -> None:
        """This owner's lease, left by an earlier Lease object of the same owner: rewrite it in place from
        here on, through a descriptor opened by its path and checked to be this owner's file."""
        fd = os.open(self.path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            data = os.pread(fd, 1 << 16, 0)
            size = os.fstat(fd).st_size
            if holder_of(data).get("owner") != self.owner:
                raise LeaseLost(f"lease {self.path} is no longer held by this worker")
        except BaseException:
            os.close(fd)
            raise
        self._new_record()
        # Never shorter than the file: a longer record overwrites every old byte, a shorter one would not.
        self._width = max(self._width, size)
        self._fd = fd

    def _take_over(self, stale: dict) -> bool:
        payload = self._new_record()

        def replace() -> None:
            self.close()
            self._fd = replace_held(self.path, payload)

        return take_over(self.path, stale, self.owner, self.timeout, replace=replace)


def last_renewed(held: dict) -> float:
    """When the holder last proved itself alive: the lease's own time (a torn record's: its file's mtime)."""
    try:
        return float(held.get("renewed", 0) or 0)
    except (TypeError, ValueError):
        return 0.0


def is_stale(lease_path: Path, held: dict, timeout: float) -> bool:
    return time.time() - last_renewed(held) >= timeout or holder_gone(held)


def read_lease(path: Path) -> dict | None:
    """The lease's holder; None when there is none. A lease damaged, or a symlink or FIFO planted there,
    counts as long expired; one torn on every read is dated by its mtime (read without following or
    blocking: locks.read_holder)."""
    return read_holder(path)
