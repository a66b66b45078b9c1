"""Writer for Megatron's indexed dataset (PREFIX.bin + PREFIX.idx), the reducer's default output.

.bin is every document's tokens back to back, no header; .idx is a small header, then each sequence's
length (int32) and byte offset (int64), then document boundaries. One document is one sequence. The
layout matches megatron-core's IndexedDatasetBuilder byte for byte (tests read it with megatron-core).

Memory stays flat however many documents are written: lengths go to a side file as they arrive, and
finish() streams the index from it in blocks (an in-memory list of lengths would cost ~36 bytes per
document, gigabytes at FinePhrase's billion-plus documents).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from hpcsynth.files import open_write_nofollow

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
DTYPE_CODES = {np.uint8: 1, np.int8: 2, np.int16: 3, np.int32: 4, np.int64: 5, np.float64: 6,
               np.float32: 7, np.uint16: 8}
BLOCK = 1 << 20  # sequences per block when streaming the index


def token_dtype(vocab_size: int) -> type:
    # Megatron's own rule: uint16 while every id fits with headroom, else int32.
    return np.uint16 if vocab_size < 65500 else np.int32


def with_suffix(prefix: Path, suffix: str) -> Path:
    return prefix.with_name(prefix.name + suffix)


class IndexedDatasetWriter:
    """Append documents, then finish(); files appear (renamed into place) only when complete."""

    suffixes = (".bin", ".idx")

    def __init__(self, prefix: Path, dtype: type[np.generic]) -> None:
        self.prefix = Path(prefix)
        self.dtype = dtype
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        self._bin_tmp = with_suffix(self.prefix, ".bin.tmp")
        self._len_tmp = with_suffix(self.prefix, ".lengths.tmp")
        # A symlink planted at a temporary must not make us write outside the output directory.
        self._bin = open_write_nofollow(self._bin_tmp, directory_too=False)
        self._lengths = open_write_nofollow(self._len_tmp, directory_too=False)
        self.sequences = 0
        self.tokens = 0

    @property
    def bytes_written(self) -> int:
        return self.tokens * np.dtype(self.dtype).itemsize

    def add(self, tokens: np.ndarray | list[int]) -> None:
        array: np.ndarray = np.asarray(tokens, dtype=self.dtype)
        self._bin.write(array.tobytes(order="C"))
        self._lengths.write(struct.pack("<i", len(array)))
        self.sequences += 1
        self.tokens += len(array)

    def finish(self) -> list[Path]:
        _close_durably(self._bin)
        _close_durably(self._lengths)
        idx_tmp = with_suffix(self.prefix, ".idx.tmp")
        with open_write_nofollow(idx_tmp, directory_too=False) as handle:
            self._write_index(handle)
            handle.flush()
            os.fsync(handle.fileno())
        self._len_tmp.unlink()
        bin_path, idx_path = with_suffix(self.prefix, ".bin"), with_suffix(self.prefix, ".idx")
        os.replace(self._bin_tmp, bin_path)
        os.replace(idx_tmp, idx_path)  # the .idx lands last: its presence means the pair is whole
        return [bin_path, idx_path]

    def _write_index(self, handle) -> None:
        count = self.sequences
        handle.write(MAGIC + struct.pack("<Q", VERSION) + struct.pack("<B", DTYPE_CODES[self.dtype]))
        handle.write(struct.pack("<Q", count) + struct.pack("<Q", count + 1))
        for block in _length_blocks(self._len_tmp):
            handle.write(block.astype("<i4").tobytes())
        itemsize = np.dtype(self.dtype).itemsize
        offset = 0
        for block in _length_blocks(self._len_tmp):
            ends = np.cumsum(block, dtype=np.int64) * itemsize + offset
            starts = np.empty_like(ends)
            starts[0], starts[1:] = offset, ends[:-1]
            handle.write(starts.astype("<i8").tobytes())
            offset = int(ends[-1])
        for start in range(0, count + 1, BLOCK):
            handle.write(np.arange(start, min(start + BLOCK, count + 1), dtype="<i8").tobytes())

    def abort(self) -> None:
        for handle, path in ((self._bin, self._bin_tmp), (self._lengths, self._len_tmp)):
            handle.close()
            path.unlink(missing_ok=True)


def _length_blocks(path: Path):
    with open(path, "rb") as handle:
        while block := handle.read(4 * BLOCK):
            yield np.frombuffer(block, dtype="<i4")


def _close_durably(handle) -> None:
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()


def read_index(prefix: Path) -> tuple[type, np.ndarray, np.ndarray, np.ndarray]:
    """(dtype, lengths, pointers, document indices) of PREFIX.idx; ValueError if it is not one."""
    raw = np.memmap(with_suffix(Path(prefix), ".idx"), dtype=np.uint8, mode="r")
    if raw.size < 34 or bytes(raw[:9]) != MAGIC:
        raise ValueError("not a Megatron index (bad magic or too short)")
    code = int(raw[17])
    dtype = next((t for t, c in DTYPE_CODES.items() if c == code), None)
    count, docs = struct.unpack("<QQ", bytes(raw[18:34]))
    if dtype is None or raw.size != 34 + 12 * count + 8 * docs:
        raise ValueError(f"index header (dtype code {code}, {count} sequences) does not match its size")
    lengths = np.frombuffer(raw, dtype="<i4", count=count, offset=34)
    pointers = np.frombuffer(raw, dtype="<i8", count=count, offset=34 + 4 * count)
    documents = np.frombuffer(raw, dtype="<i8", count=docs, offset=34 + 12 * count)
    return dtype, lengths, pointers, documents


def read_indexed_dataset(prefix: Path) -> list[np.ndarray]:
    """Our own small reader, for tests and reports; tests check it against megatron-core's."""
    dtype, lengths, pointers, _ = read_index(prefix)
    data = np.memmap(with_suffix(Path(prefix), ".bin"), dtype=dtype, mode="r")
    itemsize = np.dtype(dtype).itemsize
    return [np.asarray(data[p // itemsize: p // itemsize + n]) for p, n in zip(pointers, lengths)]
