"""Counting a process's metadata calls on a run directory, for tools/bench_campaign.py.

Wall time on 2 shared cores measures the neighbours; a parallel filesystem charges per metadata call.
So the bench counts calls: `strace -f -ttt -y` (fd arguments printed with their paths) limited to the
calls a metadata server serves or that force the disk (fsync), one trace file per process, read here.
Only calls on paths inside RUN count (imports and the interpreter's own files are left out: they
are not the run's, and a site may install Python elsewhere).

A process's trace is split at its first claim: the first call that changes something in RUN outside
RUN/tasks and RUN/logs (mkdir, a create, a rename or link); calls before it are its start-up. The same
rule marks the first claim for `launcher()` below, which times start-up without strace.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

TRACED = ("openat,open,creat,stat,lstat,newfstatat,statx,access,faccessat,faccessat2,rename,renameat,renameat2,"
          "link,linkat,symlink,symlinkat,unlink,unlinkat,mkdir,mkdirat,rmdir,getdents64,fsync,fdatasync,"
          "readlink,readlinkat,utimensat,fchmodat,truncate,fstat,close")

KIND = {"openat": "open", "open": "open", "creat": "open", "stat": "stat", "lstat": "stat", "newfstatat": "stat",
        "statx": "stat", "access": "stat", "faccessat": "stat", "faccessat2": "stat", "readlink": "stat",
        "readlinkat": "stat", "rename": "rename", "renameat": "rename", "renameat2": "rename", "link": "link",
        "linkat": "link", "symlink": "link", "symlinkat": "link", "unlink": "unlink", "unlinkat": "unlink",
        "rmdir": "unlink", "mkdir": "mkdir", "mkdirat": "mkdir", "getdents64": "readdir", "fsync": "fsync",
        "fdatasync": "fsync", "utimensat": "setattr", "fchmodat": "setattr", "truncate": "setattr",
        "fstat": "fstat", "close": "close"}
# Served by the metadata server on a parallel filesystem (Lustre, GPFS): everything but fstat and close,
# which a client answers from its open handle (counted, shown apart). fsync goes to the data servers and
# the journal: shown apart as well.
METADATA = ("open", "stat", "rename", "link", "unlink", "mkdir", "readdir", "setattr")

LINE = re.compile(r"^(\d+) +(\d+\.\d+) (\w+)\((.*)$")
QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
FD_PATH = re.compile(r"(-?\d+|AT_FDCWD)<([^>]*)>")
SHARD_ID = re.compile(r"(?<!\d)(\d{6})(?!\d)")
MUTATING_OPEN = re.compile(r"O_CREAT|O_WRONLY|O_RDWR")


def strace_prefix(trace_file: Path) -> list[str]:
    return ["strace", "-f", "-ttt", "-y", "-qq", "-e", f"trace={TRACED}", "-o", str(trace_file)]


def call_path(syscall: str, args: str) -> str | None:
    """The path a call works on: its first string argument, joined to its dirfd's path when relative;
    else the path strace printed for its fd."""
    quoted = QUOTED.search(args)
    fds = FD_PATH.findall(args)
    if quoted and syscall not in ("fstat", "close", "fsync", "fdatasync", "getdents64"):
        name = quoted.group(1)
        if name.startswith("/"):
            return name
        if fds and args.startswith(fds[0][0]):
            return os.path.join(fds[0][1], name) if name else fds[0][1]
        return name
    return fds[0][1] if fds else None


def mutates(syscall: str, args: str) -> bool:
    kind = KIND.get(syscall, "")
    return kind in ("mkdir", "rename", "link") or (kind == "open" and bool(MUTATING_OPEN.search(args)))


def read_trace(trace_file: Path, run: str, done_example: str) -> dict:
    """Counts, by kind, of one process's calls on RUN: start-up (before its first claim) and steady (after),
    the steady calls split into those on shards this process committed and those on other shards
    (busy probes: looking at shards another worker holds or has committed)."""
    run = run.rstrip("/") + "/"
    tasks, logs = run + "tasks/", run + "logs/"
    done_dir = os.path.dirname(done_example) + "/"
    start, steady = Counter(), Counter()
    by_shard: dict[str, Counter] = {}
    committed: set[str] = set()
    late: Counter = Counter()  # steady calls from a second after the claim on (time-based writes)
    claimed_at = first_ts = last_ts = None
    with open(trace_file, errors="replace") as handle:
        for line in handle:
            match = LINE.match(line)
            if not match or "resumed>" in line[:80]:
                continue
            _, ts, syscall, args = match.groups()
            first_ts, last_ts = first_ts or float(ts), float(ts)
            path = call_path(syscall, args)
            if not path or not path.startswith(run):
                continue
            kind = KIND.get(syscall, syscall)
            if claimed_at is None and mutates(syscall, args) and not (path + "/").startswith((tasks, logs)):
                claimed_at = float(ts)
            if claimed_at is None:
                start[kind] += 1
                continue
            steady[kind] += 1
            if float(ts) > claimed_at + 1.0:
                late[kind] += 1
            shard = SHARD_ID.search(path[len(run):])
            if shard:
                by_shard.setdefault(shard.group(1), Counter())[kind] += 1
                if kind == "rename" and _second_path(args).startswith(done_dir) or \
                        kind == "open" and path.startswith(done_dir) and "O_CREAT" in args and ".tmp" not in path:
                    committed.add(shard.group(1))
    own = sum((c for s, c in by_shard.items() if s in committed), Counter())
    probes = sum((c for s, c in by_shard.items() if s not in committed), Counter())
    return {"start": dict(start), "steady": dict(steady), "own_shards": dict(own), "other_shards": dict(probes),
            "committed": len(committed), "probed_shards": len(set(by_shard) - committed),
            "start_s": (claimed_at - first_ts) if claimed_at and first_ts else None, "late": dict(late),
            "late_s": max(last_ts - claimed_at - 1.0, 0.0) if claimed_at and last_ts else None}


def _second_path(args: str) -> str:
    quoted = QUOTED.findall(args)
    if len(quoted) < 2:
        return ""
    name = quoted[1]
    if name.startswith("/"):
        return name
    fds = FD_PATH.findall(args)
    return os.path.join(fds[-1][1], name) if fds else name


def metadata(counts: dict) -> int:
    return sum(v for k, v in counts.items() if k in METADATA)


def add(total: dict, more: dict) -> dict:
    out = Counter(total)
    out.update(more)
    return dict(out)


# Runs the worker's entry point in this interpreter with an audit hook that notes the first claim (the
# same rule as above) and then ends the process at once: start-up seconds, CPU and peak RSS without strace.
LAUNCHER = r"""
import json, os, resource, runpy, sys, time
run, out = os.path.abspath(sys.argv[1]), sys.argv[2]
skip = (os.path.join(run, "tasks") + os.sep, os.path.join(run, "logs") + os.sep)
WRITES = os.O_WRONLY | os.O_RDWR | os.O_CREAT
def note(event, path):
    ru = resource.getrusage(resource.RUSAGE_SELF)
    with open(out, "w") as f:
        json.dump({"wall": time.time(), "cpu_s": ru.ru_utime + ru.ru_stime, "rss_kb": ru.ru_maxrss,
                   "event": event, "path": path}, f)
def hook(event, args):
    if event not in ("os.mkdir", "open", "os.rename", "os.link", "os.symlink"):
        return
    path = args[0]
    if isinstance(path, bytes):
        path = path.decode(errors="replace")
    if not isinstance(path, str):
        return
    path = os.path.abspath(path)
    if not path.startswith(run + os.sep) or (path + os.sep).startswith(skip):
        return
    if event == "open":
        mode, flags = args[1], args[2]
        if not ((isinstance(mode, str) and any(c in mode for c in "wxa+")) or (isinstance(flags, int) and flags & WRITES)):
            return
    note(event, path[len(run) + 1:])
    os._exit(0)
sys.addaudithook(hook)
import atexit
atexit.register(lambda: note("exit (nothing claimed)", ""))
sys.argv = ["hpcsynth.generate.pull", run]
runpy.run_module("hpcsynth.generate.pull", run_name="__main__", alter_sys=True)
"""
