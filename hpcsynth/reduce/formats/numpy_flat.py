"""Writer for one flat token array as a .npy file (nanoGPT, OLMo-core style readers).

Flat readers cut contiguous windows and see EOS as the only document boundary. Unlike a headerless
.bin, a .npy says its own dtype and length: `np.load(PATH, mmap_mode="r")`. The header is reserved up
front and filled in at finish(), so tokens stream straight to disk.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from hpcsynth.files import open_write_nofollow
from hpcsynth.reduce.formats.megatron import with_suffix

HEADER_BYTES = 128  # magic, version, length, the dict padded with spaces; a multiple of 64 as .npy wants


class NumpyWriter:
    suffixes = (".npy",)

    def __init__(self, prefix: Path, dtype: type) -> None:
        self.prefix = Path(prefix)
        self.dtype = np.dtype(dtype)
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = with_suffix(self.prefix, ".npy.tmp")
        self._handle = open_write_nofollow(self._tmp, directory_too=False)  # as megatron.py: never through a link
        self._handle.write(b"\0" * HEADER_BYTES)
        self.sequences = 0
        self.tokens = 0

    @property
    def bytes_written(self) -> int:
        return self.tokens * self.dtype.itemsize

    def add(self, tokens: np.ndarray) -> None:
        array = np.asarray(tokens, dtype=self.dtype)
        self._handle.write(array.tobytes())
        self.tokens += len(array)
        self.sequences += 1

    def finish(self) -> list[Path]:
        self._handle.seek(0)
        self._handle.write(npy_header(self.dtype, self.tokens))
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        path = with_suffix(self.prefix, ".npy")
        os.replace(self._tmp, path)
        return [path]

    def abort(self) -> None:
        self._handle.close()
        self._tmp.unlink(missing_ok=True)


def npy_header(dtype: np.dtype, length: int) -> bytes:
    body = f"{{'descr': '{dtype.str}', 'fortran_order': False, 'shape': ({length},), }}"
    pad = HEADER_BYTES - 10 - len(body) - 1
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", HEADER_BYTES - 10) + body.encode() + b" " * pad + b"\n"
