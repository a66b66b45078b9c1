"""One reduce per output directory at a time: DIR/parts/lock, created exclusively (O_EXCL, so it works
on NFS and Lustre where flock does not).

Two reduces into one directory would write the same temporary merge files and leave a mix of both.
A lock whose holder is a dead process on this host is taken over at once (a killed reduce must not
need hand surgery); one held from another host is reported with its owner and how to clear it.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import orjson

from hpcsynth.errors import RunError


@contextlib.contextmanager
def reduce_lock(out_dir: Path) -> Iterator[None]:
    path = Path(out_dir) / "parts" / "lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    mine = {"host": socket.gethostname(), "pid": os.getpid()}
    if not _create(path, mine):
        held = _read(path)
        if held is not None and not _dead(held):
            raise RunError(f"another reduce (pid {held.get('pid')} on {held.get('host')}) is writing {out_dir}; "
                           f"wait for it, or delete {path} if that process is gone")
        path.unlink(missing_ok=True)  # a dead holder's lock (or a damaged one): take it over
        if not _create(path, mine):
            raise RunError(f"another reduce took {path} at the same moment; run reduce again once it is done")
    try:
        yield
    finally:
        if _read(path) == mine:
            path.unlink(missing_ok=True)


def _create(path: Path, owner: dict) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as handle:
        handle.write(orjson.dumps(owner))
    return True


def _read(path: Path) -> dict | None:
    try:
        held = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return held if isinstance(held, dict) else None


def _dead(held: dict) -> bool:
    if held.get("host") != socket.gethostname():
        return False  # cannot tell from here
    try:
        os.kill(int(held.get("pid", 0)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError, TypeError):
        return False
    return False
