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
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson

from hpcsynth.errors import RunError
from hpcsynth.files import atomic_write_bytes

_PROCESS_START = (0, "")  # (pid, its start time): a forked child has a pid and a start time of its own
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
    pid = os.getpid()
    if _PROCESS_START[0] != pid:  # cached per pid: a child forked after its parent named itself is not its parent
        _PROCESS_START = (pid, process_start(pid) or "0")
    return f"{socket.gethostname()}:{pid}:{_PROCESS_START[1]}:{uuid.uuid4().hex[:12]}"


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
    FIFO; a file that names no holder reads as {"owner": "", "damaged": ...}, which counts as gone.

    One open, one bounded read and a close: a worker probing a busy shard's lease pays this and nothing
    more (no fstat: a directory fails the read, a FIFO opened O_NONBLOCK reads empty). A record written in
    place (`checked_record`: a shard lease's renewals) that fails its checksum was read while its holder
    rewrote it: it is read again; one that stays torn is dated by the file's mtime (see generate/lease.py)."""
    for attempt in range(len(TORN_RETRY_S) + 1):
        data, damaged = _read_bounded(path)
        if data is None:
            return None
        if damaged:
            return damaged
        held = _parse_holder(data)
        if held is not None:
            return held
        if CHECK_KEY not in data:
            break  # not a record written in place: damaged, not torn
        if attempt < len(TORN_RETRY_S):
            time.sleep(TORN_RETRY_S[attempt])
    else:
        # Torn on every read: rewritten in place and never completed (a crash mid-write); a live holder
        # would have rewritten it whole meanwhile. Its age is the file's last write.
        try:
            renewed = os.lstat(path).st_mtime
        except FileNotFoundError:
            return None
        return {"owner": "", "renewed": renewed, "damaged": "torn", "torn": True}
    return {"owner": "", "renewed": 0, "damaged": data[:64].hex()}


# A torn read lasts as long as one write (microseconds): read again after these pauses before judging.
TORN_RETRY_S = (0.002, 0.02, 0.1)
CHECK_KEY = b',"check":"'
MAX_HOLDER_BYTES = 1 << 16


def _read_bounded(path: Path) -> tuple[bytes | None, dict | None]:
    """(bytes, None), (None, None) when there is no file, or (b"", damaged holder) for what names none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, None
    except OSError as exc:  # ELOOP: a symlink; EACCES...: nothing we can read names a holder
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return None, None
        return b"", {"owner": "", "renewed": 0, "damaged": f"{exc.errno}:{info.st_ino}:{info.st_mtime_ns}"}
    try:
        data = os.read(fd, MAX_HOLDER_BYTES)
    except OSError as exc:  # EISDIR: a directory; EAGAIN: a FIFO with a writer
        info = os.fstat(fd)
        return b"", {"owner": "", "renewed": 0, "damaged": f"mode {info.st_mode:o}:{info.st_ino}:{exc.errno}"}
    finally:
        os.close(fd)
    return data, None


def _parse_holder(data: bytes) -> dict | None:
    """The holder a lock file's bytes name; None when they do not parse or fail their checksum."""
    try:
        held = orjson.loads(data)
    except orjson.JSONDecodeError:
        held = None
    if isinstance(held, dict) and "check" in held:
        if not _check_ok(data):
            return None
        del held["check"]
    if isinstance(held, dict) and "owner" not in held and "host" in held and "pid" in held:
        held = {**held, "owner": f"{held['host']}:{held['pid']}"}  # a reduce lock of hpcsynth before this one
    elif held is None and data.count(b":") == 1 and data.strip().rpartition(b":")[2].isdigit():
        held = {"owner": data.decode("utf-8", "replace").strip()}  # a plan lock of before: "HOST:PID\n"
    return held if isinstance(held, dict) else None


def holder_of(data: bytes) -> dict:
    """The holder a lock file's bytes name ({} when none): for a file already open."""
    return _parse_holder(data) or {}


def checked_record(record: dict, width: int = 0) -> bytes:
    """record as one JSON line whose last key, "check", is the crc32 of what precedes it; padded with
    spaces to `width` bytes (newline included) so that rewriting it in place never changes the file's
    size. Any JSON reader reads it; read_holder tells a torn read from a whole one by the check."""
    body = orjson.dumps(record)
    line = body[:-1] + CHECK_KEY + b"%08x" % zlib.crc32(body[:-1]) + b'"}'
    if width:
        if len(line) + 1 > width:
            raise ValueError(f"record of {len(line)} bytes does not fit its {width}-byte slot")
        return line + b" " * (width - len(line) - 1) + b"\n"
    return line + b"\n"


def _check_ok(data: bytes) -> bool:
    line = data.rstrip()
    at = line.rfind(CHECK_KEY)
    if at < 0 or not line.endswith(b'"}'):
        return False
    return line[at + len(CHECK_KEY):-2] == b"%08x" % zlib.crc32(line[:at])


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


def create_held(path: Path, payload: bytes) -> int | None:
    """create_exclusive for a file its creator rewrites in place (a shard lease): a read-write descriptor of
    the created file, or None when the name is taken. No fsync: the temporary file is closed before the
    link (NFS writes its data back on close, so no reader sees it empty), and a lease lost to a crash only
    makes its shard's lease stale, which is what a crash should do."""
    return _placed_held(path, payload, os.link)


def replace_held(path: Path, payload: bytes) -> int:
    """Put a whole new file at path (a rename over it, never followed) and return a read-write descriptor
    of it: a takeover, whose holder then rewrites it in place."""
    held = _placed_held(path, payload, os.replace)
    assert held is not None  # a rename replaces whatever is there; only a link finds the name taken
    return held


def _placed_held(path: Path, payload: bytes, place: Callable[[Path, Path], None]) -> int | None:
    """A complete temporary file put at path by `place` (link: only if the name is free; replace: over it),
    with a read-write descriptor kept; None when a link found the name taken."""
    tmp = _write_temp(path, payload)
    try:
        held = os.open(tmp, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            place(tmp, path)
        except BaseException as exc:
            os.close(held)
            if isinstance(exc, FileExistsError):
                return None
            raise
        return held
    finally:
        tmp.unlink(missing_ok=True)


def rewrite_held(fd: int, payload: bytes) -> None:
    """Overwrite a held file from its first byte with a payload of its own size: no truncate, so a reader
    never sees it shorter; a reader racing the write may see it torn, which checked_record detects."""
    done = 0
    while done < len(payload):
        done += os.pwrite(fd, payload[done:], done)


def _write_temp(path: Path, payload: bytes) -> Path:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    try:
        done = 0
        while done < len(payload):
            done += os.write(fd, payload[done:])
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


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


def take_over(path: Path, stale: dict, owner: str, timeout: float = TAKEOVER_TIMEOUT_S,
              replace: Callable[[], object] | None = None) -> bool:
    """Replace the lock judged stale with one naming owner; False when it changed since it was judged.
    replace: how to put the new file there (the lease keeps a descriptor of it); by default a lock record."""
    mutex = path.with_name(path.name + ".takeover")
    if not take_mutex(mutex, owner, timeout):
        return False
    try:
        if read_holder(path) != stale:
            return False  # renewed, released or retaken since we judged it: not ours to take
        if replace is not None:
            replace()  # a rename over it, as below
        else:
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
