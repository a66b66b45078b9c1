"""status's memory between one-shot calls: the done table (status/done.py) in RUN/index/status-cache.

Why in the run directory, not a user cache dir: everyone who watches a campaign (and `estimate`, and the
reduce's card) shares one cache that moves, is copied and is deleted with the run, on the filesystem built
for the run's size (not a home quota); it says no more than the markers and index lines beside it, which
need the same write access to forge. A reader without write access keeps it in their own cache folder
instead ($XDG_CACHE_HOME/hpcsynth/status/, else ~/.cache/hpcsynth/status/), one file per run and plan
(named by the run's real path and manifest.json's identity), the USER_CACHES newest kept; a call reads the
newer of the run's and the user's. Best effort all the way: an unwritable directory, a damaged, cut or
foreign file is ignored (the table starts empty, costing time, never a number).

Layout: one JSON header line (shards, prompts, fingerprints, index offsets, the last listing's
signatures, the output size checks' cursor), then each column's raw bytes in sorted column-name order.
Its size follows from the header and the plan's shard count, so a read is bounded before it starts.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from hpcsynth.errors import HpcsynthError
from hpcsynth.files import atomic_write_chunks
from hpcsynth.generate.index import index_dir
from hpcsynth.rundir import RunDir
from hpcsynth.status.done import COUNT_COLUMNS, DoneTable, MARKER, MAX_COUNT, empty_columns

FORMAT = "hpcsynth-status-cache/2"
MAX_HEADER_BYTES = 16 << 20  # offsets of ~100k index files; a bigger header is not ours
USER_CACHES = 8  # status caches kept in the user's cache folder (runs this user cannot write), newest first


def cache_path(run: RunDir) -> Path:
    return index_dir(run) / "status-cache"


def user_cache_path(run: RunDir) -> Path | None:
    """Where a user who cannot write RUN keeps its status cache: $XDG_CACHE_HOME/hpcsynth/status/ (else
    ~/.cache/hpcsynth/status/), one file per run and plan: named by the run's real path and manifest.json's
    identity (a re-plan writes a new manifest, so a new name; the old file ages out)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    try:
        if not os.path.isabs(base):
            base = os.path.join(os.path.expanduser("~"), ".cache")
        manifest = os.stat(run.manifest_path)
        key = [os.path.realpath(run.root), manifest.st_dev, manifest.st_ino, manifest.st_mtime_ns, manifest.st_size]
    except (OSError, RuntimeError):
        return None
    return Path(base) / "hpcsynth" / "status" / f"{hashlib.sha256(orjson.dumps(key)).hexdigest()[:32]}.cache"


def load_table(run: RunDir, shards: int, prompts: tuple[str, ...]) -> DoneTable:
    """The cached table of this run (the run's own or this user's, the newer first), or an empty one when
    there is none fit to use."""
    candidates: list[tuple[int, str]] = []
    for place in (cache_path(run), user_cache_path(run)):
        try:
            if place is not None:
                candidates.append((os.stat(place).st_mtime_ns, str(place)))
        except OSError:
            pass
    for _, found in sorted(candidates, reverse=True):
        table = _load(Path(found), shards, prompts)
        if table is not None:
            return table
    return DoneTable(shards, prompts)


def _load(path: Path, shards: int, prompts: tuple[str, ...]) -> DoneTable | None:
    table = DoneTable(shards, prompts)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                return None
            header_line = handle.readline(MAX_HEADER_BYTES)
            header = orjson.loads(header_line)
            template = empty_columns(shards, len(prompts))
            if not _header_fits(header, shards, prompts):
                return None
            if info.st_size != len(header_line) + sum(c.nbytes for c in template.values()):
                return None
            cols = {}
            for name in sorted(template):
                column = template[name]
                if handle.readinto(_bytes_of(column)) != column.nbytes:
                    return None
                cols[name] = column
    except (OSError, ValueError):
        return None
    if not _columns_fit(cols, len(header["fingerprints"])):
        return None
    table.cols, table.fingerprints = cols, list(header["fingerprints"])
    table.offsets = {n: (o[0], o[1]) for n, o in header["offsets"].items()}
    table.listed = _signature(header["listed"])
    table.listed_at = float(header["listed_at"])
    table.signals = tuple(_signature(s) for s in header["signals"])
    table.unindexed, table.damaged_lines = header["unindexed"], header["damaged_lines"]
    table.size_cursor = header["size_cursor"]
    return table


