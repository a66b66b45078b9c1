"""Fixed-width JSON lines: a file any JSONL reader reads, in which row i starts at byte i x width.

The plan's shard rows live in one (RUN/manifest.rows.jsonl, docs/run-directory.md): a worker reads its
shard's row with one pread of `width` bytes and parses nothing else, where a manifest.json holding
339,000 rows cost every reader seconds and ~1 GB of Python objects. A line is the row's compact JSON
(sorted keys), padded with spaces and ended by a newline, `width` bytes in all; the writer chooses the
width (the longest row rounded up) and whoever points at the file declares it (the manifest's header).

Reading trusts nothing the file says: the file must be a regular file (no symlink, no FIFO) of exactly
count x width bytes, and each slot one line holding one JSON object. A damaged slot is a RowFileError
naming the file and the row; the rows around it still read.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

ROUND = 16  # widths are multiples of this: a few bytes a row, and round numbers in the header
MAX_WIDTH = 1 << 20  # refused at write, and in a header at read: a forged width would size every read
BLOCK_BYTES = 1 << 20  # a streaming read takes this much at a time (whole rows)


class RowFileError(ValueError):
    """A row file, or one of its rows, is not what its header says; the message names the file (and row)."""


def encode_row(row: dict[str, Any]) -> bytes:
    return orjson.dumps(row, option=orjson.OPT_SORT_KEYS)


def row_width(encoded: Iterable[int]) -> int:
    """The width for rows of these encoded lengths: the longest, plus its newline, rounded up to ROUND."""
    longest = max(encoded, default=1)
    width = -(-(longest + 1) // ROUND) * ROUND
    if width > MAX_WIDTH:
        raise RowFileError(f"a row of {longest:,} bytes is past the {MAX_WIDTH:,} a row file allows")
    return width


def padded_rows(rows: Sequence[dict[str, Any]], width: int) -> Iterator[bytes]:
    """The file's bytes, a block of rows at a time (for files.atomic_write_chunks)."""
    per_block = max(1, BLOCK_BYTES // width)
    for start in range(0, len(rows), per_block):
        yield b"".join(_pad(encode_row(row), width) for row in rows[start:start + per_block])


def _pad(line: bytes, width: int) -> bytes:
    if len(line) >= width:
        raise RowFileError(f"a row of {len(line):,} bytes does not fit the width {width:,}")
    return line + b" " * (width - 1 - len(line)) + b"\n"


def read_row(path: Path, index: int, count: int, width: int) -> dict[str, Any]:
    """Row `index` (0 <= index < count), read with one pread of `width` bytes."""
    fd = _open_checked(path, count, width)
    try:
        slot = os.pread(fd, width, index * width)
    except OSError as exc:
        raise RowFileError(f"{path}: row {index} cannot be read ({exc.strerror})") from None
    finally:
        os.close(fd)
    return parse_slot(slot, path, index, width)


def iter_rows(path: Path, count: int, width: int) -> Iterator[dict[str, Any]]:
    """Every row in order, BLOCK_BYTES at a time: memory is one block, whatever the count."""
    fd = _open_checked(path, count, width)
    try:
        per_block = max(1, BLOCK_BYTES // width)
        for start in range(0, count, per_block):
            rows = min(per_block, count - start)
            try:
                block = os.pread(fd, rows * width, start * width)
            except OSError as exc:
                raise RowFileError(f"{path}: rows from {start} cannot be read ({exc.strerror})") from None
            for i in range(rows):
                yield parse_slot(block[i * width:(i + 1) * width], path, start + i, width)
    finally:
        os.close(fd)


def parse_slot(slot: bytes, path: Path, index: int, width: int) -> dict[str, Any]:
    if len(slot) != width or slot[-1:] != b"\n":
        raise RowFileError(f"{path}: row {index} is damaged (not a line of {width} bytes)")
    body = slot[:-1].rstrip(b" ")
    if b"\n" in body:  # valid JSON may hold newlines, a JSONL line may not
        raise RowFileError(f"{path}: row {index} is damaged (more than one line in its {width} bytes)")
    try:
        row = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise RowFileError(f"{path}: row {index} is damaged (not JSON)") from None
    if not isinstance(row, dict):
        raise RowFileError(f"{path}: row {index} is damaged (not a JSON object)")
    return row


def check_file(path: Path, count: int, width: int) -> None:
    """RowFileError unless path is a regular file of count x width bytes (one open and fstat, no read)."""
    os.close(_open_checked(path, count, width))


def _open_checked(path: Path, count: int, width: int) -> int:
    """A descriptor on the row file, once it is a regular file of count x width bytes. O_NOFOLLOW and
    O_NONBLOCK as files.read_regular: a symlink or a FIFO planted there is refused, never followed or waited on."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise RowFileError(f"{path} is missing") from None
    except OSError as exc:
        why = "a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
        raise RowFileError(f"{path} cannot be read ({why})") from None
    info = os.fstat(fd)
    problem = ""
    if not stat.S_ISREG(info.st_mode):
        problem = f"{path} is not a regular file"
    elif info.st_size != count * width:
        problem = (f"{path} has {info.st_size:,} bytes, not {count:,} rows of {width} bytes (cut, grown or "
                   f"replaced since its header was written)")
    if problem:
        os.close(fd)
        raise RowFileError(problem)
    return fd
