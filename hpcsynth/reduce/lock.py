"""One reduce per output directory at a time: DIR/parts/lock, the run directory's one lock (hpcsynth/locks.py).

Two reduces into one directory would write the same temporary merge files and leave a mix of both. It is
held from before prepare_reduce (which drops parts of other settings and rewrites parts/spec.json) to the
end of the merge, and by `reduce --executor slurm` while it prepares and submits (cli/reduce.py).
A lock whose holder is provably gone (a dead process of this host, an earlier incarnation of this Slurm
task) is taken over at once (a killed reduce must not need hand surgery); one held from another host is
reported with its holder and how to clear it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from hpcsynth.errors import RunError
from hpcsynth.locks import LockHeld, acquire_lock


@contextlib.contextmanager
def reduce_lock(out_dir: Path) -> Iterator[None]:
    path = Path(out_dir) / "parts" / "lock"
    for attempt in range(3):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            lock = acquire_lock(path, "reduce", writing=Path(out_dir))
            break
        except LockHeld:
            raise
        except RunError:
            # A reduce that has just released the lock removes DIR/parts once it is empty (cleanup.drop_empty),
            # maybe between our mkdir and our lock file: make it again and retry, rather than fail.
            if attempt == 2 or path.parent.is_dir():
                raise
    with lock:
        yield


def is_lock_file(name: str) -> bool:
    """The lock's own files in DIR/parts (the lock, its takeover mutex, a taker's temporary file): never a
    part, never removed with the parts (a racing reduce's temporary file is its lock about to appear)."""
    return name.startswith(("lock", ".lock."))
