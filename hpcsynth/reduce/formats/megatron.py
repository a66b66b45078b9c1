"""Writer for Megatron's indexed dataset (PREFIX.bin + PREFIX.idx), the reducer's default output.

.bin is every document's tokens back to back, no header; .idx is a small header, then each sequence's
length (int32) and byte offset (int64), then document boundaries. One document is one sequence. The
layout matches megatron-core's IndexedDatasetBuilder byte for byte (tests read it with megatron-core).
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


def token_dtype(vocab_size: int) -> type:
    # Megatron's own rule: uint16 while every id fits with headroom, else int32.
    return np.uint16 if vocab_size < 65500 else np.int32


class IndexedDatasetWriter:
    """Append documents, then finish(); files appear (renamed into place) only when complete."""

    def __init__(self, prefix: Path, dtype: type) -> None:
        self.prefix = Path(prefix)
        self.dtype = dtype
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        self._bin_tmp = self.prefix.with_name(self.prefix.name + ".bin.tmp")
        self._bin = open_write_nofollow(self._bin_tmp, directory_too=False)
        self.lengths: list[int] = []

    def add(self, tokens: np.ndarray | list[int]) -> None:
        array = np.asarray(tokens, dtype=self.dtype)
        self._bin.write(array.tobytes(order="C"))
        self.lengths.append(len(array))

    def finish(self) -> tuple[Path, Path]:
        self._bin.flush()
        os.fsync(self._bin.fileno())
        self._bin.close()
        lengths = np.asarray(self.lengths, dtype=np.int32)
        itemsize = np.dtype(self.dtype).itemsize
        pointers = np.zeros(len(lengths), dtype=np.int64)
        if len(lengths) > 1:
            pointers[1:] = np.cumsum(lengths[:-1], dtype=np.int64) * itemsize
        documents = np.arange(len(lengths) + 1, dtype=np.int64)
        idx_tmp = self.prefix.with_name(self.prefix.name + ".idx.tmp")
        with open_write_nofollow(idx_tmp, directory_too=False) as handle:
            handle.write(MAGIC)
            handle.write(struct.pack("<Q", VERSION))
            handle.write(struct.pack("<B", DTYPE_CODES[self.dtype]))
            handle.write(struct.pack("<Q", len(lengths)))
            handle.write(struct.pack("<Q", len(documents)))
            handle.write(lengths.astype("<i4").tobytes())
            handle.write(pointers.astype("<i8").tobytes())
            handle.write(documents.astype("<i8").tobytes())
            handle.flush()
            os.fsync(handle.fileno())
        bin_path = self.prefix.with_name(self.prefix.name + ".bin")
        idx_path = self.prefix.with_name(self.prefix.name + ".idx")
        os.replace(self._bin_tmp, bin_path)
        os.replace(idx_tmp, idx_path)  # the .idx lands last: its presence means the pair is whole
        return bin_path, idx_path


def read_indexed_dataset(prefix: Path) -> list[np.ndarray]:
    """Our own small reader, for reports and status; tests check against megatron-core's."""
    prefix = Path(prefix)
    raw = prefix.with_name(prefix.name + ".idx").read_bytes()
    if raw[:9] != MAGIC:
        raise ValueError(f"{prefix}.idx is not a Megatron index")
    code = raw[17]
    dtype = next(t for t, c in DTYPE_CODES.items() if c == code)
    count = struct.unpack_from("<Q", raw, 18)[0]
    lengths = np.frombuffer(raw, dtype="<i4", count=count, offset=34)
    pointers = np.frombuffer(raw, dtype="<i8", count=count, offset=34 + 4 * count)
    data = np.memmap(prefix.with_name(prefix.name + ".bin"), dtype=dtype, mode="r")
    itemsize = np.dtype(dtype).itemsize
    return [np.asarray(data[p // itemsize: p // itemsize + n]) for p, n in zip(pointers, lengths)]
