"""One reduce per output directory at a time: DIR/parts/lock, the run directory's one lock (hpcsynth/locks.py).

Two reduces into one directory would write the same temporary merge files and leave a mix of both.
A lock whose holder is provably gone (a dead process of this host, an earlier incarnation of this Slurm
task) is taken over at once (a killed reduce must not need hand surgery); one held from another host is
reported with its holder and how to clear it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from hpcsynth.locks import acquire_lock


@contextlib.contextmanager
def reduce_lock(out_dir: Path) -> Iterator[None]:
    path = Path(out_dir) / "parts" / "lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with acquire_lock(path, "reduce", writing=Path(out_dir)):
        yield
