"""Reading and writing the run directory's files: zstd JSONL, atomic JSON, checksums.

Every stage writes through these helpers, so that whatever a crash leaves behind is either the old
file or the new one, never half of one (temp file + fsync + rename).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson
import zstandard

from hpcsynth.errors import InputError

# Independent ~4 MiB frames: <1% larger than one frame, and a reader can seek between them.
FRAME_BYTES = 4 << 20


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write data to path so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _temp_beside(path: Path) -> tuple[int, str]:
    """A temporary file next to path, with the mode a plain open() would give (0644 under umask 022):
    mkstemp makes it 0600, which would leave the run unreadable to a team or a training job under
    another account once it is renamed into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    except BaseException:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    return fd, tmp


def current_umask() -> int:
    """The process's umask, read without changing it where Linux allows (os.umask can only swap it,
    which would race with other threads creating files)."""
    try:
        with open("/proc/self/status", "rb") as handle:
            for line in handle:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")


def read_json(path: Path) -> Any:
    return orjson.loads(path.read_bytes())


def _fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory entry is; some filesystems refuse, which is fine.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_jsonl_zst(path: Path, records: Iterable[dict], level: int = 3) -> tuple[int, str]:
    """Atomically write records as zstd JSONL; return (count, sha256 of the compressed file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_beside(path)
    count = 0
    digest = hashlib.sha256()
    compressor = zstandard.ZstdCompressor(level=level)
    try:
        with os.fdopen(fd, "wb") as handle:
            frame: list[bytes] = []
            size = 0
            for record in records:
                line = orjson.dumps(record) + b"\n"
                frame.append(line)
                size += len(line)
                count += 1
                if size >= FRAME_BYTES:
                    _write_frame(handle, compressor, frame, digest)
                    frame, size = [], 0
            if frame or count == 0:
                _write_frame(handle, compressor, frame, digest)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return count, digest.hexdigest()


def _write_frame(handle: Any, compressor: zstandard.ZstdCompressor, lines: list[bytes], digest: Any) -> None:
    blob = compressor.compress(b"".join(lines))
    digest.update(blob)
    handle.write(blob)


def read_jsonl_zst(path: Path) -> Iterator[dict]:
    """Records of a zstd JSONL file written by this project (all frames, via a stream reader)."""
    with open(path, "rb") as raw:
        # decompress() on a multi-frame file would silently return only the first frame.
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        for line in io.BufferedReader(reader, buffer_size=1 << 20):
            if line.strip():
                yield orjson.loads(line)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_corpus_lines(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, record) for a user's JSONL corpus file, plain, .gz or .zst.

    A line that is not a JSON object raises InputError naming the file and line.
    """
    for number, line in enumerate(_open_lines(path), start=1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise InputError(f"{path} line {number}: not valid JSON ({exc}); fix or remove that line") from None
        if not isinstance(record, dict):
            raise InputError(f"{path} line {number}: expected a JSON object per line, "
                             f"got {type(record).__name__}")
        yield number, record


def _open_lines(path: Path) -> Iterator[bytes]:
    name = path.name
    if name.endswith(".gz"):
        with gzip.open(path, "rb") as handle:
            yield from handle
    elif name.endswith(".zst"):
        with open(path, "rb") as raw:
            reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
            yield from io.BufferedReader(reader, buffer_size=1 << 20)
    else:
        with open(path, "rb") as handle:
            yield from handle