def save_table(run: RunDir, table: DoneTable) -> None:
    """Write the table atomically into RUN/index/, else (a run this user cannot write) into the user's cache
    folder; quietly not at all when neither will take it."""
    header = {"format": FORMAT, "shards": table.shards, "prompts": list(table.prompts),
              "fingerprints": table.fingerprints, "offsets": {n: list(o) for n, o in table.offsets.items()},
              "listed": table.listed, "listed_at": table.listed_at, "signals": list(table.signals),
              "unindexed": table.unindexed, "damaged_lines": table.damaged_lines, "size_cursor": table.size_cursor}
    chunks: list[Any] = [orjson.dumps(header) + b"\n"]
    chunks += [_bytes_of(np.ascontiguousarray(table.cols[name])) for name in sorted(table.cols)]  # no copy
    try:
        index_dir(run).mkdir(exist_ok=True)
        atomic_write_chunks(cache_path(run), chunks)
        return
    except (OSError, HpcsynthError):
        pass
    path = user_cache_path(run)
    if path is None:
        return
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write_chunks(path, chunks)
        _prune(path.parent)
    except (OSError, HpcsynthError):
        pass


def _bytes_of(column: np.ndarray) -> memoryview:
    """A C-contiguous column's memory as bytes, without a copy."""
    return memoryview(column.reshape(-1).view(np.uint8))  # type: ignore[arg-type]


def _prune(folder: Path) -> None:
    """Keep the USER_CACHES newest status caches of the user's folder (only files named as ours)."""
    found = []
    with os.scandir(folder) as entries:
        for entry in entries:
            stem = entry.name.removesuffix(".cache")
            if entry.name.endswith(".cache") and len(stem) == 32 and all(c in "0123456789abcdef" for c in stem):
                try:
                    found.append((entry.stat(follow_symlinks=False).st_mtime_ns, entry.path))
                except OSError:
                    pass
    for _, path in sorted(found, reverse=True)[USER_CACHES:]:
        try:
            os.unlink(path)
        except OSError:
            pass


def _is_int(value: Any) -> bool:
    return type(value) is int and 0 <= value <= MAX_COUNT


def _signature(value: Any) -> tuple[int, int, int] | None:
    if value is None:
        return None
    if isinstance(value, list) and len(value) == 3 and all(type(v) is int for v in value):
        return (value[0], value[1], value[2])
    raise ValueError("not a signature")


def _header_fits(header: Any, shards: int, prompts: tuple[str, ...]) -> bool:
    if not (isinstance(header, dict) and header.get("format") == FORMAT and header.get("shards") == shards
            and header.get("prompts") == list(prompts)):
        return False
    fingerprints, offsets, signals = header.get("fingerprints"), header.get("offsets"), header.get("signals")
    try:
        _signature(header.get("listed"))
        if not (isinstance(signals, list) and len(signals) in (0, 4)):
            return False
        for one in signals:
            _signature(one)
    except ValueError:
        return False
    return (isinstance(fingerprints, list) and all(isinstance(f, str) and len(f) == 64 for f in fingerprints)
            and isinstance(offsets, dict)
            and all(isinstance(n, str) and n.startswith("done-") and "/" not in n and isinstance(o, list)
                    and len(o) == 2 and all(_is_int(v) for v in o) for n, o in offsets.items())
            and type(header.get("listed_at")) in (int, float) and _is_int(header.get("unindexed"))
            and _is_int(header.get("damaged_lines")) and _is_int(header.get("size_cursor")))


def _columns_fit(cols: dict[str, np.ndarray], fingerprints: int) -> bool:
    """Every value one that DoneTable could have written (a count in [0, 2**53], a known state...)."""
    counted = cols["state"] == MARKER
    numbers = [cols[k] for k in COUNT_COLUMNS if k != "bytes"] + [cols["by_prompt"]]
    return bool(cols["state"].max(initial=0) <= 3 and cols["output"].max(initial=0) <= 3
                and cols["has_by_prompt"].max(initial=0) <= 1
                and np.all((cols["fp"][counted] >= 0) & (cols["fp"][counted] < fingerprints))
                and all(np.all(np.isfinite(c) & (c >= 0) & (c <= MAX_COUNT)) for c in numbers)
                and np.all(np.isfinite(cols["bytes"]) & (cols["bytes"] >= -1) & (cols["bytes"] <= MAX_COUNT)))
